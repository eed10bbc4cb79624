"""What the receiver does when something goes wrong while it answers a C-STORE.

A journal held locked by another program (the sqlite3 shell), a sender that sends a
truncated dataset, a handler that fails: the sender is told the truth (A700 to retry,
a C000-family failure for a dataset that can never be stored), and the store keeps
nothing the journal does not know about, including spool files.
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
import pytest
from peers import LOOPBACK, dcmtk_env, hook_runs, recording_hook, run_dvdexit
from pynetdicom import AE
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE

from dvdexit_cli.config import resolve_paths
from dvdexit_cli.journal import Journal
from dvdexit_cli.samples import write_study

pytestmark = pytest.mark.peer


def wait_until(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def journal_file(home: Path) -> Path:
    return resolve_paths({"DVDEXIT_HOME": str(home)}).journal_file


@contextmanager
def journal_locked(path: Path) -> Iterator[None]:
    """Hold ``BEGIN EXCLUSIVE`` on the journal with the sqlite3 shell until the block ends."""
    shell = subprocess.Popen(
        [shutil.which("sqlite3") or "sqlite3", str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert shell.stdin is not None and shell.stdout is not None
    try:
        shell.stdin.write("BEGIN EXCLUSIVE;\nSELECT 'locked';\n")
        shell.stdin.flush()
        assert shell.stdout.readline().strip() == "locked"
        yield
        shell.stdin.write("COMMIT;\n.quit\n")
        shell.stdin.flush()
        shell.wait(10)
    finally:
        if shell.poll() is None:
            shell.kill()
            shell.wait()


def storescu(files: list[Path], port: int) -> subprocess.CompletedProcess[str]:
    """DCMTK storescu (by absolute path: pynetdicom's script shadows it), verbose."""
    return subprocess.run(
        ["/usr/bin/storescu", "-v", "-aet", "HOSP_A", "-aec", "DVDEXIT", LOOPBACK, str(port)]
        + [str(f) for f in files],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_instance_that_cannot_be_journaled_is_answered_a700_and_a_resend_completes_the_study(
    tmp_path, dvdexit_receiver, dvdexit_home, storescp
):
    study = write_study(tmp_path / "study", n_instances=3, seed="journal-locked")
    uid = str(pydicom.dcmread(study[0], stop_before_pixels=True).StudyInstanceUID)
    pacs = storescp(tmp_path / "pacs")
    added = run_dvdexit(
        "peers", "add", "pacs", "--dimse", f"{LOOPBACK}:{pacs.port}", "--ae", pacs.ae,
        home=dvdexit_home,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    command, marker = recording_hook(tmp_path)
    receiver = dvdexit_receiver(
        tmp_path / "STORE",
        extra=["--idle-timeout", "2", "--on-complete", command, "--forward-to", "pacs"],
    )
    first = storescu(study[:2], receiver.port)
    assert first.returncode == 0, first.stdout + first.stderr

    with journal_locked(journal_file(dvdexit_home)):
        refused = storescu(study[2:], receiver.port)
    output = refused.stdout + refused.stderr
    # Out of resources: the sender may (and dvdexit does) send it again; not C211, final.
    assert "OutOfResources" in output, output
    stored = {p.name for p in receiver.store.rglob("*.dcm")}
    assert stored == {f"{pydicom.dcmread(f).SOPInstanceUID}.dcm" for f in study[:2]}, (
        "the refused instance was left in the store"
    )
    wait_until(lambda: len(hook_runs(marker)) >= 1, "the study to complete with two instances")
    assert hook_runs(marker)[0] == [uid, "2", "idle"]

    again = storescu(study[2:], receiver.port)
    assert again.returncode == 0 and "OutOfResources" not in again.stdout, again.stdout

    # The resent instance is new: the study re-opens and completes whole.
    wait_until(lambda: len(hook_runs(marker)) >= 2, "the study to complete again with all three")
    assert hook_runs(marker)[1] == [uid, "3", "idle"]
    wait_until(lambda: len(pacs.stored_files()) == 3, "the forward of all three instances")
    assert receiver.stop() == 0
    assert "answered A700: journal unavailable" in receiver.stderr
    assert list((receiver.store / ".incoming").iterdir()) == [], "the refused spool file stayed"
    with Journal(journal_file(dvdexit_home)) as journal:
        recorded = {Path(p).name for p in journal.study_files(uid)}
    assert recorded == {p.name for p in receiver.store.rglob("*.dcm")}
    assert len(recorded) == 3


def _associate(port: int, sop_class: str, transfer_syntax: str, *, max_pdu: int = 16382) -> Any:
    ae = AE(ae_title="HOSP_A")
    ae.add_requested_context(sop_class, transfer_syntax)
    ae.maximum_pdu_size = max_pdu
    assoc = ae.associate(LOOPBACK, port, ae_title="DVDEXIT")
    assert assoc.is_established
    return assoc


def test_truncated_dataset_is_refused_with_a_reason_and_nothing_is_kept(
    tmp_path, dvdexit_receiver, dvdexit_home
):
    (whole,) = write_study(tmp_path / "study", n_instances=1, seed="truncated-on-the-wire")
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(whole.read_bytes()[:-300])  # the pixel data's declared length runs past
    ds = pydicom.dcmread(whole, stop_before_pixels=True)
    receiver = dvdexit_receiver(tmp_path / "STORE", extra=["--idle-timeout", "1"])

    assoc = _associate(receiver.port, ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    try:
        # pynetdicom sends a file's dataset bytes as they are (no DCMTK sender would).
        answer = assoc.send_c_store(cut)
        whole_answer = assoc.send_c_store(whole)
    finally:
        assoc.release()

    assert answer.Status & 0xF000 == 0xC000, f"{answer.Status:04X}"
    assert "truncated" in answer.ErrorComment and "(7FE0,0010)" in answer.ErrorComment
    assert whole_answer.Status == 0x0000  # the same instance, whole, is then stored
    assert receiver.stop() == 0
    stored = list(receiver.store.rglob("*.dcm"))
    assert [p.name for p in stored] == [f"{ds.SOPInstanceUID}.dcm"]
    assert stored[0].read_bytes()[-300:] == whole.read_bytes()[-300:]
    assert list((receiver.store / ".incoming").iterdir()) == []
    with Journal(journal_file(dvdexit_home)) as journal:
        rows = journal.received_summary()
    assert sum(r["stored"] for r in rows) == 1 and sum(r["refused"] for r in rows) == 1
    verified = run_dvdexit("verify", receiver.store, home=dvdexit_home)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_spool_of_an_association_aborted_mid_dataset_is_gone_after_a_clean_stop(
    tmp_path, dvdexit_receiver
):
    (big,) = write_study(tmp_path / "study", n_instances=1, seed="aborted-mid-dataset")
    ds = pydicom.dcmread(big)
    receiver = dvdexit_receiver(tmp_path / "STORE")
    spool = receiver.store / ".incoming"

    assoc = _associate(receiver.port, ds.SOPClassUID, ds.file_meta.TransferSyntaxUID, max_pdu=1024)
    (context,) = assoc.accepted_contexts
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = ds.SOPClassUID
    request.AffectedSOPInstanceUID = ds.SOPInstanceUID
    request.Priority = 2
    request.DataSet = io.BytesIO(big.read_bytes()[132 + _meta_length(big) :])
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    fragments = list(message.encode_msg(context.context_id, 1024))
    assert len(fragments) > 3
    for pdata in fragments[:-1]:  # all but the last: the dataset never ends
        assoc.dul.send_pdu(pdata)
    wait_until(lambda: any(spool.iterdir()), "the receiver to spool the incoming dataset")
    assoc.abort()

    assert receiver.stop() == 0
    assert list(spool.iterdir()) == [], "a spool file outlived a clean stop"
    assert list(receiver.store.rglob("*.dcm")) == []


def _meta_length(path: Path) -> int:
    with path.open("rb") as fh:
        fh.seek(132 + 8)
        (group_length,) = struct.unpack("<I", fh.read(4))
    return 12 + group_length
