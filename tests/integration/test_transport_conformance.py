"""One conformance suite, run over every transport: send, partial failure, resume, verify.

The same tests run against the in-memory transport, DIMSE to Orthanc and DICOMweb
(STOW-RS / QIDO-RS / WADO-RS) to Orthanc; the plain send also runs against DCMTK's
storescp (which can neither refuse chosen instances nor be verified remotely). The
contract asserted for each:

* send: every instance arrives with the sender's dataset digest, exit 0;
* partial failure: the instances the peer refuses are exactly those failed in the
  journal, and the result (and the CLI) exits 6;
* resume: after the peer is fixed, ``retry_failed`` (``send --retry-failed``) offers the
  peer exactly the failed instances, once each, never one it confirmed; a second replay
  has nothing to do;
* verify: the remote verify reports every instance identical (exit 0); an instance
  deleted at the peer is named missing (exit 7).

Orthanc can also be told to drop chosen instances silently (the filter returns false):
it then answers success over C-STORE and STOW-RS alike, and only a remote verify finds
them missing.

How each peer refuses chosen instances, retryably: the memory peer answers A700; Orthanc
runs a Lua ``ReceivedInstanceFilter`` that raises an error for the SOP Instance UIDs
listed in a file, and then answers a C-STORE with A700 (out of resources) and leaves a
STOW-RS instance out of its answer (unknown: retried). Deleting the file is the fix.
The same filter logs every instance offered to Orthanc, which is how "offered once, only
the failed ones" is checked against the real peer. One Orthanc serves the whole module.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from peers import OrthancPeer, free_port, run_dvdexit, start_orthanc, stop_process

from dvdexit_cli.config import DicomWebPeer, DimsePeer, LocalSettings
from dvdexit_cli.dicom.digest import dataset_digest
from dvdexit_cli.engine import RetrySettings, SendSettings, retry_failed, send
from dvdexit_cli.exitcodes import ExitCode
from dvdexit_cli.journal import Journal
from dvdexit_cli.samples import SampleMedia, make_sample_dvd
from dvdexit_cli.transport.base import Transport
from dvdexit_cli.transport.dicomweb import DicomwebTransport
from dvdexit_cli.transport.dimse import DimseTransport
from dvdexit_cli.transport.dimse_query import CHECK_FIND, CHECK_GET
from dvdexit_cli.transport.memory import MemoryPeer, MemoryTransport
from dvdexit_cli.verify_remote import (
    Expected,
    RemoteVerifyResult,
    expected_from_journal,
    verify_remote,
    verify_remote_dicomweb,
    verify_remote_memory,
)

_FILTER = """
function ReceivedInstanceFilter(dicom, origin, info)
  local uid = dicom.SOPInstanceUID
  local offered = io.open("{offered}", "a")
  offered:write(uid .. "\\n")
  offered:close()
  local drop = io.open("{drop}", "r")
  if drop ~= nil then
    for line in drop:lines() do
      if line == uid then
        drop:close()
        return false
      end
    end
    drop:close()
  end
  local refuse = io.open("{refuse}", "r")
  if refuse == nil then return true end
  for line in refuse:lines() do
    if line == uid then
      refuse:close()
      error("refused for the conformance test")
    end
  end
  refuse:close()
  return true
