"""When is a study complete, and what happens then: idle timeout, Storage Commitment, hook.

Senders are DCMTK's dcmsend; the Storage Commitment requester is a pynetdicom SCU (DCMTK
ships no storage commitment SCU). The hook is a small shell script that appends its
environment to a marker file, one line per run.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest
from peers import (
    LOOPBACK,
    hook_runs,
    recording_hook,
    run_dcmsend,
    run_dvdexit,
    wait_for_hook_runs,
)
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from dvdexit_cli.config import resolve_paths
from dvdexit_cli.journal import Journal
from dvdexit_cli.samples import sample_uid, write_study

pytestmark = pytest.mark.peer


@contextmanager
def journal_of(home: Path) -> Iterator[Journal]:
    with Journal(resolve_paths({"DVDEXIT_HOME": str(home)}).journal_file) as journal:
        yield journal


def study_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def push(files: list[Path], port: int) -> None:
    sent = run_dcmsend(files, port, called_ae="DVDEXIT", calling_ae="HOSP_A")
    assert sent.returncode == 0, sent.stderr


def test_idle_study_completes_once_and_the_hook_gets_its_environment(
    tmp_path, dvdexit_receiver, dvdexit_home
):
    study = write_study(tmp_path / "study", n_instances=3, seed="idle-complete")
    command, marker = recording_hook(
        tmp_path,
        fields=("STUDY_UID", "STUDY_DIR", "INSTANCE_COUNT", "CALLING_AE", "COMPLETED_BY"),
    )
    receiver = dvdexit_receiver(
        tmp_path / "STORE", extra=["--idle-timeout", "1", "--on-complete", command]
    )
    push(study, receiver.port)

    ((uid, folder, count, calling, by),) = wait_for_hook_runs(marker, 1)
    assert receiver.stop() == 0
    assert uid == study_uid(study[0])
    assert Path(folder) == receiver.store / uid and Path(folder).is_dir()
    assert (count, calling, by) == ("3", "HOSP_A", "idle")
    assert len(hook_runs(marker)) == 1, "the hook ran more than once"
    assert f"complete: study {uid} (3 instance(s), by idle)" in receiver.stderr
    with journal_of(dvdexit_home) as journal:
        (run,) = journal.hook_runs(uid)
        assert (run["outcome"], run["exit_status"]) == ("succeeded", 0)
    status = run_dvdexit("status", "--json", home=dvdexit_home)
    (row,) = [r for r in json.loads(status.stdout)["received"] if r["study_uid"] == uid]
    assert (row["state"], row["completed_by"], row["hook"]) == ("complete", "idle", "succeeded")


def test_failing_hook_loses_nothing_and_rerun_hooks_runs_it_again_once(
    tmp_path, dvdexit_receiver, dvdexit_home
):
    study = write_study(tmp_path / "study", n_instances=2, seed="hook-fails")
    uid = study_uid(study[0])
    receiver = dvdexit_receiver(
        tmp_path / "STORE", extra=["--idle-timeout", "1", "--on-complete", "sh -c 'exit 3'"]
    )
    push(study, receiver.port)
    deadline = time.monotonic() + 30
    while "hook failed" not in Path(receiver.stderr_path).read_text():
        assert time.monotonic() < deadline, "the failing hook never ran"
        time.sleep(0.1)
    assert receiver.stop() == 0
    assert f"hook failed: study {uid}: exited with status 3" in receiver.stderr
    assert len(list(receiver.store.rglob("*.dcm"))) == len(study)
    with journal_of(dvdexit_home) as journal:
        assert [r["exit_status"] for r in journal.hook_runs(uid)] == [3]

    still_failing = run_dvdexit(
        "receive", "--rerun-hooks", "--on-complete", "sh -c 'exit 4'", home=dvdexit_home
    )
    assert still_failing.returncode == 6, still_failing.stderr

    command, marker = recording_hook(
        tmp_path,
        fields=("STUDY_UID", "STUDY_DIR", "INSTANCE_COUNT", "CALLING_AE", "COMPLETED_BY"),
    )
    fixed = run_dvdexit("receive", "--rerun-hooks", "--on-complete", command, home=dvdexit_home)
    assert fixed.returncode == 0, fixed.stderr
    ((ran_uid, _, count, calling, by),) = hook_runs(marker)
    assert (ran_uid, count, calling, by) == (uid, "2", "HOSP_A", "idle")

    again = run_dvdexit("receive", "--rerun-hooks", "--on-complete", command, home=dvdexit_home)
    assert again.returncode == 0, again.stderr
    assert len(hook_runs(marker)) == 1, "a hook that succeeded was run again"
    with journal_of(dvdexit_home) as journal:
        assert [r["outcome"] for r in journal.hook_runs(uid)] == ["failed", "failed", "succeeded"]


class CommitmentRequester:
    """A Storage Commitment SCU (pynetdicom) that waits for the report on its association."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reports: list[tuple[int, Dataset]] = []
        self._got = threading.Event()

    def _on_report(self, event: evt.Event) -> tuple[int, None]:
        self.reports.append((event.event_type, event.event_information))
        self._got.set()
        return 0x0000, None

    def request(self, instances: list[tuple[str, str]], *, name: str) -> tuple[int, Dataset]:
        ae = AE(ae_title="HOSP_A")
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = ae.associate(
            LOOPBACK,
            self.port,
            ae_title="DVDEXIT",
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._on_report)],
        )
        assert assoc.is_established
        try:
            action = Dataset()
            action.TransactionUID = sample_uid("commitment", name)
            action.ReferencedSOPSequence = []
            for sop_class, sop_instance in instances:
                item = Dataset()
                item.ReferencedSOPClassUID = sop_class
                item.ReferencedSOPInstanceUID = sop_instance
                action.ReferencedSOPSequence.append(item)
            self._got.clear()
            status, _ = assoc.send_n_action(
                action, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1"
            )
            assert status.Status == 0x0000
            assert self._got.wait(30), "no N-EVENT-REPORT on the association"
        finally:
            assoc.release()
        event_type, info = self.reports[-1]
        assert info.TransactionUID == action.TransactionUID
        return event_type, info


