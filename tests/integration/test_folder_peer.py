"""A drop folder as a peer: each send becomes one verifiable package, or nothing."""

from __future__ import annotations

from pathlib import Path

import pydicom
from peers import run_dvdexit

from dvdexit_cli.config import FolderPeer
from dvdexit_cli.dicom.scan import scan
from dvdexit_cli.engine import SendSettings, send
from dvdexit_cli.exitcodes import ExitCode
from dvdexit_cli.journal import Journal
from dvdexit_cli.package import verify_package
from dvdexit_cli.samples import make_sample_dvd, write_study
from dvdexit_cli.transport.folder import FolderTransport


def test_a_send_to_a_folder_writes_one_intact_package(tmp_path: Path) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=3, sc_images=1)
    drop = tmp_path / "drop"
    drop.mkdir()
    transport = FolderTransport(FolderPeer(name="drop", path=str(drop)), note="for dr. demo")

    with Journal(tmp_path / "journal.sqlite") as journal:
        result = send(
            SendSettings(inputs=(media.root,), peer_name="drop", peer_address=str(drop)),
            journal=journal,
            transport=transport,
        )

    assert result.exit_code == ExitCode.OK
    assert result.sent == media.instance_count
    (package,) = list(drop.iterdir())
    check = verify_package(package)
    assert check.verdict == "intact"
    assert check.manifest is not None and check.manifest.note == "for dr. demo"
    packaged = {i.sop_instance_uid for i in scan([package]).instances}
    assert packaged == set(media.path_by_sop_uid)


def test_a_missing_folder_is_unreachable_and_nothing_counts_as_sent(tmp_path: Path) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=2, sc_images=1)
    transport = FolderTransport(FolderPeer(name="drop", path=str(tmp_path / "not-mounted")))

    with Journal(tmp_path / "journal.sqlite") as journal:
        result = send(
            SendSettings(inputs=(media.root,), peer_name="drop", peer_address="x", retries=0),
            journal=journal,
            transport=transport,
        )

    assert result.exit_code == ExitCode.PEER_UNREACHABLE
    assert result.sent == 0
    assert not (tmp_path / "not-mounted").exists()


def test_an_instance_the_dicomdir_cannot_index_fails_alone_for_good_and_names_why(
    tmp_path: Path,
) -> None:
    paths = write_study(tmp_path / "study", n_instances=3, seed="folder-no-patient-id")
    ds = pydicom.dcmread(paths[2])
    del ds.PatientID
    ds.save_as(paths[2], enforce_file_format=True)
    drop = tmp_path / "drop"
    drop.mkdir()
    transport = FolderTransport(FolderPeer(name="drop", path=str(drop)))

    with Journal(tmp_path / "journal.sqlite") as journal:
        result = send(
            SendSettings(inputs=(tmp_path / "study",), peer_name="drop", peer_address="x"),
            journal=journal,
            transport=transport,
        )

        items = {i.sop_instance_uid: i for i in journal.items(result.transfer_id)}

    assert result.exit_code == ExitCode.PARTIAL_FAILURE
    assert result.sent == 2 and result.failed == 1
    bad = items[str(ds.SOPInstanceUID)]
    assert bad.state == "failed" and not bad.retryable  # the nightly replay leaves it
    assert "Patient ID" in (bad.reason or "") and paths[2].name in (bad.reason or "")
    (package,) = list(drop.iterdir())
    check = verify_package(package)
    assert check.verdict == "intact"
    packaged = {i.sop_instance_uid for i in scan([package]).instances}
    assert packaged == set(items) - {str(ds.SOPInstanceUID)}


def test_a_replay_to_a_folder_keeps_each_sends_note_in_its_own_package(
    tmp_path: Path, dvdexit_home: Path
) -> None:
    drop = tmp_path / "not-mounted-yet"
    first = make_sample_dvd(tmp_path / "dvd1", ct_slices=2, sc_images=1, seed="note-a")
    second = make_sample_dvd(tmp_path / "dvd2", ct_slices=1, sc_images=1, seed="note-b")
    added = run_dvdexit("peers", "add", "drop", "--folder", str(drop), home=dvdexit_home)
    assert added.returncode == 0, added.stderr
    for media, words in ((first, "A"), (second, "B")):
        sent = run_dvdexit(
            "send", media.root, "--to", "drop", "--retries", "0",
            "--note", f"note {words}", "--reason", f"reason {words}",
            "--recipient", f"dr. {words}", home=dvdexit_home,
        )  # fmt: skip
        assert sent.returncode == ExitCode.PEER_UNREACHABLE, sent.stderr

    drop.mkdir()
    replay = run_dvdexit("send", "--retry-failed", "--json", home=dvdexit_home)

    assert replay.returncode == 0, replay.stderr
    checks = [verify_package(p) for p in drop.iterdir()]
    assert [c.verdict for c in checks] == ["intact", "intact"]
    by_note = {
        (c.manifest.note, c.manifest.reason, c.manifest.recipient): c
        for c in checks
        if c.manifest is not None
    }
    assert set(by_note) == {
        ("note A", "reason A", "dr. A"),
        ("note B", "reason B", "dr. B"),
    }
    for media, words in ((first, "A"), (second, "B")):
        package = by_note[(f"note {words}", f"reason {words}", f"dr. {words}")]
        packaged = {i.sop_instance_uid for i in scan([package.path]).instances}
        assert packaged == set(media.path_by_sop_uid)
