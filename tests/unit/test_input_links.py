"""Links and special files among the inputs: followed inside what the user named, never beyond.

A study is sometimes assembled from links to series kept elsewhere; a drop folder may hold
a link that points at a file its owner could not read, or a FIFO that nobody writes.
The rule (docs/sending.md, "Which files are read"): a link whose target lies inside the
paths given to the command is followed; any other link is not read and fails the send
with its reason (part of a study may be missing); a FIFO, socket or device is never
opened and is skipped with its reason; nothing is left out without a word.
"""

from __future__ import annotations

import io
import os
import socket
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
from media_builders import medium
from pycdlib.pycdlib import PyCdlib

from dvdexit_cli.dicom.scan import Rejected, scan
from dvdexit_cli.samples import write_study


def _by_path(rejected: list[Rejected], path: Path | str) -> Rejected:
    matches = [r for r in rejected if str(r.path) == str(path)]
    assert len(matches) == 1, [(str(r.path), r.reason) for r in rejected]
    return matches[0]


def test_a_study_assembled_from_linked_series_kept_elsewhere_fails_for_each_link_it_cannot_read(
    tmp_path: Path,
) -> None:
    archive = tmp_path / "archive"
    ct = write_study(archive / "ct", n_instances=2, seed="linked", modality="CT")
    write_study(archive / "sc", n_instances=1, seed="linked-sc", modality="OT")
    study = tmp_path / "study"
    write_study(study / "sc", n_instances=1, seed="linked-own", modality="OT")
    (study / "ct").symlink_to(archive / "ct", target_is_directory=True)
    (study / "extra.dcm").symlink_to(ct[0])

    result = scan([study])

    assert [i.path.parent.name for i in result.instances] == ["sc"]
    for name in ("ct", "extra.dcm"):
        refused = _by_path(result.rejected, study / name)
        assert refused.disposition == "failed"
        assert "outside the inputs" in refused.reason
        assert "as an input" in refused.reason


def test_links_whose_target_is_among_the_inputs_are_followed_and_read_once(
    tmp_path: Path,
) -> None:
    archive = tmp_path / "archive"
    ct = write_study(archive / "ct", n_instances=3, seed="inside", modality="CT")
    study = tmp_path / "study"
    study.mkdir()
    (study / "ct").symlink_to(archive / "ct", target_is_directory=True)
    (study / "first.dcm").symlink_to(ct[0])

    result = scan([study, archive / "ct"])

    assert sorted(i.path.resolve() for i in result.instances) == sorted(ct)
    assert result.rejected == []


def test_a_link_inside_the_input_folder_is_followed(tmp_path: Path) -> None:
    study = tmp_path / "study"
    files = write_study(study / "series" / "ct", n_instances=2, seed="in-folder")
    (study / "again").symlink_to(study / "series", target_is_directory=True)
    (study / "one.dcm").symlink_to(files[0])

    result = scan([study])

    assert sorted(i.path.resolve() for i in result.instances) == sorted(files)
    assert all(r.disposition == "skipped" for r in result.rejected)


def test_a_link_to_an_ancestor_folder_ends_instead_of_looping(tmp_path: Path) -> None:
    study = tmp_path / "study"
    files = write_study(study / "ct", n_instances=2, seed="loop")
    (study / "ct" / "up").symlink_to(study, target_is_directory=True)
    (study / "ct" / "me").symlink_to(study / "ct", target_is_directory=True)

    result = scan([study])

    assert sorted(i.path.resolve() for i in result.instances) == sorted(files)
    for name in ("up", "me"):
        loop = _by_path(result.rejected, study / "ct" / name)
        assert loop.disposition == "skipped"
        assert "already read" in loop.reason


def test_a_dangling_link_and_a_link_loop_fail_with_their_reason(tmp_path: Path) -> None:
    study = tmp_path / "study"
    write_study(study, n_instances=1, seed="dangling")
    (study / "gone.dcm").symlink_to(tmp_path / "nowhere.dcm")
    (study / "a").symlink_to(study / "b")
    (study / "b").symlink_to(study / "a")

    result = scan([study])

    assert len(result.instances) == 1
    for name in ("gone.dcm", "a", "b"):
        broken = _by_path(result.rejected, study / name)
        assert broken.disposition == "failed"
        assert "does not exist or loops" in broken.reason