def test_commitment_naming_a_missing_instance_fails_it_and_completes_only_when_it_arrived(
    tmp_path, dvdexit_receiver, dvdexit_home
):
    study = write_study(tmp_path / "study", n_instances=4, seed="commitment")
    named = []
    for path in study:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        named.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
    uid = study_uid(study[0])
    command, marker = recording_hook(
        tmp_path,
        fields=("STUDY_UID", "STUDY_DIR", "INSTANCE_COUNT", "CALLING_AE", "COMPLETED_BY"),
    )
    # A long idle timeout: only the commitment can complete the study here.
    receiver = dvdexit_receiver(
        tmp_path / "STORE", extra=["--idle-timeout", "3600", "--on-complete", command]
    )
    requester = CommitmentRequester(receiver.port)
    push(study[:3], receiver.port)

    event_type, info = requester.request(named, name="first")
    assert event_type == 2, "failures exist: event type 2"
    assert [
        (i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID) for i in info.ReferencedSOPSequence
    ] == named[:3]
    (failed,) = info.FailedSOPSequence
    assert failed.ReferencedSOPInstanceUID == named[3][1]
    assert failed.FailureReason == 0x0112  # no such object instance

    push(study[3:], receiver.port)
    event_type, info = requester.request(named, name="second")
    assert event_type == 1
    assert len(info.ReferencedSOPSequence) == 4 and "FailedSOPSequence" not in info
    ((ran_uid, _, count, calling, by),) = wait_for_hook_runs(marker, 1)
    assert (ran_uid, count, calling, by) == (uid, "4", "HOSP_A", "commitment")

    # Asked again, the answer is the same and the hook does not fire a second time.
    event_type, _ = requester.request(named, name="third")
    assert event_type == 1
    assert receiver.stop() == 0
    assert len(hook_runs(marker)) == 1
    with journal_of(dvdexit_home) as journal:
        assert [r["outcome"] for r in journal.hook_runs(uid)] == ["succeeded"]
        study_row = journal.study(uid)
        assert study_row is not None and study_row.completed_by == "commitment"
    # The audit trail: the failed commitment, then the completion.
    audit = [json.loads(x) for x in (dvdexit_home / "audit.jsonl").read_text().splitlines()]
    assert [(r["study"]["uid"], r["outcome"]) for r in audit] == [(uid, 4), (uid, 0)]
    assert "1 instance(s) of the request not held" in audit[0]["detail"]
    assert audit[0]["counts"]["not_held"] == 1 and audit[0]["source"]["ae_title"] == "HOSP_A"


