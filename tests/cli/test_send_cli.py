"""The command line as scripts and cron jobs use it: `--json` documents, messages, exit codes.

A script pipes `dvdexit ... --json` into a parser, so stdout must hold one JSON document and
nothing else, whatever happened; a person reads stderr, so a mistake in `peers add` must
say what is wrong; and the exit code must be the documented one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from peers import LOOPBACK, free_port, run_dvdexit
from pydicom.data import get_testdata_file

from dvdexit_cli.samples import write_study


def one_json_document(result: Any) -> Any:
    """The single JSON document on stdout; fail if anything else is there."""
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(
            f"stdout is not exactly one JSON document (exit {result.returncode}):\n"
            f"{result.stdout!r}\nstderr: {result.stderr}"
        )


def error_lines(result: Any) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("dvdexit: error:")]


def add_peer(home: Path, name: str, port: int, ae: str, *extra: str) -> Any:
    return run_dvdexit(
        "peers", "add", name, "--dimse", f"{LOOPBACK}:{port}", "--ae", ae, *extra, home=home
    )


def peer_names(home: Path) -> dict[str, Any]:
    result = run_dvdexit("peers", "list", "--json", home=home)
    assert result.returncode == 0, result.stderr
    return {p["name"]: p for p in one_json_document(result)["peers"]}


# -- --json: one document on stdout -------------------------------------------------------


@pytest.mark.peer
def test_send_status_verify_and_peers_list_each_print_one_json_document(
    storescp, dvdexit_home: Path, tmp_path: Path
):
    study = tmp_path / "study"
    good = write_study(study, n_instances=3, seed="cli-json")
    truncated = study / "MR_truncated.dcm"
    truncated.write_bytes(Path(get_testdata_file("MR_truncated.dcm")).read_bytes())
    scp = storescp(tmp_path / "arrived")
    assert add_peer(dvdexit_home, "pacs", scp.port, scp.ae).returncode == 0

    sent = run_dvdexit("send", study, "--to", "pacs", "--json", home=dvdexit_home)
    status = run_dvdexit("status", "--json", home=dvdexit_home)
    verified = run_dvdexit("verify", *good, "--json", home=dvdexit_home)
    listed = run_dvdexit("peers", "list", "--json", home=dvdexit_home)

    assert sent.returncode == 6, sent.stderr
    document = one_json_document(sent)
    for key in ("transfer_id", "sent", "failed", "skipped"):
        assert type(document[key]) is int, (key, document[key])
    assert (document["sent"], document["failed"], document["skipped"]) == (3, 1, 0)
    assert isinstance(document["failures"], list)
    (failure,) = document["failures"]
    assert {"path", "sop_instance_uid", "reason"} <= set(failure)
    assert failure["path"] == str(truncated)
    assert isinstance(failure["reason"], str)
    assert failure["reason"]

    assert status.returncode == 0, status.stderr
    (transfer,) = one_json_document(status)["transfers"]
    assert transfer["transfer_id"] == document["transfer_id"]
    assert transfer["counts"]["sent"] == 3

    assert verified.returncode == 0, verified.stderr
    assert one_json_document(verified)["identical"] == len(good)

    assert listed.returncode == 0, listed.stderr
    (peer,) = one_json_document(listed)["peers"]
    assert (peer["name"], peer["port"], peer["called_ae"]) == ("pacs", scp.port, scp.ae)


def test_status_and_peers_list_print_a_json_document_on_a_fresh_install(dvdexit_home: Path):
    status = run_dvdexit("status", "--json", home=dvdexit_home)
    listed = run_dvdexit("peers", "list", "--json", home=dvdexit_home)

    assert status.returncode == 0, status.stderr
    assert one_json_document(status)["transfers"] == []
    assert listed.returncode == 0, listed.stderr
    assert one_json_document(listed) == {"peers": []}


def test_verify_json_of_a_file_never_sent_exits_7_with_one_document(
    dvdexit_home: Path, tmp_path: Path
):
    (stranger,) = write_study(tmp_path / "never-sent", n_instances=1, seed="stranger")

    result = run_dvdexit("verify", stranger, "--json", home=dvdexit_home)

    assert result.returncode == 7, result.stderr
    document = one_json_document(result)
    assert document["unknown"] == 1
    assert document["identical"] == 0


def test_send_to_an_unknown_peer_exits_3_with_a_json_error_document(
    dvdexit_home: Path, tmp_path: Path
):
    write_study(tmp_path / "study", n_instances=1, seed="unknown-peer")

    result = run_dvdexit("send", tmp_path / "study", "--to", "nowhere", "--json", home=dvdexit_home)

    assert result.returncode == 3, result.stderr
    document = one_json_document(result)
    assert document["exit_code"] == 3
    assert "nowhere" in document["error"]["message"]
    assert document["error"]["hint"]
    (line,) = error_lines(result)
    assert "unknown peer 'nowhere'" in line


# -- peers: mistakes are refused with a reason ----------------------------------------------


@pytest.mark.parametrize(
    "address",
    ["pacs.example.org", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:0", "127.0.0.1:65536"],
)
def test_peers_add_refuses_an_address_that_is_not_host_and_port(dvdexit_home: Path, address: str):
    result = run_dvdexit(
        "peers", "add", "pacs", "--dimse", address, "--ae", "PACS", home=dvdexit_home
    )

    assert result.returncode == 3, result.stderr
    (line,) = error_lines(result)
    assert repr(address) in line, line
    assert peer_names(dvdexit_home) == {}


def test_peers_add_refuses_an_ae_title_longer_than_16_characters(dvdexit_home: Path):
    port = free_port()

    too_long = add_peer(dvdexit_home, "pacs", port, "A" * 17)
    just_right = add_peer(dvdexit_home, "pacs", port, "A" * 16)

    assert too_long.returncode == 3, too_long.stderr
    (line,) = error_lines(too_long)
    assert "longer than 16 characters" in line
    assert just_right.returncode == 0, just_right.stderr
    assert peer_names(dvdexit_home)["pacs"]["called_ae"] == "A" * 16


def test_peers_add_without_an_address_is_a_usage_error(dvdexit_home: Path):
    result = run_dvdexit("peers", "add", "pacs", "--ae", "PACS", home=dvdexit_home)

    assert result.returncode == 2, result.stderr
    assert "--dimse" in result.stderr
    assert peer_names(dvdexit_home) == {}


def test_peers_add_twice_is_refused_unless_replace(dvdexit_home: Path):
    first, second = free_port(), free_port()
    assert add_peer(dvdexit_home, "pacs", first, "PACS").returncode == 0

    again = add_peer(dvdexit_home, "pacs", second, "PACS")
    assert again.returncode == 3, again.stderr
    (line,) = error_lines(again)
    assert "already exists" in line
    assert "--replace" in line
    assert peer_names(dvdexit_home)["pacs"]["port"] == first

    replaced = add_peer(dvdexit_home, "pacs", second, "PACS", "--replace")
    assert replaced.returncode == 0, replaced.stderr
    assert peer_names(dvdexit_home)["pacs"]["port"] == second


def test_peers_remove_of_an_unknown_peer_exits_3(dvdexit_home: Path):
    assert add_peer(dvdexit_home, "pacs", free_port(), "PACS").returncode == 0

    result = run_dvdexit("peers", "remove", "archive", home=dvdexit_home)

    assert result.returncode == 3, result.stderr
    (line,) = error_lines(result)
    assert "unknown peer 'archive'" in line
    assert set(peer_names(dvdexit_home)) == {"pacs"}


# -- usage errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("send", ".", "--to", "pacs", "--json", "--bogus"), "--bogus"),
        (("send", ".", "--to", "pacs", "--retries", "-1"), "--retries"),
        (("send", "."), "--to"),
        (("status", "--limit", "many"), "--limit"),
    ],
)
def test_a_bad_option_exits_2_and_names_it(dvdexit_home: Path, args: tuple[str, ...], named: str):
    result = run_dvdexit(*args, home=dvdexit_home)

    assert result.returncode == 2, result.stderr
    assert named in result.stderr
    assert result.stdout == ""


# -- send --retry-failed: usage ------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--retry-failed", "somewhere"), "takes no paths"),
        (("somewhere", "--to", "pacs", "--older-than", "1h"), "only with --retry-failed"),
        (("--retry-failed", "--older-than", "soon"), "not a duration"),
        (("somewhere",), "--to PEER is required"),
        ((), "nothing to send"),
    ],
)
def test_send_option_mistakes_exit_2_with_a_json_error_and_journal_nothing(
    dvdexit_home: Path, args: tuple[str, ...], words: str
):
    result = run_dvdexit("send", *args, "--json", home=dvdexit_home)

    assert result.returncode == 2, result.stderr
    document = one_json_document(result)
    assert words in document["error"]["message"]
    assert any(words in line for line in error_lines(result))
    assert not (dvdexit_home / "journal.sqlite").exists()


def test_retry_failed_on_a_fresh_install_has_nothing_to_do_and_exits_0(dvdexit_home: Path):
    result = run_dvdexit("send", "--retry-failed", "--json", home=dvdexit_home)

    assert result.returncode == 0, result.stderr
    document = one_json_document(result)
    assert (document["outcome"], document["claimed"], document["exit_code"]) == (
        "nothing to do",
        0,
        0,
    )


def test_retry_failed_to_an_unknown_peer_exits_3(dvdexit_home: Path):
    result = run_dvdexit("send", "--retry-failed", "--to", "nowhere", "--json", home=dvdexit_home)

    assert result.returncode == 3, result.stderr
    assert one_json_document(result)["error"]["type"] == "UnknownPeerError"


def test_cron_wrapper_is_silent_when_all_is_well_and_speaks_when_not(
    dvdexit_home: Path, tmp_path: Path
):
    import os
    import subprocess
    import sys

    from peers import dvdexit_env

    wrapper = Path(__file__).resolve().parents[2] / "examples" / "dvdexit-retry.sh"
    shim = tmp_path / "dvdexit"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m dvdexit_cli "$@"\n')
    shim.chmod(0o755)
    env = dvdexit_env(
        dvdexit_home, {"DVDEXIT": str(shim), "DVDEXIT_RETRY_LOG": str(tmp_path / "log")}
    )
    env["PATH"] = os.environ["PATH"]

    quiet = subprocess.run([wrapper], env=env, capture_output=True, text=True, timeout=60)
    loud = subprocess.run(
        [wrapper, "--to", "nowhere"], env=env, capture_output=True, text=True, timeout=60
    )

    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    assert loud.returncode == 3
    assert "exited 3" in loud.stdout and "unknown peer" in loud.stdout
    log_lines = (tmp_path / "log").read_text().splitlines()
    assert len(log_lines) == 2 and "outcome=nothing to do" in log_lines[0]


# -- selection and --dry-run -----------------------------------------------------------------


def _mixed_media(root: Path) -> dict[str, list[Path]]:
    """Two CT studies and one secondary-capture (OT) study, plus pydicom's MR_small."""
    media = {
        "ct1": write_study(root / "ct1", n_instances=3, seed="sel-ct1"),
        "ct2": write_study(root / "ct2", n_instances=2, seed="sel-ct2"),
        "ot": write_study(root / "ot", n_instances=2, modality="OT", seed="sel-ot"),
    }
    mr = root / "mr" / "MR_small.dcm"
    mr.parent.mkdir()
    mr.write_bytes(Path(get_testdata_file("MR_small.dcm")).read_bytes())
    media["mr"] = [mr]
    return media


