"""More SOP class / transfer syntax pairs than one association may carry (128 contexts).

A hospital export can mix dozens of object types (images, SR, RT, waveforms, ...); DICOM
allows at most 128 presentation contexts per association, so dvdexit opens as many
associations as its plan needs, in order, and every instance still arrives.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from peers import LOOPBACK, run_dvdexit
from pydicom import dcmread
from pydicom._uid_dict import UID_dictionary

from dvdexit_cli.dicom.contexts import MAX_CONTEXTS
from dvdexit_cli.samples import write_study

# Storage SOP classes newer than DCMTK 3.6.7, which its storescp does not accept.
TOO_NEW_FOR_DCMTK = {
    "CT Defined Procedure Protocol Storage",
    "Confocal Microscopy Image Storage",
    "Confocal Microscopy Tiled Pyramidal Image Storage",
    "Enhanced Continuous RT Image Storage",
    "Enhanced RT Image Storage",
    "General 32-bit ECG Waveform Storage",
    "Inventory Storage",
    "Photoacoustic Image Storage",
    "Protocol Approval Storage",
    "RT Patient Position Acquisition Instruction Storage",
    "Variable Modality LUT Softcopy Presentation State Storage",
    "Waveform Annotation SR Storage",
    "XA Defined Procedure Protocol Storage",
}
# Current (not retired) storage SOP classes that DCMTK 3.6.7's storescp accepts.
STORAGE_CLASSES = sorted(
    uid
    for uid, (name, kind, _, retired, *_rest) in UID_dictionary.items()
    if kind == "SOP Class"
    and name.endswith("Storage")
    and not retired
    and name not in TOO_NEW_FOR_DCMTK
    and uid.startswith("1.2.840.10008.5.1.4.1.1.")
)


def write_one_per_class(folder: Path, classes: list[str]) -> list[Path]:
    """One small instance per SOP class (same pixels, other class): enough for storescp +B."""
    (template,) = write_study(folder / "template", n_instances=1, seed="contexts")
    files = []
    for n, sop_class in enumerate(classes):
        ds = dcmread(template)
        ds.SOPClassUID = sop_class
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        uid = f"2.25.{4242 * 10**6 + n}"
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        path = folder / "in" / f"X{n:03d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    template.unlink()
    return files


@pytest.mark.peer
def test_a_hundred_and_fifty_sop_classes_need_three_associations_and_all_arrive(
    storescp, dvdexit_home: Path, tmp_path: Path
):
    classes = STORAGE_CLASSES  # each: its own syntax + the implicit VR fallback
    assert len(classes) > 130
    files = write_one_per_class(tmp_path, classes)
    scp = storescp(tmp_path / "arrived")
    added = run_dvdexit(
        "peers", "add", "pacs", "--dimse", f"{LOOPBACK}:{scp.port}", "--ae", scp.ae,
        home=dvdexit_home,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr

    plan = run_dvdexit("send", tmp_path / "in", "--dry-run", "--json", home=dvdexit_home)
    sent = run_dvdexit("send", tmp_path / "in", "--to", "pacs", "--json", home=dvdexit_home)

    associations = json.loads(plan.stdout)["associations"]
    assert len(associations) == 3
    assert all(len(contexts) <= MAX_CONTEXTS for contexts in associations)
    assert sum(len(contexts) for contexts in associations) == 2 * len(classes)
    document = json.loads(sent.stdout)
    assert sent.returncode == 0, document["failures"][:3]
    assert document["sent"] == len(files) == len(classes)
    arrived = {str(dcmread(p, stop_before_pixels=True).SOPClassUID) for p in scp.stored_files()}
    assert arrived == set(classes)


# -- the same DVD as a folder, a zip file and an ISO image ----------------------------------


@pytest.mark.peer
def test_dicomdir_medium_as_folder_zip_and_iso_all_send_the_same_instances(
    storescp, dvdexit_home: Path, tmp_path: Path
):
    import zipfile

    from media_builders import build_iso, medium

    folder = medium(tmp_path / "medium")
    archive = tmp_path / "medium.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    image = tmp_path / "medium.iso"
    build_iso(folder, image)
    arrived: dict[str, set[str]] = {}
    for name, source in (("folder", folder), ("zip", archive), ("iso", image)):
        scp = storescp(tmp_path / f"arrived-{name}", ae=f"SCP{name.upper()}")
        added = run_dvdexit(
            "peers", "add", name, "--dimse", f"{LOOPBACK}:{scp.port}", "--ae", scp.ae,
            home=dvdexit_home,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr

        sent = run_dvdexit("send", source, "--to", name, "--json", home=dvdexit_home)

        document = json.loads(sent.stdout)
        assert sent.returncode == 0, (name, document["failures"][:3])
        assert document["sent"] == 31, name
        arrived[name] = {
            str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in scp.stored_files()
        }
    assert len(arrived["folder"]) == 31
    assert arrived["folder"] == arrived["zip"] == arrived["iso"]
    # A complete send leaves no unpacked copy behind.
    assert not any((dvdexit_home / "unpacked").glob("*"))