def test_a_path_given_on_the_command_line_that_is_a_link_is_followed(tmp_path: Path) -> None:
    files = write_study(tmp_path / "real", n_instances=2, seed="cli-link")
    (tmp_path / "named").symlink_to(tmp_path / "real", target_is_directory=True)
    (tmp_path / "one.dcm").symlink_to(files[0])

    assert len(scan([tmp_path / "named"]).instances) == 2
    assert len(scan([tmp_path / "one.dcm"]).instances) == 1


def test_a_dicomdir_file_id_that_is_a_link_out_of_the_inputs_fails_and_one_inside_is_read(
    tmp_path: Path,
) -> None:
    media = medium(tmp_path / "dvd")
    ds = pydicom.dcmread(media / "DICOMDIR")
    ids = [r.ReferencedFileID for r in ds.DirectoryRecordSequence if "ReferencedFileID" in r]
    inside = media.joinpath(*ids[0])
    outside = media.joinpath(*ids[1])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "kept").write_bytes(inside.read_bytes())
    inside.rename(media / "moved")
    inside.symlink_to(media / "moved")
    (elsewhere / "other").write_bytes(outside.read_bytes())
    outside.unlink()
    outside.symlink_to(elsewhere / "other")

    result = scan([media])

    assert len(result.instances) == len(ids) - 1
    refused = _by_path(result.rejected, outside)
    assert refused.disposition == "failed"
    assert "outside the inputs" in refused.reason


@contextmanager
def _unblocking(fifo: Path) -> Iterator[None]:
    """Open and close the FIFO's write end whenever a reader waits on it.

    A scan that opens the FIFO would otherwise wait forever; with this it reads an
    empty file, so the test fails on its assertions instead of hanging the suite.
    """
    done = threading.Event()

    def release() -> None:
        while not done.wait(0.05):
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                continue  # nobody reading: nothing to release

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def test_fifo_socket_and_device_in_a_folder_are_skipped_unopened(tmp_path: Path) -> None:
    study = tmp_path / "study"
    files = write_study(study, n_instances=2, seed="fifo")
    os.mkfifo(study / "pipe")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(study / "sock"))
    (study / "zero").symlink_to("/dev/zero")
    try:
        with _unblocking(study / "pipe"):
            result = scan([study, study / "pipe", Path("/dev/null")])
    finally:
        listener.close()

    assert sorted(i.path for i in result.instances) == sorted(files)
    reasons = {str(r.path): (r.disposition, r.reason) for r in result.rejected}
    assert reasons == {
        str(study / "pipe"): ("skipped", "not a regular file (a FIFO); not read"),
        str(study / "sock"): ("skipped", "not a regular file (a socket); not read"),
        # A link out of the inputs is not even looked at.
        str(study / "zero"): ("failed", reasons[str(study / "zero")][1]),
        "/dev/null": ("skipped", "not a regular file (a character device); not read"),
    }
    assert "outside the inputs" in reasons[str(study / "zero")][1]


def _zip_link(zf: zipfile.ZipFile, name: str, target: str) -> None:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = 0o120777 << 16
    zf.writestr(info, target)


