"""Two receivers on one DVDEXIT_HOME (one journal, one store): each completes its own studies.

A study belongs to the receiver that stored its latest new instance: that one completes
it with its own idle timeout, runs its own hook and forwards it. Another listener, or a
``--watch`` import of copies already stored, leaves it alone.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
from peers import hook_runs, recording_hook, run_dcmsend, run_dvdexit, wait_for_hook_runs

from dvdexit_cli.config import resolve_paths
from dvdexit_cli.journal import Journal
from dvdexit_cli.samples import write_study

pytestmark = pytest.mark.peer


def study_of(home: Path, uid: str):
    with Journal(resolve_paths({"DVDEXIT_HOME": str(home)}).journal_file) as journal:
        return journal.study(uid)


def test_a_listener_with_a_shorter_idle_timeout_leaves_the_other_listeners_study_alone(
    tmp_path, dvdexit_receiver, dvdexit_home
):
    study = write_study(tmp_path / "study", n_instances=3, seed="two-listeners")
    uid = str(pydicom.dcmread(study[0], stop_before_pixels=True).StudyInstanceUID)
    store = tmp_path / "STORE"
    quick = dvdexit_receiver(store, extra=["--idle-timeout", "1"])
    command, marker = recording_hook(tmp_path, "slow")
    slow = dvdexit_receiver(store, extra=["--idle-timeout", "4", "--on-complete", command])

    sent = run_dcmsend(study, slow.port, called_ae="DVDEXIT", calling_ae="HOSP_B")
    assert sent.returncode == 0, sent.stderr

    ((ran_uid, count, by),) = wait_for_hook_runs(marker, 1)
    assert (ran_uid, count, by) == (uid, "3", "idle")
    assert quick.stop() == 0 and slow.stop() == 0
    assert f"complete: study {uid}" not in quick.stderr, "the other listener completed it"
    assert f"complete: study {uid} (3 instance(s), by idle)" in slow.stderr
    completed = study_of(dvdexit_home, uid)
    assert completed is not None and completed.completed_by == "idle"
    assert completed.receiver is not None and f":{slow.port} " in completed.receiver


def test_a_watch_import_of_copies_already_received_keeps_the_listeners_completion(
    tmp_path, dvdexit_receiver, dvdexit_home
):
    study = write_study(tmp_path / "study", n_instances=3, seed="watch-copies")
    uid = str(pydicom.dcmread(study[0], stop_before_pixels=True).StudyInstanceUID)
    store = tmp_path / "STORE"
    command, marker = recording_hook(tmp_path, "listener")
    listener = dvdexit_receiver(store, extra=["--idle-timeout", "1", "--on-complete", command])
    assert run_dcmsend(study, listener.port, called_ae="DVDEXIT").returncode == 0
    wait_for_hook_runs(marker, 1)
    assert listener.stop() == 0

    # The same study arrives again as a package (sent by a colleague to the drop folder).
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    assert run_dvdexit("peers", "add", "out", "--folder", outbox, home=dvdexit_home).returncode == 0
    assert run_dvdexit("send", tmp_path / "study", "--to", "out", home=dvdexit_home).returncode == 0
    drop = tmp_path / "drop"
    drop.mkdir()
    (package,) = outbox.iterdir()
    shutil.move(package, drop / package.name)
    watch_command, watch_marker = recording_hook(tmp_path, "watch")
    watched = run_dvdexit(
        "receive", "--watch", drop, "--once", "--settle", "0", "--store", store,
        "--on-complete", watch_command, home=dvdexit_home,
    )  # fmt: skip
    assert watched.returncode == 0, watched.stderr
    assert "3 duplicate" in watched.stderr

    completed = study_of(dvdexit_home, uid)
    assert completed is not None
    assert (completed.state, completed.completed_by) == ("complete", "idle")
    assert hook_runs(watch_marker) == [], "the import ran its hook for a study it did not import"
    assert len(hook_runs(marker)) == 1