end
"""


@dataclass
class RefusingOrthanc:
    """Orthanc with a Lua filter that refuses the UIDs listed in ``refuse_file``."""

    peer: OrthancPeer
    refuse_file: Path
    offered_file: Path
    drop_file: Path

    def reset(self) -> None:
        for orthanc_id in self.peer.rest("GET", "/instances"):  # type: ignore[attr-defined]
            self.peer.rest("DELETE", f"/instances/{orthanc_id}")
        self.refuse_file.unlink(missing_ok=True)
        self.drop_file.unlink(missing_ok=True)
        self.offered_file.write_text("")

    def offered(self) -> list[str]:
        return self.offered_file.read_text().split()


@pytest.fixture(scope="module")
def refusing_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RefusingOrthanc]:
    work = tmp_path_factory.mktemp("conformance-orthanc")
    refuse, offered, drop = work / "refuse.txt", work / "offered.txt", work / "drop.txt"
    script = work / "filter.lua"
    script.write_text(
        _FILTER.replace("{offered}", str(offered))
        .replace("{refuse}", str(refuse))
        .replace("{drop}", str(drop))
    )
    error: Exception | None = None
    for attempt in range(3):  # a free port can be taken before Orthanc binds it
        try:
            peer = start_orthanc(
                work / f"o{attempt}",
                # Orthanc answers C-FIND / C-GET only to AE titles it knows.
                modalities={"DVDEXIT": ("DVDEXIT", "127.0.0.1", free_port())},
                extra_config={"LuaScripts": [str(script)]},
            )
        except RuntimeError as exc:
            error = exc
            continue
        try:
            yield RefusingOrthanc(peer, refuse, offered, drop)
        finally:
            stop_process(peer.proc, timeout=10.0)
        return
    raise RuntimeError("Orthanc did not start") from error


@dataclass
class Target:
    """A peer reached through one transport, and what the suite needs to know of it."""

    name: str
    transport: Callable[[], Transport]
    held: Callable[[], dict[str, str]]
    """SOP Instance UID -> dataset digest of what the peer holds now."""
    refuse: Callable[[set[str]], None]
    """From now on the peer refuses these instances (retryably); ``refuse(set())`` fixes it."""
    offered: Callable[[], list[str]]
    """Every SOP Instance UID offered to the peer since the test began, in order."""
    delete: Callable[[str], None]
    verify: Callable[[list[Expected]], RemoteVerifyResult]
    batch_size: int = 50
    cli_peer: tuple[str, ...] | None = None
    """``dvdexit peers add NAME ...`` arguments after the name, for a peer the CLI reaches."""


def _digests_of(files: list[Path]) -> dict[str, str]:
    import pydicom

    return {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): dataset_digest(p)[1]
        for p in files
    }


def _memory(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    peer = MemoryPeer()

    def refuse(uids: set[str]) -> None:
        peer.fail_with.clear()
        for uid in uids:
            peer.fail_with[uid] = [0xA700] * 100  # out of resources until fixed

    def delete(uid: str) -> None:
        del peer.stored[uid]

    return Target(
        "memory",
        lambda: MemoryTransport(peer),
        lambda: {uid: peer.digest(uid) or "" for uid in peer.stored},
        refuse,
        lambda: list(peer.received),
        delete,
        lambda expected: verify_remote_memory(peer, expected),
    )


def _storescp(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    scp = request.getfixturevalue("storescp")(tmp_path / "scp")
    peer = DimsePeer(name="scp", host="127.0.0.1", port=scp.port, called_ae=scp.ae)

    def unsupported(*_args: object) -> Any:
        raise AssertionError("storescp cannot refuse chosen instances or be verified")

    return Target(
        "dimse-storescp",
        lambda: DimseTransport(peer),
        lambda: _digests_of(scp.stored_files()),
        unsupported,
        unsupported,
        unsupported,
        unsupported,
    )


def _orthanc_target(request: pytest.FixtureRequest, tmp_path: Path, *, web: bool) -> Target:
    pacs: RefusingOrthanc = request.getfixturevalue("refusing_orthanc")
    pacs.reset()
    orthanc = pacs.peer

    def held() -> dict[str, str]:
        found = {}
        for uid, orthanc_id in orthanc.instance_uids().items():
            copy = tmp_path / "copy.dcm"
            copy.write_bytes(orthanc.rest("GET", f"/instances/{orthanc_id}/file"))  # type: ignore[arg-type]
            found[uid] = dataset_digest(copy)[1]
        return found

    def refuse(uids: set[str]) -> None:
        if uids:
            pacs.refuse_file.write_text("".join(f"{uid}\n" for uid in sorted(uids)))
        else:
            pacs.refuse_file.unlink(missing_ok=True)

    def delete(uid: str) -> None:
        orthanc.rest("DELETE", f"/instances/{orthanc.instance_uids()[uid]}")

    if web:
        web_peer = DicomWebPeer(name="web", url=orthanc.dicomweb_url)
        return Target(
            "dicomweb-orthanc",
            lambda: DicomwebTransport(orthanc.dicomweb_url, name="web"),
            held,
            refuse,
            pacs.offered,
            delete,
            lambda expected: verify_remote_dicomweb(web_peer, expected),
            # Orthanc's STOW-RS gives up a whole request when one instance fails and
            # answers 200 with neither sequence (every instance of it is then unknown
            # and retried): one instance per request shows the per-instance contract.
            batch_size=1,
            cli_peer=("--dicomweb", orthanc.dicomweb_url),
        )
    peer = DimsePeer(name="pacs", host="127.0.0.1", port=orthanc.dicom_port, called_ae=orthanc.aet)
    return Target(
        "dimse-orthanc",
        lambda: DimseTransport(peer),
        held,
        refuse,
        pacs.offered,
        delete,
        lambda expected: verify_remote(
            peer, expected, local=LocalSettings(), checks=(CHECK_FIND, CHECK_GET)
        ),
        cli_peer=("--dimse", f"127.0.0.1:{orthanc.dicom_port}", "--ae", orthanc.aet),
    )


TARGETS: dict[str, Callable[[pytest.FixtureRequest, Path], Target]] = {
    "memory": _memory,
    "dimse-storescp": _storescp,
    "dimse-orthanc": lambda request, tmp: _orthanc_target(request, tmp, web=False),
    "dicomweb-orthanc": lambda request, tmp: _orthanc_target(request, tmp, web=True),
}
# storescp keeps everything and answers no query: it takes part in the plain send only.
FULL = sorted(set(TARGETS) - {"dimse-storescp"})
CLI = ["dicomweb-orthanc", "dimse-orthanc"]


@pytest.fixture
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    return TARGETS[request.param](request, tmp_path)


def _send(target: Target, media: SampleMedia, journal: Journal, **options: Any) -> Any:
    settings = SendSettings(
        inputs=(media.root,),
        peer_name=target.name,
        peer_address=target.name,
        **{"batch_size": target.batch_size, **options},
    )
    return send(settings, journal=journal, transport=target.transport())


def _by_state(journal: Journal, transfer_id: int) -> dict[str, dict[str, str]]:
    states: dict[str, dict[str, str]] = {}
    for item in journal.items(transfer_id):
        states.setdefault(item.state, {})[item.sop_instance_uid or ""] = item.digest or ""
    return states


@pytest.mark.parametrize("target", sorted(TARGETS), indirect=True)
def test_every_transport_delivers_a_dvd_with_the_senders_digests(
    tmp_path: Path, target: Target
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=4, sc_images=2)
    with Journal(tmp_path / "journal.sqlite") as journal:
        result = _send(target, media, journal)
        sent = _by_state(journal, result.transfer_id).get("sent", {})

    assert result.exit_code == ExitCode.OK
    assert set(sent) == set(media.path_by_sop_uid)
    assert target.held() == sent


@pytest.mark.parametrize("target", FULL, indirect=True)
def test_partial_failure_fails_exactly_the_refused_and_resume_sends_only_those(
    tmp_path: Path, target: Target
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", seed=f"partial-{target.name}", ct_slices=4)
    uids = sorted(media.path_by_sop_uid)
    refused = {uids[0], uids[3]}
    target.refuse(refused)
    with Journal(tmp_path / "journal.sqlite") as journal:
        first = _send(target, media, journal, retries=0)
        after_send = _by_state(journal, first.transfer_id)
        offered_by_send = len(target.offered())

        target.refuse(set())  # the peer is fixed
        replay = retry_failed(
            RetrySettings(retries=0),
            journal=journal,
            transport_for=lambda _name: target.transport(),
        )
        again = retry_failed(
            RetrySettings(retries=0),
            journal=journal,
            transport_for=lambda _name: target.transport(),
        )
        final = _by_state(journal, first.transfer_id)

    assert first.exit_code == ExitCode.PARTIAL_FAILURE
    assert (first.sent, first.failed) == (len(uids) - 2, 2)
    assert set(after_send["failed"]) == refused
    assert set(after_send["sent"]) == set(uids) - refused
    assert replay.exit_code == ExitCode.OK
    assert (replay.claimed, replay.sent) == (2, 2)
    assert sorted(target.offered()[offered_by_send:]) == sorted(refused)  # once each
    assert again.outcome == "nothing to do" and again.exit_code == ExitCode.OK
    assert set(final) - {"skipped"} == {"sent"}  # README.TXT: not DICOM, skipped
    assert target.held() == final["sent"]


@pytest.mark.parametrize("target", FULL, indirect=True)
def test_verify_reports_identical_and_names_an_instance_deleted_at_the_peer(
    tmp_path: Path, target: Target
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", seed=f"verify-{target.name}", ct_slices=3)
    with Journal(tmp_path / "journal.sqlite") as journal:
        sent = _send(target, media, journal)
        expected = expected_from_journal(journal, transfer_id=sent.transfer_id)
    assert sent.exit_code == ExitCode.OK

    whole = target.verify(expected)
    gone = sorted(media.path_by_sop_uid)[1]
    target.delete(gone)
    after = target.verify(expected)

    assert whole.exit_code == ExitCode.OK
    assert whole.count("identical") == len(expected) == media.instance_count
    assert after.exit_code == ExitCode.VERIFY_FAILED
    assert [v.sop_instance_uid for v in after.verdicts if v.verdict == "missing"] == [gone]
    assert after.count("identical") == len(expected) - 1


@pytest.mark.parametrize("target", CLI, indirect=True)
def test_cli_exits_6_on_refused_instances_and_retry_failed_sends_only_those(
    tmp_path: Path, dvdexit_home: Path, target: Target
) -> None:
    assert target.cli_peer is not None
    media = make_sample_dvd(tmp_path / "dvd", seed=f"cli-{target.name}", ct_slices=3)
    uids = sorted(media.path_by_sop_uid)
    refused = {uids[1]}
    added = run_dvdexit("peers", "add", "p", *target.cli_peer, home=dvdexit_home)
    assert added.returncode == 0, added.stderr
    target.refuse(refused)

    sent = run_dvdexit(
        "send", media.root, "--to", "p", "--retries", "0",
        "--batch-size", str(target.batch_size), "--json", home=dvdexit_home,
    )  # fmt: skip
    offered_by_send = len(target.offered())
    target.refuse(set())
    replay = run_dvdexit("send", "--retry-failed", "--json", home=dvdexit_home)
    verified = run_dvdexit(
        "verify", "--peer", "p", "--transfer", str(json.loads(sent.stdout)["transfer_id"]),
        "--commit-timeout", "1",
        "--json", home=dvdexit_home,
    )  # fmt: skip

    assert sent.returncode == 6, sent.stderr
    report = json.loads(sent.stdout)
    assert {f["sop_instance_uid"] for f in report["failures"]} == refused
    assert report["sent"] == len(uids) - 1
    assert replay.returncode == 0, replay.stderr
    assert json.loads(replay.stdout)["sent"] == 1
    assert target.offered()[offered_by_send:] == sorted(refused)
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["identical"] == len(uids)


@pytest.mark.parametrize("target", CLI, indirect=True)
def test_an_instance_the_peer_says_it_stored_but_dropped_is_found_missing_by_verify(
    tmp_path: Path, target: Target, refusing_orthanc: RefusingOrthanc
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", seed=f"dropped-{target.name}", ct_slices=3)
    dropped = sorted(media.path_by_sop_uid)[2]
    refusing_orthanc.drop_file.write_text(dropped + "\n")
    with Journal(tmp_path / "journal.sqlite") as journal:
        sent = _send(target, media, journal)
        expected = expected_from_journal(journal, transfer_id=sent.transfer_id)

    verified = target.verify(expected)

    # Orthanc answered success for it: the send cannot know, the verify must.
    assert sent.exit_code == ExitCode.OK and sent.failed == 0
    assert dropped not in target.held()
    assert verified.exit_code == ExitCode.VERIFY_FAILED
    assert [v.sop_instance_uid for v in verified.verdicts if v.verdict == "missing"] == [dropped]


def test_memory_verify_names_a_changed_copy_different(tmp_path: Path) -> None:
    peer = MemoryPeer()
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=2, sc_images=1)
    with Journal(tmp_path / "journal.sqlite") as journal:
        sent = send(
            SendSettings(inputs=(media.root,), peer_name="m", peer_address="m"),
            journal=journal,
            transport=MemoryTransport(peer),
        )
        expected = expected_from_journal(journal, transfer_id=sent.transfer_id)
    changed = sorted(peer.stored)[0]
    peer.stored[changed] = peer.stored[changed][:-2] + b"\x00\x01"

    result = verify_remote_memory(peer, expected)

    assert result.exit_code == ExitCode.VERIFY_FAILED
    assert [v.sop_instance_uid for v in result.verdicts if v.verdict == "different"] == [changed]
    assert result.count("identical") == len(expected) - 1


@pytest.mark.parametrize("target", ["dicomweb-orthanc"], indirect=True)
def test_orthanc_abandoning_a_whole_stow_request_is_never_taken_for_a_success(
    tmp_path: Path, target: Target
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", seed="abandoned", ct_slices=3, sc_images=1)
    uids = sorted(media.path_by_sop_uid)
    target.refuse({uids[0]})
    with Journal(tmp_path / "journal.sqlite") as journal:
        # Many instances per request: Orthanc gives up the one holding the refused instance.
        first = _send(target, media, journal, retries=0, batch_size=50)
        after_send = _by_state(journal, first.transfer_id)
        held_then = set(target.held())
        target.refuse(set())
        replay = retry_failed(
            RetrySettings(retries=0), journal=journal, transport_for=lambda _: target.transport()
        )
        final = _by_state(journal, first.transfer_id)

    assert first.exit_code == ExitCode.PARTIAL_FAILURE
    failed = set(after_send["failed"])
    assert uids[0] in failed and len(failed) > 1  # the whole request is unknown
    # No false success: whatever Orthanc does not hold is failed (and retryable).
    assert set(uids) - held_then <= failed
    assert set(after_send.get("sent", {})) <= held_then
    assert replay.exit_code == ExitCode.OK
    assert set(final) - {"skipped"} == {"sent"}
    assert target.held() == final["sent"]