def test_zip_links_inside_the_archive_are_followed_and_those_leaving_it_fail(
    tmp_path: Path,
) -> None:
    files = write_study(tmp_path / "study", n_instances=2, seed="zip-links")
    archive = tmp_path / "links.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(files[0], "A/IM1")
        zf.write(files[1], "B/IM2")
        _zip_link(zf, "A/SERIES", "../B")
        _zip_link(zf, "A/LINK1", "IM1")
        _zip_link(zf, "PASSWD", "/etc/passwd")
        _zip_link(zf, "UP", "../../outside")

    result = scan([archive], unpack_dir=tmp_path / "unpacked")

    assert sorted(i.sop_instance_uid for i in result.instances) == sorted(
        pydicom.dcmread(f).SOPInstanceUID for f in files
    )
    failed = {str(r.path): r.reason for r in result.rejected if r.disposition == "failed"}
    assert set(failed) == {f"{archive}!/PASSWD", f"{archive}!/UP"}
    assert all("outside the archive" in reason for reason in failed.values())
    unpacked = next((tmp_path / "unpacked").iterdir())
    assert not (unpacked / "PASSWD").exists() and not (unpacked / "PASSWD").is_symlink()
    for path in unpacked.rglob("*"):
        assert path.resolve().is_relative_to(unpacked.resolve())


def test_iso_rock_ridge_links_inside_the_image_are_followed_and_those_leaving_it_fail(
    tmp_path: Path,
) -> None:
    files = write_study(tmp_path / "study", n_instances=2, seed="iso-links")
    image = tmp_path / "links.iso"
    iso = PyCdlib()
    iso.new(interchange_level=3, rock_ridge="1.09")
    iso.add_directory("/A", rr_name="a")
    iso.add_directory("/B", rr_name="b")
    for folder, f in (("A", files[0]), ("B", files[1])):
        data = f.read_bytes()
        iso.add_fp(io.BytesIO(data), len(data), f"/{folder}/IM.;1", rr_name="im.dcm")
    iso.add_symlink("/A/S.;1", "series", "../b")
    iso.add_symlink("/O.;1", "out.dcm", "/etc/passwd")
    iso.write(str(image))
    iso.close()

    result = scan([image], unpack_dir=tmp_path / "unpacked")

    assert len(result.instances) == 2
    failed = [r for r in result.rejected if r.disposition == "failed"]
    assert [str(r.path) for r in failed] == [f"{image}!/out.dcm"]
    assert "outside the archive" in failed[0].reason


def test_an_archive_with_links_unpacked_a_second_time_gives_the_same_result(
    tmp_path: Path,
) -> None:
    files = write_study(tmp_path / "study", n_instances=1, seed="zip-again")
    archive = tmp_path / "again.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(files[0], "A/IM1")
        _zip_link(zf, "LINKED", "A")

    first = scan([archive], unpack_dir=tmp_path / "unpacked")
    second = scan([archive], unpack_dir=tmp_path / "unpacked")

    assert len(first.instances) == len(second.instances) == 1
    assert first.rejected == second.rejected == []


def test_a_dicomdir_file_id_reached_through_a_linked_folder_outside_the_inputs_fails(
    tmp_path: Path,
) -> None:
    media = medium(tmp_path / "dvd")
    ds = pydicom.dcmread(media / "DICOMDIR")
    ids = [r.ReferencedFileID for r in ds.DirectoryRecordSequence if "ReferencedFileID" in r]
    series = media.joinpath(*ids[0][:-1])
    moved = tmp_path / "elsewhere"
    series.rename(moved)
    series.symlink_to(moved, target_is_directory=True)
    in_series = [i for i in ids if media.joinpath(*i[:-1]) == series]

    result = scan([media])

    assert len(result.instances) == len(ids) - len(in_series)
    failed = [r for r in result.rejected if r.disposition == "failed"]
    assert sorted(str(r.path) for r in failed) == sorted(str(media.joinpath(*i)) for i in in_series)
    assert all("outside the inputs" in r.reason for r in failed)


def test_links_a_medium_s_dicomdir_does_not_name_are_skipped_like_its_other_extras(
    tmp_path: Path,
) -> None:
    media = medium(tmp_path / "dvd")
    (media / "VIEWER").mkdir()
    (media / "VIEWER" / "libview.so").symlink_to("/usr/lib/nothing-here.so")
    (media / "VIEWER" / "help").symlink_to(tmp_path, target_is_directory=True)

    result = scan([media])

    assert {r.path.name: r.disposition for r in result.rejected} == {
        "libview.so": "skipped",
        "help": "skipped",
    }
    assert all("not named by the medium's DICOMDIR" in r.reason for r in result.rejected)
