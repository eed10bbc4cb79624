"""Who may connect, and how much: allow-lists, association limit, size limit, disk floor.

Callers are DCMTK tools (echoscu, dcmsend); the one peer that must misbehave on purpose
(it holds an association open and does nothing) is a pynetdicom SCU.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from peers import LOOPBACK, dcmtk_env, require_tool, run_dcmsend, run_dvdexit
from pynetdicom import AE

from dvdexit_cli.dicom.digest import dataset_digest
from dvdexit_cli.samples import write_study

pytestmark = pytest.mark.peer

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700


def echo(
    port: int, *, calling_ae: str, called_ae: str = "DVDEXIT"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("echoscu"), "-v", "-aet", calling_ae, "-aec", called_ae, LOOPBACK, str(port)],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def instance_files(store: Path) -> list[Path]:
    """Regular files anywhere in the store, spool and temporary files included."""
    return sorted(p for p in store.rglob("*") if p.is_file())


def statuses(report: Path) -> dict[str, int]:
    """dcmsend's report file -> {input file: DIMSE status}."""
    found: dict[str, int] = {}
    for block in re.split(r"\n(?=Number\s+:)", report.read_text(errors="replace")):
        fields = {
            k.strip(): v.strip()
            for k, sep, v in (line.partition(" : ") for line in block.splitlines())
            if sep
        }
        if "Filename" in fields:
            found[fields["Filename"]] = int(fields["DIMSE Status"].split()[0], 16)
    return found


def push(
    files: Sequence[Path], port: int, report: Path, *, calling_ae: str = "DCMSEND"
) -> dict[str, int]:
    sent = run_dcmsend(
        files,
        port,
        called_ae="DVDEXIT",
        calling_ae=calling_ae,
        extra=["--no-halt", "--create-report-file", str(report)],
    )
    assert sent.returncode == 0, sent.stderr
    return statuses(report)


def test_calling_ae_not_on_the_allow_list_is_rejected_as_not_recognised_and_logged(
    tmp_path, dvdexit_receiver
):
    study = write_study(tmp_path / "study", n_instances=2, seed="allow-ae")
    receiver = dvdexit_receiver(
        tmp_path / "STORE", extra=["--allow-ae", "HOSP_A", "--allow-ae", "HOSP_B"]
    )

    stranger = echo(receiver.port, calling_ae="STRANGER")
    assert stranger.returncode != 0
    assert "Rejected Permanent" in stranger.stdout + stranger.stderr
    assert "Calling AE Title Not Recognized" in stranger.stdout + stranger.stderr
    refused = run_dcmsend(study, receiver.port, called_ae="DVDEXIT", calling_ae="STRANGER")
    assert refused.returncode != 0 and "Association Rejected" in refused.stderr
    assert instance_files(receiver.store) == []

    # The listed titles still get in, and their instances are stored.
    assert echo(receiver.port, calling_ae="HOSP_B").returncode == 0
    answers = push(study, receiver.port, tmp_path / "ok.report", calling_ae="HOSP_A")
    assert set(answers.values()) == {SUCCESS}

    assert receiver.stop() == 0
    assert len(list(receiver.store.rglob("*.dcm"))) == len(study)
    rejections = [line for line in receiver.stderr.splitlines() if line.startswith("rejected:")]
    assert len(rejections) == 2, receiver.stderr
    assert all("'STRANGER'" in line and "--allow-ae" in line for line in rejections)


def test_address_outside_allow_from_is_rejected_permanently_with_no_reason_given(
    tmp_path, dvdexit_receiver
):
    study = write_study(tmp_path / "study", n_instances=1, seed="allow-from")
    outsider = dvdexit_receiver(tmp_path / "OUT", extra=["--allow-from", "10.0.0.0/8"])
    rejected = echo(outsider.port, calling_ae="HOSP_A")
    text = rejected.stdout + rejected.stderr
    assert rejected.returncode != 0
    assert "Rejected Permanent" in text and "Source: Service User" in text
    assert "Reason: No Reason" in text, "an address rejection tells the stranger nothing"
    assert run_dcmsend(study, outsider.port, called_ae="DVDEXIT").returncode != 0
    assert outsider.stop() == 0
    assert instance_files(outsider.store) == []
    assert "address not allowed (--allow-from)" in outsider.stderr

    # Loopback inside the allowed block (given as a single address too): accepted.
    insider = dvdexit_receiver(
        tmp_path / "IN", extra=["--allow-from", "10.0.0.0/8", "--allow-from", "127.0.0.1"]
    )
    assert echo(insider.port, calling_ae="HOSP_A").returncode == 0
    assert set(push(study, insider.port, tmp_path / "in.report").values()) == {SUCCESS}


def test_bad_allow_from_is_a_usage_error_before_listening(tmp_path, dvdexit_home):
    result = run_dvdexit(
        "receive",
        "--port",
        "11112",
        "--store",
        tmp_path / "S",
        "--allow-from",
        "10.0.0.300/8",
        home=dvdexit_home,
    )
    assert result.returncode == 2, result.stderr
    assert "10.0.0.300/8" in result.stderr
    assert not (tmp_path / "S").exists()


