"""A package travels on: by folder or zip, verified, and sent onward to a real PACS (DCMTK)."""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pydicom
from peers import LOOPBACK, require_tool, run_dvdexit
from pydicom.fileset import FileSet

from dvdexit_cli.dicom.digest import dataset_digest
from dvdexit_cli.package import MANIFEST_NAME
from dvdexit_cli.samples import make_sample_dvd


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # pixel data: the file still parses, only its digest changes
    path.write_bytes(bytes(data))


def _add_peers(home: Path, drop: Path, scp: object) -> None:
    for args in (
        ("peers", "add", "drop", "--folder", drop),
        ("peers", "add", "scp", "--dimse", f"{LOOPBACK}:{scp.port}", "--ae", scp.ae),  # type: ignore[attr-defined]
    ):
        added = run_dvdexit(*args, home=home)
        assert added.returncode == 0, added.stderr


def _stored_uids(outdir: Path) -> dict[str, str]:
    """SOP Instance UID -> dataset digest of every file storescp wrote."""
    found = {}
    for path in outdir.rglob("*"):
        if path.is_file():
            uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            found[uid] = dataset_digest(path)[1]
    return found


def test_a_tampered_instance_is_named_by_verify_and_refused_when_sent_onward(
    tmp_path: Path, dvdexit_home: Path, storescp: object
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=4, sc_images=2)
    drop = tmp_path / "drop"
    drop.mkdir()
    scp = storescp(tmp_path / "pacs")  # type: ignore[operator]
    _add_peers(dvdexit_home, drop, scp)
    packaged = run_dvdexit(
        "send", media.root, "--to", "drop", "--note", "prior imaging", "--reason", "referral",
        "--recipient", "Dr. Demo", home=dvdexit_home,
    )  # fmt: skip
    assert packaged.returncode == 0, packaged.stderr
    (package,) = list(drop.iterdir())
    manifest = json.loads((package / MANIFEST_NAME).read_text())
    assert (manifest["note"], manifest["reason"], manifest["recipient"]) == (
        "prior imaging",
        "referral",
        "Dr. Demo",
    )
    victim = manifest["studies"][0]["instances"][1]
    _flip_last_byte(package / victim["file_id"])

    checked = run_dvdexit("verify", package, "--json", home=dvdexit_home)
    onward = run_dvdexit("send", package, "--to", "scp", "--json", home=dvdexit_home)

    assert checked.returncode == 7
    (verdict,) = json.loads(checked.stdout)["packages"]
    assert verdict["verdict"] == "tampered"
    problems = verdict["problems"]
    assert [(p["kind"], p["file"]) for p in problems] == [("tampered", victim["file_id"])]
    assert onward.returncode == 6, onward.stderr
    result = json.loads(onward.stdout)
    assert result["sent"] == media.instance_count - 1
    assert result["skipped_files"] == []  # the manifest files are the package's own
    (failure,) = result["failures"]
    assert failure["sop_instance_uid"] == victim["sop_instance_uid"]
    assert "differs from the package manifest" in failure["reason"]
    stored = _stored_uids(scp.outdir)  # type: ignore[attr-defined]
    assert set(stored) == set(media.path_by_sop_uid) - {victim["sop_instance_uid"]}


