"""``dvdexit receive --watch DIR``: packages dropped by ``dvdexit send`` to a folder peer.

Packages are written by the real command (``send --to FOLDER-PEER``, with and without
``--zip``); the watcher runs as its own process, once (``--once``, as cron would) or until
SIGTERM.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from peers import dvdexit_env, run_dvdexit, stop_process

from dvdexit_cli.dicom.digest import dataset_digest
from dvdexit_cli.dicom.reports import BASIC_TEXT_SR, ENCAPSULATED_PDF
from dvdexit_cli.samples import DEFAULT_PATIENT_ID, make_sample_dvd

HOOK = """\
#!/bin/sh
printf '%s|%s|%s|%s|%s\\n' "$DVDEXIT_STUDY_UID" "$DVDEXIT_COMPLETED_BY" "$DVDEXIT_NOTE" \
"$DVDEXIT_REASON" "$DVDEXIT_RECIPIENT" >> "$1"
"""


def _package(tmp_path: Path, home: Path, outbox: Path, seed: str, *extra: str) -> Path:
    """Send a small sample study to the folder peer ``out``; return the package written."""
    media = make_sample_dvd(tmp_path / f"dvd-{seed}", seed=seed, ct_slices=2, sc_images=1)
    before = set(outbox.iterdir())
    sent = run_dvdexit("send", media.root, "--to", "out", *extra, home=home)
    assert sent.returncode == 0, sent.stderr
    (package,) = set(outbox.iterdir()) - before
    return package


@pytest.fixture
def outbox(tmp_path: Path, dvdexit_home: Path) -> Path:
    folder = tmp_path / "outbox"
    folder.mkdir()
    added = run_dvdexit("peers", "add", "out", "--folder", folder, home=dvdexit_home)
    assert added.returncode == 0, added.stderr
    return folder


def test_watch_once_imports_intact_packages_and_rejects_a_tampered_one_naming_the_instance(
    tmp_path: Path, dvdexit_home: Path, outbox: Path
) -> None:
    note = ("--note", "see the prior CT", "--reason", "second opinion", "--recipient", "Dr. B")
    good = _package(tmp_path, dvdexit_home, outbox, "watch-good", *note)
    zipped = _package(tmp_path, dvdexit_home, outbox, "watch-zip", "--zip")
    bad = _package(tmp_path, dvdexit_home, outbox, "watch-bad")
    victim = sorted(p for p in bad.rglob("*") if p.is_file() and p.parent != bad)[0]
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    bad_files = sorted(p.relative_to(bad) for p in bad.rglob("*"))
    drop = tmp_path / "drop"
    drop.mkdir()
    for package in (good, zipped, bad):
        shutil.move(package, drop / package.name)
    good_digests = {dataset_digest(p)[1] for p in (drop / good.name).rglob("IM*")}
    receiver_home = tmp_path / "receiver-home"
    receiver_home.mkdir()
    script = tmp_path / "hook.sh"
    script.write_text(HOOK)
    marker = tmp_path / "hook-runs.txt"
    store = tmp_path / "store"

    watched = run_dvdexit(
        "receive", "--watch", drop, "--once", "--settle", "0", "--store", store,
        "--on-complete", f"sh {script} {marker}", "--json", home=receiver_home,
    )  # fmt: skip

    assert watched.returncode == 7, watched.stderr  # a package was not intact
    result = json.loads(watched.stdout)
    assert sorted(result["done"]) == sorted([good.name, zipped.name])
    ((rejected,),) = [[r for r in result["rejected"]]]
    assert rejected["package"] == bad.name
    assert victim.relative_to(bad).as_posix() in rejected["reason"]
    assert result["stored"] == 6 and result["conflicts"] == 0
    assert sorted(p.name for p in (drop / "done").iterdir()) == sorted([good.name, zipped.name])
    reason_file = drop / "rejected" / f"{bad.name}.reason.txt"
    assert victim.relative_to(bad).as_posix() in reason_file.read_text()
    # Nothing of the rejected package is lost, and nothing of it was stored.
    kept = drop / "rejected" / bad.name
    assert sorted(p.relative_to(kept) for p in kept.rglob("*")) == bad_files
    stored = {dataset_digest(p)[1] for p in store.rglob("*.dcm")}
    assert good_digests <= stored and len(stored) == 6
    bad_digests = {dataset_digest(p)[1] for p in kept.rglob("IM*")}
    assert not bad_digests & stored

    # Every imported study completed once, its hook ran with the manifest's note.
    runs = [line.split("|") for line in marker.read_text().splitlines()]
    assert sorted(r[0] for r in runs) == sorted(result["studies"]) and len(runs) == 4
    assert all(r[1] == "package" for r in runs)
    with_note = [r for r in runs if r[2]]
    assert len(with_note) == 2
    assert all(r[2:] == ["see the prior CT", "second opinion", "Dr. B"] for r in with_note)

    status = run_dvdexit("status", "--json", home=receiver_home)
    received = {r["study_uid"]: r for r in json.loads(status.stdout)["received"]}
    assert set(received) == set(result["studies"])
    assert all(
        r["state"] == "complete" and r["completed_by"] == "package" for r in received.values()
    )
    notes = [r["sender_note"] for r in received.values() if r["sender_note"]]
    assert len(notes) == 2 and all(n["source"] == "manifest" for n in notes)
    assert notes[0]["reason"] == "second opinion"

    audit = [json.loads(x) for x in (receiver_home / "audit.jsonl").read_text().splitlines()]
    assert sorted(r["study"]["uid"] for r in audit) == sorted(result["studies"])
    assert all(r["type"] == "import" and r["outcome"] == 0 for r in audit)
    assert DEFAULT_PATIENT_ID not in (receiver_home / "audit.jsonl").read_text()

    shown = run_dvdexit("status", "--audit", home=receiver_home)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count("import (C)") == 4 and "0 success" in shown.stdout

    mixed = run_dvdexit("receive", "--watch", drop, "--port", "11112", home=receiver_home)
    assert mixed.returncode == 2 and "drop --port" in mixed.stderr

    again = run_dvdexit("receive", "--watch", drop, "--once", "--json", home=receiver_home)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["done"] == []


def test_watch_once_leaves_half_written_packages_alone(
    tmp_path: Path, dvdexit_home: Path, outbox: Path
) -> None:
    zipped = _package(tmp_path, dvdexit_home, outbox, "half-zip", "--zip")
    folder = _package(tmp_path, dvdexit_home, outbox, "half-dir")
    drop = tmp_path / "drop"
    drop.mkdir()
    # A zip still being copied: its first half, no central directory yet.
    data = zipped.read_bytes()
    (drop / zipped.name).write_bytes(data[: len(data) // 2])
    # A folder copied by cp -r: manifest there, the rest arriving (changed just now).
    copying = drop / folder.name
    shutil.copytree(folder, copying)
    missing = sorted(p for p in copying.rglob("IM*"))[-1]
    missing.unlink()

    watched = run_dvdexit(
        "receive", "--watch", drop, "--once", "--settle", "60", "--store", tmp_path / "store",
        "--json", home=tmp_path / "receiver-home",
    )  # fmt: skip

    assert watched.returncode == 0, watched.stderr
    result = json.loads(watched.stdout)
    assert result["done"] == [] and result["rejected"] == []
    assert sorted(result["waiting"]) == sorted([zipped.name, folder.name])
    assert sorted(p.name for p in drop.iterdir()) == sorted([zipped.name, folder.name])
    assert not (tmp_path / "store").exists() or not list((tmp_path / "store").rglob("*.dcm"))

    # Old enough but the zip still truncated: not a package yet, still left alone.
    past = time.time() - 3600
    os.utime(drop / zipped.name, (past, past))
    later = run_dvdexit(
        "receive", "--watch", drop, "--once", "--settle", "60", "--store", tmp_path / "store",
        "--json", home=tmp_path / "receiver-home",
    )  # fmt: skip
    assert later.returncode == 0, later.stderr
    assert (drop / zipped.name).exists()


def test_watch_runs_until_sigterm_and_imports_a_package_dropped_meanwhile(
    tmp_path: Path, dvdexit_home: Path, outbox: Path
) -> None:
    package = _package(tmp_path, dvdexit_home, outbox, "watch-live")
    drop = tmp_path / "drop"
    drop.mkdir()
    receiver_home = tmp_path / "receiver-home"
    receiver_home.mkdir()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "dvdexit_cli", "receive", "--watch", str(drop),
            "--interval", "0.2", "--settle", "0.5", "--store", str(tmp_path / "store"),
        ],
        env=dvdexit_env(receiver_home),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        shutil.move(package, drop / package.name)  # same filesystem: appears whole
        deadline = time.monotonic() + 60
        while not (drop / "done" / package.name).exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the package was not imported"
            time.sleep(0.1)
    finally:
        code, killed = stop_process(proc, sig=signal.SIGTERM, timeout=20)
    assert not killed and code == 0
    assert len(list((tmp_path / "store").rglob("*.dcm"))) == 3


def test_watch_imports_a_dvd_image_and_with_sr_to_pdf_stores_each_new_sr_also_as_a_pdf(
    tmp_path: Path, dvdexit_home: Path, outbox: Path
) -> None:
    package = _package(
        tmp_path, dvdexit_home, outbox, "watch-sr", "--note", "compare", "--note-as-sr", "--iso"
    )
    assert package.suffix == ".iso"  # a DVD image is a package too
    drop = tmp_path / "drop"
    drop.mkdir()
    shutil.move(package, drop / package.name)
    store = tmp_path / "store"

    watched = run_dvdexit(
        "receive", "--watch", drop, "--once", "--settle", "0", "--sr-to-pdf", "--store", store,
        "--json", home=tmp_path / "receiver-home",
    )  # fmt: skip

    assert watched.returncode == 0, watched.stderr
    classes = sorted(str(pydicom.dcmread(p).SOPClassUID) for p in store.rglob("*.dcm"))
    assert classes.count(BASIC_TEXT_SR) == 2  # a transfer note per study
    assert classes.count(ENCAPSULATED_PDF) == 2
    assert len(classes) == 3 + 4  # the images, the notes, their PDFs


def _watch_once(drop: Path, store: Path, home: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    watched = run_dvdexit(
        "receive", "--watch", drop, "--once", "--settle", "0", "--store", store, *extra,
        "--json", home=home,
    )  # fmt: skip
    return watched.returncode, json.loads(watched.stdout)


def _audit(home: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (home / "audit.jsonl").read_text().splitlines()]


def test_a_package_with_a_conflicting_instance_goes_to_rejected_not_done_and_is_audited(
    tmp_path: Path, dvdexit_home: Path, outbox: Path
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", seed="watch-conflict", ct_slices=3, sc_images=1)
    sent = run_dvdexit("send", media.root, "--to", "out", home=dvdexit_home)
    assert sent.returncode == 0, sent.stderr
    (first,) = outbox.iterdir()
    # The same study again, one CT slice changed under its UID (a correction, say).
    victim = next(p for p in media.instances if pydicom.dcmread(p).Modality == "CT")
    ds = pydicom.dcmread(victim)
    ds.SeriesDescription = "changed after the first package"
    ds.save_as(victim)
    ct_study = str(ds.StudyInstanceUID)
    sent = run_dvdexit("send", media.root, "--to", "out", home=dvdexit_home)
    assert sent.returncode == 0, sent.stderr
    (second,) = set(outbox.iterdir()) - {first}
    drop, store, home = tmp_path / "drop", tmp_path / "store", tmp_path / "receiver-home"
    drop.mkdir()
    home.mkdir()
    shutil.move(first, drop / first.name)
    code, result = _watch_once(drop, store, home)
    assert code == 0 and result["done"] == [first.name]
    shutil.move(second, drop / second.name)

    code, result = _watch_once(drop, store, home)

    assert code == 6, result  # partial: one instance was not stored
    assert result["done"] == [] and result["conflicts"] == 1
    ((rejected,),) = [result["rejected"]]
    assert rejected["package"] == second.name and "conflict: 1 instance(s)" in rejected["reason"]
    assert (drop / "rejected" / second.name).is_dir()
    assert "conflict" in (drop / "rejected" / f"{second.name}.reason.txt").read_text()
    assert not (drop / "done" / second.name).exists()
    # The store kept the first content; the audit of this import says minor failure.
    stored = next(
        p for p in store.rglob("*.dcm") if pydicom.dcmread(p).SOPInstanceUID == ds.SOPInstanceUID
    )
    assert "changed" not in str(pydicom.dcmread(stored).get("SeriesDescription", ""))
    second_import = [r for r in _audit(home)[2:] if r["study"]["uid"] == ct_study]
    assert [(r["type"], r["outcome"]) for r in second_import] == [("import", 4)]
    assert second_import[0]["counts"]["conflict"] == 1


def test_a_store_failure_mid_import_rejects_the_package_audits_it_and_a_redrop_completes_it(
    tmp_path: Path, dvdexit_home: Path, outbox: Path
) -> None:
    from dvdexit_cli.receive.store import InstanceStore

    package = _package(tmp_path, dvdexit_home, outbox, "watch-disk")
    sc = next(
        pydicom.dcmread(p, stop_before_pixels=True)
        for p in package.rglob("IM*")
        if pydicom.dcmread(p, stop_before_pixels=True).Modality != "CT"
    )
    store = tmp_path / "store"
    # The store cannot create the SC series folder: a file is in its way (as a full or
    # broken disk would fail the write).
    blocker = (
        InstanceStore(store)
        .path_for(str(sc.StudyInstanceUID), str(sc.SeriesInstanceUID), str(sc.SOPInstanceUID))
        .parent
    )
    blocker.parent.mkdir(parents=True)
    blocker.write_text("in the way")
    drop, home = tmp_path / "drop", tmp_path / "receiver-home"
    drop.mkdir()
    home.mkdir()
    shutil.move(package, drop / package.name)
    marker = tmp_path / "hook-runs.txt"
    script = tmp_path / "hook.sh"
    script.write_text(HOOK)
    hook = ("--on-complete", f"sh {script} {marker}")

    code, result = _watch_once(drop, store, home, *hook)

    assert code == 6, result
    assert result["done"] == [] and [r["package"] for r in result["rejected"]] == [package.name]
    assert "could not store" in (drop / "rejected" / f"{package.name}.reason.txt").read_text()
    records = {r["study"]["uid"]: r for r in _audit(home)}
    sc_record = records[str(sc.StudyInstanceUID)]
    assert sc_record["type"] == "import" and sc_record["outcome"] == 8
    assert sc_record["counts"]["refused"] == 1
    assert sc_record["detail"].startswith(f"package {package.name} rejected")
    for record in records.values():  # never a success for a study the failure cut short
        assert record["outcome"] == 0 or record["counts"]["refused"] + record["counts"].get(
            "not_imported", 0
        )
    status = json.loads(run_dvdexit("status", "--json", home=home).stdout)
    assert all(r["state"] != "complete" for r in status["received"])  # nothing completed
    assert not marker.exists()  # and no hook ran

    # The operator clears the disk and drops the package again: it arrives whole.
    blocker.unlink()
    shutil.move(drop / "rejected" / package.name, drop / package.name)
    code, result = _watch_once(drop, store, home, *hook)

    assert code == 0, result
    assert result["done"] == [package.name]
    latest = {r["study"]["uid"]: r for r in _audit(home)[len(records) :]}
    assert set(latest) == set(records) | {str(sc.StudyInstanceUID)}
    assert all(r["outcome"] == 0 and r["counts"]["refused"] == 0 for r in latest.values())
    assert len(marker.read_text().splitlines()) == 2


def test_a_crash_before_the_package_is_filed_leaves_it_for_the_next_pass(
    tmp_path: Path, dvdexit_home: Path, outbox: Path
) -> None:
    """The process dies after storing a package's instances, before completing its studies.

    The package must stay in the drop folder (not in done/ without its studies completed,
    hook and audit never run) and the next pass must import and complete it.
    """
    from dvdexit_cli.audit import AuditTrail, ReceiveAuditor
    from dvdexit_cli.journal import Journal
    from dvdexit_cli.package.watch import process_drop_folder
    from dvdexit_cli.receive.completeness import CompletenessTracker
    from dvdexit_cli.receive.store import InstanceStore

    class Crash(BaseException):
        """Stands for the process being killed: nothing after it runs."""

    class CrashingTracker(CompletenessTracker):
        def complete(self, study_uids: Any, *, completed_by: str) -> None:
            raise Crash

    package = _package(tmp_path, dvdexit_home, outbox, "watch-crash")
    drop = tmp_path / "drop"
    drop.mkdir()
    shutil.move(package, drop / package.name)
    store = InstanceStore(tmp_path / "store")
    audit_file = tmp_path / "audit.jsonl"
    with Journal(tmp_path / "journal.sqlite") as journal:
        crashing = CrashingTracker(journal=journal, idle_timeout=3600.0)
        with pytest.raises(Crash):
            process_drop_folder(drop, store=store, journal=journal, tracker=crashing)
        assert (drop / package.name).is_dir()
        assert not (drop / "done").exists() and not (drop / "rejected").exists()

        tracker = CompletenessTracker(
            journal=journal,
            idle_timeout=3600.0,
            audit=ReceiveAuditor(AuditTrail(audit_file), local_ae="DVDEXIT", kind="import"),
        )
        result = process_drop_folder(drop, store=store, journal=journal, tracker=tracker)

        assert result.done == [package.name] and (drop / "done" / package.name).is_dir()
        assert result.stored == 0 and result.duplicates == 3  # stored by the crashed pass
        studies = journal.studies()
        assert len(studies) == 2 and all(s.state == "complete" for s in studies)
    records = [json.loads(line) for line in audit_file.read_text().splitlines()]
    assert sorted(r["study"]["uid"] for r in records) == sorted(s.study_uid for s in studies)
    assert all(r["outcome"] == 0 and r["action"] == "C" for r in records)


def test_watch_runs_again_a_hook_cut_off_by_a_kill_as_a_listening_receiver_does(
    tmp_path: Path, dvdexit_home: Path, outbox: Path
) -> None:
    """A ``kill -9`` while the hook runs leaves its run journaled as running; the next
    ``receive --watch`` runs it again (a listening receiver does so at start)."""
    package = _package(tmp_path, dvdexit_home, outbox, "watch-hook-killed")
    drop = tmp_path / "drop"
    drop.mkdir()
    shutil.move(package, drop / package.name)
    marker, started = tmp_path / "runs.txt", tmp_path / "started.txt"
    slow = tmp_path / "slow-hook.sh"
    slow.write_text(f"#!/bin/sh\necho $$ > {started}\nexec sleep 60\n")
    quick = tmp_path / "hook.sh"
    quick.write_text(HOOK)
    args = ["receive", "--watch", str(drop), "--settle", "0", "--store", str(tmp_path / "store")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "dvdexit_cli", *args, "--once", "--on-complete", f"sh {slow}"],
        env=dvdexit_env(dvdexit_home),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not started.exists() or not started.read_text().strip():
            assert proc.poll() is None, "the watcher ended before its hook started"
            assert time.monotonic() < deadline, "the hook never started"
            time.sleep(0.1)
        proc.kill()  # kill -9: the hook run stays journaled as running
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        hook_pid = started.read_text().strip() if started.exists() else ""
        if hook_pid:
            os.kill(int(hook_pid), signal.SIGKILL)

    again = run_dvdexit(*args, "--once", "--on-complete", f"sh {quick} {marker}", home=dvdexit_home)

    assert again.returncode == 0, again.stderr
    assert (drop / "done" / package.name).exists()
    runs = marker.read_text().splitlines() if marker.exists() else []
    assert len(runs) == 2, runs  # the package's two studies, each run to its end this time