def _study_uid(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def test_dry_run_lists_studies_series_counts_bytes_and_contexts_and_journals_nothing(
    dvdexit_home: Path, tmp_path: Path
):
    media = _mixed_media(tmp_path / "in")
    (tmp_path / "in" / "README.TXT").write_text("a viewer's readme")

    result = run_dvdexit("send", tmp_path / "in", "--dry-run", "--json", home=dvdexit_home)
    human = run_dvdexit("send", tmp_path / "in", "--dry-run", home=dvdexit_home)

    assert result.returncode == 0, result.stderr
    plan = one_json_document(result)
    assert plan["dry_run"] is True
    assert plan["instances"] == 8
    assert plan["bytes"] == sum(p.stat().st_size for files in media.values() for p in files)
    by_study = {s["study_uid"]: s for s in plan["studies"]}
    assert by_study[_study_uid(media["ct1"][0])]["instances"] == 3
    (series,) = by_study[_study_uid(media["ot"][0])]["series"]
    assert (series["modality"], series["instances"]) == ("OT", 2)
    (association,) = plan["associations"]
    classes = {c["sop_class_uid"] for c in association}
    assert classes == {
        "1.2.840.10008.5.1.4.1.1.2",  # CT
        "1.2.840.10008.5.1.4.1.1.7",  # secondary capture
        "1.2.840.10008.5.1.4.1.1.4",  # MR
    }
    assert [Path(s["path"]).name for s in plan["skipped_files"]] == ["README.TXT"]
    assert human.returncode == 0, human.stderr
    assert "would send 8 instance(s)" in human.stdout
    assert "CT Image Storage" in human.stdout
    assert not (dvdexit_home / "journal.sqlite").exists()


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (("--modality", "ct"), {"ct1", "ct2"}),
        (("--modality", "CT,MR"), {"ct1", "ct2", "mr"}),
        (("--exclude-modality", "OT", "--exclude-modality", "MR"), {"ct1", "ct2"}),
        (("--exclude-sop-class", "1.2.840.10008.5.1.4.1.1.2"), {"ot", "mr"}),
        (("--study", "STUDY:ct2", "--study", "STUDY:ot"), {"ct2", "ot"}),
    ],
)
def test_selection_options_pick_the_studies_and_modalities_asked_for(
    dvdexit_home: Path, tmp_path: Path, options: tuple[str, ...], expected: set[str]
):
    media = _mixed_media(tmp_path / "in")
    uids = {name: _study_uid(files[0]) for name, files in media.items()}
    args = [uids[o.split(":")[1]] if o.startswith("STUDY:") else o for o in options]

    result = run_dvdexit("send", tmp_path / "in", "--dry-run", "--json", *args, home=dvdexit_home)

    assert result.returncode == 0, result.stderr
    plan = one_json_document(result)
    assert {s["study_uid"] for s in plan["studies"]} == {uids[name] for name in expected}
    assert plan["instances"] == sum(len(media[name]) for name in expected)
    assert plan["excluded"] == 8 - plan["instances"]


