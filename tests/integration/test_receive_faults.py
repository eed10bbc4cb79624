"""What the receiver does when something goes wrong while it answers a C-STORE.

A journal held locked by another program (the sqlite3 shell), a sender that sends a
truncated dataset, a handler that fails: the sender is told the truth (A700 to retry,
a C000-family failure for a dataset that can never be stored), and the store keeps
nothing the journal does not know about, including spool files.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest
from peers import LOOPBACK, dcmtk_env, run_dvdexit

from dvdexit_cli.config import resolve_paths
from dvdexit_cli.journal import Journal
from dvdexit_cli.samples import write_study

pytestmark = pytest.mark.peer

HOOK = """\
#!/bin/sh
echo "$DVDEXIT_STUDY_UID|$DVDEXIT_INSTANCE_COUNT|$DVDEXIT_COMPLETED_BY" >> "$1"
"""


def hook(tmp_path: Path, name: str = "hook") -> tuple[str, Path]:
    script = tmp_path / f"{name}.sh"
    script.write_text(HOOK)
    marker = tmp_path / f"{name}-runs.txt"
    return f"sh {script} {marker}", marker


def runs(marker: Path) -> list[list[str]]:
    if not marker.exists():
        return []
    return [line.split("|") for line in marker.read_text().splitlines()]


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
    command, marker = hook(tmp_path)
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
    assert "0xa700" in output.lower(), output
    stored = {p.name for p in receiver.store.rglob("*.dcm")}
    assert stored == {f"{pydicom.dcmread(f).SOPInstanceUID}.dcm" for f in study[:2]}, (
        "the refused instance was left in the store"
    )
    wait_until(lambda: len(runs(marker)) >= 1, "the study to complete with two instances")
    assert runs(marker)[0] == [uid, "2", "idle"]

    again = storescu(study[2:], receiver.port)
    assert again.returncode == 0 and "0xa700" not in again.stdout.lower(), again.stdout

    # The resent instance is new: the study re-opens and completes whole.
    wait_until(lambda: len(runs(marker)) >= 2, "the study to complete again with all three")
    assert runs(marker)[1] == [uid, "3", "idle"]
    wait_until(lambda: len(pacs.stored_files()) == 3, "the forward of all three instances")
    assert receiver.stop() == 0
    assert "0xA700" in receiver.stderr or "A700" in receiver.stderr
    with Journal(journal_file(dvdexit_home)) as journal:
        recorded = {Path(p).name for p in journal.study_files(uid)}
    assert recorded == {p.name for p in receiver.store.rglob("*.dcm")}
    assert len(recorded) == 3