def test_commitment_for_an_instance_whose_file_changed_reports_a_processing_failure(
    tmp_path, dvdexit_receiver
):
    study = write_study(tmp_path / "study", n_instances=2, seed="commitment-changed")
    named = []
    for path in study:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        named.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
    command, marker = recording_hook(
        tmp_path,
        fields=("STUDY_UID", "STUDY_DIR", "INSTANCE_COUNT", "CALLING_AE", "COMPLETED_BY"),
    )
    receiver = dvdexit_receiver(
        tmp_path / "STORE", extra=["--idle-timeout", "3600", "--on-complete", command]
    )
    push(study, receiver.port)
    stored = sorted(receiver.store.rglob(f"{named[0][1]}.dcm"))
    assert len(stored) == 1
    with stored[0].open("r+b") as fh:  # damage after storage: bit rot, a careless admin
        fh.seek(-4, 2)
        fh.write(b"XXXX")

    event_type, info = CommitmentRequester(receiver.port).request(named, name="changed")
    assert event_type == 2
    (failed,) = info.FailedSOPSequence
    assert (failed.ReferencedSOPInstanceUID, failed.FailureReason) == (named[0][1], 0x0110)
    assert receiver.stop() == 0
    assert hook_runs(marker) == []


def test_commitment_report_goes_to_the_configured_address_when_the_requester_left(
    tmp_path, dvdexit_receiver
):
    from peers import free_port

    study = write_study(tmp_path / "study", n_instances=2, seed="commitment-new-assoc")
    named = []
    for path in study:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        named.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
    reports: list[tuple[int, Dataset]] = []
    got = threading.Event()

    def on_report(event: evt.Event) -> tuple[int, None]:
        reports.append((event.event_type, event.event_information))
        got.set()
        return 0x0000, None

    listener = AE(ae_title="HOSP_A")
    listener.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    reply_port = free_port()
    server = listener.start_server(
        (LOOPBACK, reply_port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)]
    )
    try:
        receiver = dvdexit_receiver(
            tmp_path / "STORE",
            extra=["--idle-timeout", "3600", "--commit-reply", f"HOSP_A={LOOPBACK}:{reply_port}"],
        )
        push(study, receiver.port)
        requester = AE(ae_title="HOSP_A")
        requester.add_requested_context(StorageCommitmentPushModel)
        assoc = requester.associate(LOOPBACK, receiver.port, ae_title="DVDEXIT")
        assert assoc.is_established
        action = Dataset()
        action.TransactionUID = sample_uid("commitment", "new-assoc")
        action.ReferencedSOPSequence = []
        for sop_class, sop_instance in named:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop_instance
            action.ReferencedSOPSequence.append(item)
        status, _ = assoc.send_n_action(
            action, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1"
        )
        assert status.Status == 0x0000
        assoc.release()  # gone before the report: it must come on a new association
        assert got.wait(60), "no report on a new association"
    finally:
        server.shutdown()
    ((event_type, info),) = reports
    assert event_type == 1 and info.TransactionUID == action.TransactionUID
    assert len(info.ReferencedSOPSequence) == 2


def test_a_custom_layout_stores_by_date_and_the_hook_gets_that_study_folder(
    tmp_path, dvdexit_receiver, dvdexit_home
):
    study = write_study(tmp_path / "study", n_instances=2, seed="layout")
    first = pydicom.dcmread(study[0], stop_before_pixels=True)
    command, marker = recording_hook(
        tmp_path,
        fields=("STUDY_UID", "STUDY_DIR", "INSTANCE_COUNT", "CALLING_AE", "COMPLETED_BY"),
    )
    receiver = dvdexit_receiver(
        tmp_path / "STORE",
        extra=[
            "--layout",
            "{study_date}/{study}/{sop}.dcm",
            "--idle-timeout",
            "1",
            "--on-complete",
            command,
        ],
    )
    push(study, receiver.port)
    ((uid, folder, count, _, _),) = wait_for_hook_runs(marker, 1)
    assert receiver.stop() == 0
    expected_folder = receiver.store / str(first.StudyDate) / uid
    assert (Path(folder), count) == (expected_folder, "2")
    assert (expected_folder / f"{first.SOPInstanceUID}.dcm").is_file()
    verified = run_dvdexit("verify", receiver.store, home=dvdexit_home)
    assert verified.returncode == 0, verified.stdout + verified.stderr
