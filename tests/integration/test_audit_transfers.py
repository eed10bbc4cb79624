"""The audit records of a replay, of a receiver's forward and of a send to DICOMweb.

Real processes on loopback: ``dvdexit send`` to a PACS that answers A700 ("out of
resources") for some instances, then ``dvdexit send --retry-failed`` once the PACS is
healthy (DCMTK storescp at the peer's corrected address); a ``dvdexit receive
--forward-to`` that forwards a complete study to storescp; a send to Orthanc over
DICOMweb (STOW-RS). Each audit record must name the right participants and outcome.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from peers import LOOPBACK, free_port, run_dcmsend, run_dvdexit
from pydicom import dcmread
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt

from dvdexit_cli.samples import DEFAULT_PATIENT_ID, make_small_instances, write_study

pytestmark = pytest.mark.peer

NOTE = "prior CT; compare with today's"
REASON = "second opinion"
RECIPIENT = "Dr. A. Demo, radiology"


def _audit(home: Path) -> list[dict[str, Any]]:
    path = home / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _wait(predicate: Any, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout  # a safety net against a hung test only
    while not (found := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return found


def _add_dimse(home: Path, name: str, port: int, ae: str) -> None:
    added = run_dvdexit(
        "peers", "add", name, "--dimse", f"{LOOPBACK}:{port}", "--ae", ae, home=home
    )
    assert added.returncode == 0, added.stderr


@pytest.fixture
def busy_pacs() -> Iterator[Any]:
    """Factory: a pynetdicom CT Storage SCP answering A700 for the SOP Instance UIDs given.

    The only peer here that must misbehave on purpose; everything else is DCMTK or Orthanc.
    """
    servers: list[Any] = []

    def start(busy: set[str]) -> tuple[int, list[str]]:
        stored: list[str] = []
        lock = threading.Lock()

        def handle(event: Any) -> int:
            uid = str(event.request.AffectedSOPInstanceUID)
            with lock:
                stored.append(uid)
            return 0xA700 if uid in busy else 0x0000

        ae = AE(ae_title="BUSYPACS")
        ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        error: Exception | None = None
        for _ in range(3):
            port = free_port()
            try:
                servers.append(
                    ae.start_server(
                        (LOOPBACK, port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle)]
                    )
                )
            except OSError as exc:  # lost the race for the port
                error = exc
                continue
            return port, stored
        raise RuntimeError("the busy Storage SCP could not bind a port") from error

    yield start
    for server in servers:
        server.shutdown()


def test_a_replay_after_out_of_resources_is_audited_minor_then_success_with_the_note(
    busy_pacs: Any, storescp: Any, dvdexit_home: Path, tmp_path: Path
) -> None:
    files = make_small_instances(tmp_path / "study", 8, seed="audit-replay")
    # A second study in the same transfer, delivered whole the first time.
    other = write_study(tmp_path / "study" / "other", n_instances=2, seed="audit-replay-2")
    other_uid = str(dcmread(other[0], stop_before_pixels=True).StudyInstanceUID)
    uids = [str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    busy = {uids[1], uids[6]}
    port, _stored = busy_pacs(busy)
    _add_dimse(dvdexit_home, "pacs", port, "BUSYPACS")

    first = run_dvdexit(
        "send", tmp_path / "study", "--to", "pacs", "--retries", "0", "--note", NOTE,
        "--reason", REASON, "--recipient", RECIPIENT, "--json", home=dvdexit_home,
    )  # fmt: skip
    assert first.returncode == 6, first.stderr
    transfer_id = json.loads(first.stdout)["transfer_id"]
    send, whole = sorted(_audit(dvdexit_home), key=lambda r: r["study"]["uid"] != study_uid)
    assert (whole["study"]["uid"], whole["outcome"], whole["counts"]["sent"]) == (other_uid, 0, 2)
    assert (send["type"], send["outcome"], send["outcome_text"]) == ("send", 4, "minor failure")
    assert send["counts"] == {"sent": 6, "failed": 2, "pending": 0, "skipped": 0}
    assert send["study"]["uid"] == study_uid and send["transfer_id"] == transfer_id
    assert "A700" in send["detail"] or "resources" in send["detail"].lower()
    assert send["destination"]["address"] == f"{LOOPBACK}:{port}"

    # The PACS moved to healthy hardware: the peer's address is corrected, then the replay.
    healthy = storescp(tmp_path / "healthy", ae="HEALTHY")
    # (--force: its two unsent items are meant for the corrected peer of the same name.)
    assert run_dvdexit("peers", "remove", "pacs", "--force", home=dvdexit_home).returncode == 0
    _add_dimse(dvdexit_home, "pacs", healthy.port, "HEALTHY")
    replay = run_dvdexit("send", "--retry-failed", "--json", home=dvdexit_home)

    assert replay.returncode == 0, replay.stderr
    assert json.loads(replay.stdout)["sent"] == 2
    assert len(healthy.stored_files()) == 2
    # One retry record, for the study the replay resent: the other was not sent again.
    records = _audit(dvdexit_home)
    assert len(records) == 3, records
    first_records, retry = records[:2], records[2]
    assert send in first_records and whole in first_records  # never rewritten
    assert (retry["type"], retry["outcome"], retry["outcome_text"]) == ("retry", 0, "success")
    assert retry["transfer_id"] == transfer_id and retry["study"]["uid"] == study_uid
    # Counts as the transfer stands now: the 6 of the first send and the 2 replayed.
    assert retry["counts"] == {"sent": 8, "failed": 0, "pending": 0, "skipped": 0}
    assert (retry["note"], retry["reason"], retry["recipient"]) == (NOTE, REASON, RECIPIENT)
    assert retry["destination"] == {
        "role": "destination",
        "role_code": "110152",
        "name": "pacs",
        "ae_title": "HEALTHY",
        "address": f"{LOOPBACK}:{healthy.port}",
        "requestor": False,
    }
    assert retry["source"]["requestor"] is True and retry["source"]["ae_title"]
    assert retry["who"]["process"] == "dvdexit send --retry-failed"
    assert DEFAULT_PATIENT_ID.encode() not in (dvdexit_home / "audit.jsonl").read_bytes()


def test_a_forward_is_audited_from_our_receiver_to_the_forward_peer(
    storescp: Any, dvdexit_receiver: Any, dvdexit_home: Path, tmp_path: Path
) -> None:
    files = write_study(tmp_path / "study", n_instances=3, seed="audit-forward")
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    pacs = storescp(tmp_path / "pacs", ae="LOCALPACS")
    _add_dimse(dvdexit_home, "pacs", pacs.port, "LOCALPACS")
    receiver = dvdexit_receiver(
        tmp_path / "store", ae="GATEWAY", extra=["--idle-timeout", "1", "--forward-to", "pacs"]
    )

    assert run_dcmsend(files, receiver.port, called_ae="GATEWAY").returncode == 0

    forwards = _wait(
        lambda: [r for r in _audit(dvdexit_home) if r["type"] == "forward"], "the forward record"
    )
    (forward,) = forwards
    assert len(pacs.stored_files()) == 3
    assert (forward["outcome"], forward["outcome_text"], forward["action"]) == (0, "success", "R")
    assert forward["study"]["uid"] == study_uid and forward["study"]["instances"] == 3
    assert forward["counts"] == {"sent": 3, "failed": 0, "pending": 0, "skipped": 0}
    assert forward["transfer_id"] is not None
    # Source: our receiver, calling the PACS (it requested the forward); destination: the PACS.
    assert forward["source"]["role"] == "source" and forward["source"]["requestor"] is True
    assert forward["source"]["name"] is None and forward["source"]["ae_title"]
    assert forward["destination"] == {
        "role": "destination",
        "role_code": "110152",
        "name": "pacs",
        "ae_title": "LOCALPACS",
        "address": f"{LOOPBACK}:{pacs.port}",
        "requestor": False,
    }
    assert forward["who"]["process"] == "dvdexit receive (forward)"
    (received,) = [r for r in _audit(dvdexit_home) if r["type"] == "receive"]
    assert received["destination"]["ae_title"] == "GATEWAY"
    receiver.stop()


def test_a_send_to_a_dicomweb_peer_names_the_peer_and_its_url_not_an_ae(
    orthanc: Any, dvdexit_home: Path, tmp_path: Path
) -> None:
    files = write_study(tmp_path / "study", n_instances=2, seed="audit-dicomweb")
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    archive = orthanc()
    added = run_dvdexit(
        "peers", "add", "web", "--dicomweb", archive.dicomweb_url, home=dvdexit_home
    )
    assert added.returncode == 0, added.stderr

    sent = run_dvdexit(
        "send", tmp_path / "study", "--to", "web", "--recipient", RECIPIENT, "--json",
        home=dvdexit_home,
    )  # fmt: skip

    assert sent.returncode == 0, sent.stderr
    assert len(archive.instance_uids()) == 2
    (record,) = _audit(dvdexit_home)
    assert (record["type"], record["outcome"]) == ("send", 0)
    assert record["study"]["uid"] == study_uid
    assert record["counts"]["sent"] == 2
    assert record["destination"]["name"] == "web"
    assert record["destination"]["ae_title"] is None  # DICOMweb has no AE title
    assert record["destination"]["address"] == archive.dicomweb_url
    assert f"{LOOPBACK}:{archive.http_port}" in record["destination"]["address"]
    assert record["recipient"] == RECIPIENT


def test_a_forward_held_for_want_of_a_mapping_is_audited_as_not_sent(
    storescp: Any, dvdexit_receiver: Any, dvdexit_home: Path, tmp_path: Path
) -> None:
    files = write_study(tmp_path / "study", n_instances=2, seed="audit-held")
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    pacs = storescp(tmp_path / "pacs", ae="LOCALPACS")
    _add_dimse(dvdexit_home, "pacs", pacs.port, "LOCALPACS")
    mapping = tmp_path / "mapping.csv"  # maps another patient only
    mapping.write_text("sender_id,sender_issuer,local_id,local_issuer\nOTHER-1,,LOCAL-1,\n")
    receiver = dvdexit_receiver(
        tmp_path / "store",
        extra=["--idle-timeout", "1", "--forward-to", "pacs", "--reconcile", str(mapping)],
    )

    assert run_dcmsend(files, receiver.port, called_ae="DVDEXIT").returncode == 0

    (forward,) = _wait(
        lambda: [r for r in _audit(dvdexit_home) if r["type"] == "forward"], "the forward record"
    )
    assert pacs.stored_files() == []
    assert (forward["outcome"], forward["outcome_text"]) == (8, "serious failure")
    assert forward["study"]["uid"] == study_uid and forward["study"]["instances"] == 2
    assert forward["counts"] == {"sent": 0, "failed": 0, "pending": 2, "skipped": 0}
    assert forward["transfer_id"] is None
    assert forward["detail"].startswith("held: no reconciliation mapping")
    assert forward["destination"]["name"] == "pacs"
    raw = (dvdexit_home / "audit.jsonl").read_bytes()
    assert DEFAULT_PATIENT_ID.encode() not in raw
    receiver.stop()