def test_a_selection_that_leaves_nothing_exits_4_and_says_so(dvdexit_home: Path, tmp_path: Path):
    _mixed_media(tmp_path / "in")

    result = run_dvdexit(
        "send", tmp_path / "in", "--dry-run", "--modality", "US", "--json", home=dvdexit_home
    )

    assert result.returncode == 4, result.stderr
    assert "left out by the selection" in one_json_document(result)["error"]["message"]


@pytest.mark.peer
def test_send_with_exclude_modality_sends_only_the_rest_and_journals_only_those(
    storescp, dvdexit_home: Path, tmp_path: Path
):
    media = _mixed_media(tmp_path / "in")
    scp = storescp(tmp_path / "arrived")
    assert add_peer(dvdexit_home, "pacs", scp.port, scp.ae).returncode == 0

    result = run_dvdexit(
        "send", tmp_path / "in", "--to", "pacs", "--exclude-modality", "OT,MR", "--json",
        home=dvdexit_home,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    document = one_json_document(result)
    assert (document["sent"], document["excluded"]) == (5, 3)
    assert len(scp.stored_files()) == len(media["ct1"]) + len(media["ct2"])


def test_dry_run_speaks_in_the_peers_terms_requests_a_package_or_associations(
    dvdexit_home: Path, tmp_path: Path
):
    _mixed_media(tmp_path / "in")  # 8 instances in 4 studies
    web = run_dvdexit(
        "peers", "add", "web", "--dicomweb", f"http://{LOOPBACK}:{free_port()}/dicom-web",
        "--workers", "3", home=dvdexit_home,
    )  # fmt: skip
    drop = run_dvdexit("peers", "add", "drop", "--folder", tmp_path / "out", home=dvdexit_home)
    pacs = add_peer(dvdexit_home, "pacs", free_port(), "PACS", "--workers", "1")
    assert (web.returncode, drop.returncode, pacs.returncode) == (0, 0, 0), web.stderr

    def plan(*args: str) -> tuple[Any, str]:
        given = (tmp_path / "in", "--dry-run", *args)
        document = run_dvdexit("send", *given, "--json", home=dvdexit_home)
        human = run_dvdexit("send", *given, home=dvdexit_home)
        assert (document.returncode, human.returncode) == (0, 0), document.stderr + human.stderr
        return one_json_document(document), human.stdout

    by_three, text = plan("--to", "web", "--batch-size", "3")
    assert (by_three["peer_kind"], by_three["requests"], by_three["workers"]) == ("dicomweb", 3, 3)
    assert (by_three["batch_size"], by_three["batch_bytes"]) == (3, 64 * 1024**2)
    assert by_three["associations"] == [] and by_three["instances"] == 8
    assert "in 3 STOW-RS request(s)" in text and "3 at a time" in text
    assert "association" not in text
    alone, text = plan("--to", "web", "--batch-bytes", "1K", "--workers", "2")
    assert (alone["requests"], alone["workers"]) == (8, 2)  # every instance is over 1K
    assert "in 8 STOW-RS request(s)" in text and "2 at a time" in text

    package, text = plan("--to", "drop")
    assert (package["peer_kind"], package["packages"], package["workers"]) == ("folder", 1, 1)
    assert package["associations"] == [] and "requests" not in package
    assert "as one package" in text and "association" not in text

    single, text = plan("--to", "pacs")
    assert (single["peer_kind"], single["workers"], len(single["associations"])) == ("dimse", 1, 1)
    assert "requests" not in single and "packages" not in single
    assert "over 1 association(s) at a time" in text
    unnamed, text = plan()
    assert (unnamed["peer_kind"], unnamed["workers"]) == (None, 2)
    assert "over 2 association(s) at a time" in text
    assert not (dvdexit_home / "journal.sqlite").exists()
