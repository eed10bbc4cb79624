"""`dvdexit verify PATH`: what it judges in a receiver's store and in a source folder.

A store holds the receiver's own temporaries next to its instances (the spool folder,
dot-prefixed ``.tmp`` files); they are never instances, so verify skips them, whereas a
dot-file of the user's in a folder that is no store is judged like any other file. A
source folder is judged on what came from it: the SR and PDF copies a send generated
(``--note-as-sr``, ``--report-text``) live elsewhere and are reported as such.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
import pytest
from peers import LOOPBACK, run_dcmsend, run_dvdexit

from dvdexit_cli.samples import write_study

pytestmark = pytest.mark.peer


def test_verify_of_a_store_after_a_crash_skips_the_receivers_own_temporaries(
    tmp_path: Path, dvdexit_receiver, dvdexit_home: Path
) -> None:
    study = write_study(tmp_path / "study", n_instances=3, seed="verify-temporaries")
    receiver = dvdexit_receiver(tmp_path / "STORE")
    sent = run_dcmsend(study, receiver.port, called_ae="DVDEXIT")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert receiver.stop() == 0
    # What a receiver killed in the middle of two instances leaves behind: a dataset
    # spooled by pynetdicom, and a copy not yet renamed to its final name.
    unjournaled = write_study(tmp_path / "other", n_instances=2, seed="verify-temporaries-2")
    stored = sorted(receiver.store.rglob("*.dcm"))
    shutil.copy(unjournaled[0], receiver.store / ".incoming" / ".spool-k2j3h4ab")
    uid = pydicom.dcmread(unjournaled[1], stop_before_pixels=True).SOPInstanceUID
    shutil.copy(unjournaled[1], stored[0].parent / f".{uid}.1a2b3c4d.tmp")

    done = run_dvdexit("verify", receiver.store, "--json", home=dvdexit_home)

    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert (report["identical"], report["unknown"], report["invalid"]) == (3, 0, 0)


def test_a_users_dot_file_in_a_folder_that_is_no_store_is_still_judged(
    tmp_path: Path, dvdexit_receiver, dvdexit_home: Path
) -> None:
    study = write_study(tmp_path / "study", n_instances=1, seed="verify-user-dot-file")
    receiver = dvdexit_receiver(tmp_path / "STORE")
    assert run_dcmsend(study, receiver.port, called_ae="DVDEXIT").returncode == 0
    assert receiver.stop() == 0
    folder = tmp_path / "copy"
    folder.mkdir()
    shutil.copy(next(receiver.store.rglob("*.dcm")), folder / "known.dcm")
    stranger = write_study(tmp_path / "other", n_instances=1, seed="verify-user-dot-file-2")
    shutil.copy(stranger[0], folder / ".mine.tmp")

    done = run_dvdexit("verify", folder, "--json", home=dvdexit_home)

    assert done.returncode == 7, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert (report["identical"], report["unknown"]) == (1, 1)


def test_verify_of_a_source_folder_after_a_send_with_generated_reports_passes(
    tmp_path: Path, dvdexit_home: Path, storescp
) -> None:
    files = write_study(tmp_path / "study", n_instances=3, seed="verify-generated")
    text = tmp_path / "report.txt"
    text.write_text("No acute findings.\n", encoding="utf-8")
    pacs = storescp(tmp_path / "pacs")
    run_dvdexit(
        "peers", "add", "pacs", "--dimse", f"{LOOPBACK}:{pacs.port}", "--ae", pacs.ae,
        home=dvdexit_home,
    )  # fmt: skip
    sent = run_dvdexit(
        "send", tmp_path / "study", "--to", "pacs", "--report-text", text,
        "--note", "Prior CT for comparison", "--note-as-sr", "--json", home=dvdexit_home,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert json.loads(sent.stdout)["sent"] == len(files) + 2

    done = run_dvdexit("verify", tmp_path / "study", "--json", home=dvdexit_home)
    human = run_dvdexit("verify", tmp_path / "study", home=dvdexit_home)

    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert (report["identical"], report["missing"]) == (len(files), 0)
    assert list(report["study_status"].values()) == ["complete"]
    # The generated SR copies are named, as sent from elsewhere and not judged here.
    assert report["elsewhere"] == 2
    assert {f["sop_instance_uid"] for f in report["elsewhere_files"]}.isdisjoint(
        pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files
    )
    assert human.returncode == 0, human.stdout + human.stderr
    assert "2 instance(s) of these studies were sent or stored from elsewhere" in human.stdout


def test_an_instance_lost_from_a_source_folder_is_still_missing(
    tmp_path: Path, dvdexit_home: Path, storescp
) -> None:
    files = write_study(tmp_path / "study", n_instances=3, seed="verify-generated-lost")
    pacs = storescp(tmp_path / "pacs")
    run_dvdexit(
        "peers", "add", "pacs", "--dimse", f"{LOOPBACK}:{pacs.port}", "--ae", pacs.ae,
        home=dvdexit_home,
    )  # fmt: skip
    sent = run_dvdexit(
        "send", tmp_path / "study", "--to", "pacs", "--note", "n", "--note-as-sr",
        home=dvdexit_home,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stdout + sent.stderr
    files[0].unlink()

    done = run_dvdexit("verify", tmp_path / "study", "--json", home=dvdexit_home)

    assert done.returncode == 7
    report = json.loads(done.stdout)
    assert (report["identical"], report["missing"], report["elsewhere"]) == (2, 1, 1)