def test_association_beyond_the_limit_is_rejected_transiently_and_the_first_goes_on(
    tmp_path, dvdexit_receiver
):
    study = write_study(tmp_path / "study", n_instances=1, seed="max-assoc")
    receiver = dvdexit_receiver(tmp_path / "STORE", extra=["--max-associations", "1"])
    holder = AE(ae_title="HOLDER")
    holder.add_requested_context("1.2.840.10008.1.1")
    assoc = holder.associate(LOOPBACK, receiver.port, ae_title="DVDEXIT")
    try:
        assert assoc.is_established
        busy = echo(receiver.port, calling_ae="SECOND")
        assert busy.returncode != 0
        assert "Rejected Transient" in busy.stdout + busy.stderr
        assert "Local Limit Exceeded" in busy.stdout + busy.stderr
        assert assoc.send_c_echo().Status == SUCCESS, "the held association must still work"
    finally:
        assoc.release()
    # Once the slot is free again, a sender gets in (the server notices within moments).
    deadline = time.monotonic() + 30
    while echo(receiver.port, calling_ae="THIRD").returncode != 0:
        assert time.monotonic() < deadline, "slot never freed"
        time.sleep(0.2)
    assert set(push(study, receiver.port, tmp_path / "r.report").values()) == {SUCCESS}


def test_instance_above_the_size_limit_gets_a700_and_its_neighbours_are_stored(
    tmp_path, dvdexit_receiver
):
    small = write_study(tmp_path / "small", n_instances=2, seed="size-small", rows=16, cols=16)
    (big,) = write_study(tmp_path / "big", n_instances=1, seed="size-big", rows=256, cols=256)
    assert big.stat().st_size > 100_000 > max(p.stat().st_size for p in small)
    receiver = dvdexit_receiver(tmp_path / "STORE", extra=["--max-instance-size", "100k"])

    answers = push([small[0], big, small[1]], receiver.port, tmp_path / "r.report")

    assert answers[str(big)] == OUT_OF_RESOURCES
    assert answers[str(small[0])] == answers[str(small[1])] == SUCCESS
    assert receiver.stop() == 0
    stored = instance_files(receiver.store)
    assert len(stored) == 2 and all(p.suffix == ".dcm" for p in stored)
    assert {dataset_digest(p)[1] for p in stored} <= {dataset_digest(p)[1] for p in small}
    assert "exceeds the limit" in receiver.stderr


def test_free_disk_floor_above_free_space_answers_a700_and_writes_nothing(
    tmp_path, dvdexit_receiver, dvdexit_home
):
    study = write_study(tmp_path / "study", n_instances=3, seed="min-free")
    receiver = dvdexit_receiver(tmp_path / "STORE", extra=["--min-free", "1000T"])

    answers = push(study, receiver.port, tmp_path / "r.report")

    assert set(answers.values()) == {OUT_OF_RESOURCES}
    assert receiver.stop() == 0
    assert instance_files(receiver.store) == [], "nothing written, spool emptied"
    refusals = [line for line in receiver.stderr.splitlines() if line.startswith("refused:")]
    assert len(refusals) == len(study) and all("--min-free" in line for line in refusals)


def test_durability_os_stores_the_same_bytes(tmp_path, dvdexit_receiver, dvdexit_home):
    study = write_study(tmp_path / "study", n_instances=3, seed="durability-os")
    receiver = dvdexit_receiver(tmp_path / "STORE", extra=["--durability", "os"])
    assert set(push(study, receiver.port, tmp_path / "r.report").values()) == {SUCCESS}
    assert receiver.stop() == 0
    stored = sorted(receiver.store.rglob("*.dcm"))
    assert len(stored) == len(study)
    verified = run_dvdexit("verify", receiver.store, home=dvdexit_home)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_leftovers_of_a_killed_receiver_are_swept_at_start_and_instances_kept(
    tmp_path, dvdexit_receiver, dvdexit_home
):
    study = write_study(tmp_path / "study", n_instances=2, seed="sweep")
    first = dvdexit_receiver(tmp_path / "STORE")
    assert set(push(study, first.port, tmp_path / "r.report").values()) == {SUCCESS}
    assert first.stop() == 0
    kept = sorted(first.store.rglob("*.dcm"))
    series = kept[0].parent
    # What a kill -9 mid-write leaves: our half-written temporary, pynetdicom's spool file.
    leftovers = [series / ".1.2.3.4.abcd1234.tmp", first.store / ".incoming" / ".spool-x1y2.dcm"]
    for path in leftovers:
        path.write_bytes(b"\0" * 1000)

    second = dvdexit_receiver(tmp_path / "STORE")
    assert second.stop() == 0
    assert "removed 2 temporary file(s)" in second.stderr
    assert not any(p.exists() for p in leftovers)
    assert sorted(second.store.rglob("*.dcm")) == kept


def test_the_receive_table_of_peers_toml_applies_and_options_win(
    tmp_path, dvdexit_receiver, dvdexit_home
):
    (dvdexit_home / "peers.toml").write_text(
        '[receive]\nallow-ae = ["HOSP_A"]\ndurability = "os"\nidle-timeout = 30\n'
    )
    from_file = dvdexit_receiver(tmp_path / "STORE")
    assert echo(from_file.port, calling_ae="STRANGER").returncode != 0
    assert echo(from_file.port, calling_ae="HOSP_A").returncode == 0
    assert from_file.stop() == 0

    overridden = dvdexit_receiver(tmp_path / "STORE", extra=["--allow-ae", "STRANGER"])
    assert echo(overridden.port, calling_ae="STRANGER").returncode == 0
    assert echo(overridden.port, calling_ae="HOSP_A").returncode != 0


def test_a_bad_receive_table_exits_3_before_listening(tmp_path, dvdexit_home):
    (dvdexit_home / "peers.toml").write_text("[receive]\nallow_aes = 1\n")
    result = run_dvdexit("receive", "--port", "11112", "--store", tmp_path / "S", home=dvdexit_home)
    assert result.returncode == 3, result.stderr
    assert "allow_aes" in result.stderr
    assert not (tmp_path / "S").exists()