def test_a_zip_package_reads_as_a_dvd_and_is_delivered_whole_to_storescp(
    tmp_path: Path, dvdexit_home: Path, storescp: object
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=4, sc_images=2)
    drop = tmp_path / "drop"
    drop.mkdir()
    scp = storescp(tmp_path / "pacs")  # type: ignore[operator]
    _add_peers(dvdexit_home, drop, scp)

    zipped = run_dvdexit("send", media.root, "--to", "drop", "--zip", home=dvdexit_home)
    wrong = run_dvdexit("send", media.root, "--to", "scp", "--zip", home=dvdexit_home)

    assert zipped.returncode == 0, zipped.stderr
    (package,) = list(drop.iterdir())
    assert package.suffix == ".zip" and zipfile.is_zipfile(package)
    assert run_dvdexit("verify", package, home=dvdexit_home).returncode == 0
    assert wrong.returncode == 2 and "folder peers" in wrong.stderr
    assert _stored_uids(scp.outdir) == {}  # type: ignore[attr-defined]

    # Any DVD reader reads the media tree: pydicom's FileSet, and DCMTK's tools.
    tree = tmp_path / "unzipped"
    with zipfile.ZipFile(package) as zf:
        zf.extractall(tree)
    fs = FileSet(pydicom.dcmread(tree / "DICOMDIR"))
    assert {str(i.SOPInstanceUID) for i in fs} == set(media.path_by_sop_uid)
    dumped = subprocess.run(
        [require_tool("dcmdump"), "DICOMDIR"], cwd=tree, capture_output=True, text=True
    )
    assert dumped.returncode == 0 and "E:" not in dumped.stderr, dumped.stderr
    first = Path(next(iter(fs)).path).relative_to(tree.resolve()).as_posix()
    copy = tmp_path / "dcmgpdir"
    shutil.copytree(tree, copy)
    appended = subprocess.run(
        [require_tool("dcmgpdir"), "+A", "-nb", "+D", "DICOMDIR", first],
        cwd=copy,
        capture_output=True,
        text=True,
    )
    assert appended.returncode == 0, appended.stderr
    assert not [line for line in appended.stderr.splitlines() if line[:2] in ("E:", "F:")]

    onward = run_dvdexit("send", package, "--to", "scp", "--json", home=dvdexit_home)

    assert onward.returncode == 0, onward.stderr
    assert json.loads(onward.stdout)["skipped_files"] == []
    stored = _stored_uids(scp.outdir)  # type: ignore[attr-defined]
    assert stored == {uid: dataset_digest(p)[1] for uid, p in media.path_by_sop_uid.items()}


def test_a_dvd_image_package_verifies_indexes_its_files_by_iso9660_names_and_goes_onward(
    tmp_path: Path, dvdexit_home: Path, storescp: object
) -> None:
    from pycdlib.pycdlib import PyCdlib

    media = make_sample_dvd(tmp_path / "dvd", ct_slices=3, sc_images=1)
    drop = tmp_path / "drop"
    drop.mkdir()
    scp = storescp(tmp_path / "pacs")  # type: ignore[operator]
    _add_peers(dvdexit_home, drop, scp)

    burned = run_dvdexit("send", media.root, "--to", "drop", "--iso", home=dvdexit_home)
    both = run_dvdexit("send", media.root, "--to", "drop", "--iso", "--zip", home=dvdexit_home)

    assert burned.returncode == 0, burned.stderr
    assert both.returncode == 2
    (image,) = list(drop.iterdir())
    assert image.suffix == ".iso"
    assert run_dvdexit("verify", image, home=dvdexit_home).returncode == 0
    # A viewer on a plain ISO 9660 reader finds every file the DICOMDIR names.
    iso = PyCdlib()
    iso.open(str(image))
    try:
        facade = iso.get_iso9660_facade()
        plain = {
            f"{d.rstrip('/')}/{name.split(';')[0].rstrip('.')}"
            for d, _, files in facade.walk("/")
            for name in files
        }
        dicomdir = tmp_path / "DICOMDIR"
        with dicomdir.open("wb") as out:
            facade.get_file_from_iso_fp(out, "/DICOMDIR.;1")
    finally:
        iso.close()
    records = pydicom.dcmread(dicomdir).DirectoryRecordSequence
    file_ids = {"/" + "/".join(r.ReferencedFileID) for r in records if "ReferencedFileID" in r}
    assert len(file_ids) == media.instance_count
    assert file_ids <= plain

    onward = run_dvdexit("send", image, "--to", "scp", "--json", home=dvdexit_home)

    assert onward.returncode == 0, onward.stderr
    assert json.loads(onward.stdout)["skipped_files"] == []
    stored = _stored_uids(scp.outdir)  # type: ignore[attr-defined]
    assert stored == {uid: dataset_digest(p)[1] for uid, p in media.path_by_sop_uid.items()}
