"""Write a transfer package atomically: build beside the target, fsync, rename.

The media tree (DICOMDIR, file IDs of at most 8 uppercase characters, a folder per
patient, study and series) is planned from header-only reads by ``package.dicomdir``, in
time linear in the instances; every file is a byte copy of its source, so every instance
keeps its bytes (and digest) and no pixel data is ever decoded.
"""

from __future__ import annotations

import os
import secrets
import shutil
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pycdlib.pycdlib import PyCdlib
from pycdlib.pycdlibexception import PyCdlibException

from dvdexit_cli.dicom.digest import dataset_digest
from dvdexit_cli.dicom.scan import Instance
from dvdexit_cli.fsmode import PRIVATE, Access
from dvdexit_cli.package.dicomdir import DicomdirError, plan_media, write_dicomdir
from dvdexit_cli.package.manifest import (
    MANIFEST_DIGEST_NAME,
    MANIFEST_NAME,
    Manifest,
    ManifestEntry,
)

__all__ = ["PackageWriteError", "PackageWritten", "write_package"]


class PackageWriteError(Exception):
    """The package could not be written; nothing exists at the target name."""

    def __init__(self, message: str, unindexable: Path | None = None) -> None:
        super().__init__(message)
        self.unindexable = unindexable
        """An input file no DICOMDIR can index: the input's fault, not the target's."""


@dataclass(frozen=True)
class PackageWritten:
    path: Path
    manifest: Manifest


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as fh:
                os.fsync(fh.fileno())
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _build_tree(instances: Sequence[Instance], root: Path, manifest: Manifest) -> None:
    if len({inst.sop_instance_uid for inst in instances}) != len(instances):
        raise PackageWriteError("two instances of the package share a SOP Instance UID")
    by_path = {inst.path: inst for inst in instances}
    try:
        plan = plan_media([inst.path for inst in instances])
    except DicomdirError as exc:
        raise PackageWriteError(str(exc), exc.source) from exc
    root.mkdir()
    made: set[Path] = set()
    for media_file in plan.files:
        inst = by_path[media_file.source]
        target = root / media_file.file_id
        if target.parent not in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        # A copy, never a re-encoding: the instance keeps its bytes and its digest.
        shutil.copyfile(inst.path, target)
        _, digest = dataset_digest(target)
        if digest != inst.digest:
            raise PackageWriteError(f"{inst.path} changed while the package was written")
        manifest.entries.append(
            ManifestEntry(
                study_uid=inst.study_uid,
                series_uid=inst.series_uid,
                sop_class_uid=inst.sop_class_uid,
                sop_instance_uid=inst.sop_instance_uid,
                file_id=media_file.file_id,
                size=target.stat().st_size,
                digest=digest,
            )
        )
    write_dicomdir(plan, root / "DICOMDIR")
    data = manifest.to_bytes()
    (root / MANIFEST_NAME).write_bytes(data)
    (root / MANIFEST_DIGEST_NAME).write_bytes(Manifest.digest_line(data))


def _iso9660_name(name: str) -> str:
    """A level-1 ISO 9660 name (8.3, upper case, version 1) for a media tree file name."""
    stem, _, ext = name.upper().partition(".")
    return f"{stem[:8]}.{ext[:3]};1"


def _write_iso(tree: Path, target: Path) -> None:
    """An ISO 9660 image of ``tree``: level-1 names (what PS3.12 media and the DICOMDIR's
    file IDs use), with Joliet and Rock Ridge names so ``MANIFEST.JSON`` keeps its name."""
    iso = PyCdlib()
    iso.new(interchange_level=1, joliet=3, rock_ridge="1.09", vol_ident="DVDEXIT")
    try:
        for path in sorted(tree.rglob("*")):
            parts = path.relative_to(tree).parts
            iso_path = "/" + "/".join(
                [*(p.upper() for p in parts[:-1]), parts[-1].upper() if path.is_dir() else ""]
            ).rstrip("/")
            joliet = "/" + "/".join(parts)
            if path.is_dir():
                iso.add_directory(iso_path, rr_name=parts[-1], joliet_path=joliet)
            else:
                iso_path = iso_path + "/" + _iso9660_name(parts[-1])
                iso.add_file(str(path), iso_path, rr_name=parts[-1], joliet_path=joliet)
        iso.write(str(target))
    except PyCdlibException as exc:
        raise PackageWriteError(f"cannot build the DVD image: {exc}") from exc
    finally:
        iso.close()


def write_package(
    instances: Sequence[Instance],
    target: Path,
    *,
    manifest: Manifest,
    as_zip: bool = False,
    as_iso: bool = False,
    access: Access = PRIVATE,
) -> PackageWritten:
    """Write ``instances`` as a package at ``target``: a folder, a .zip with ``as_zip``, or
    an ISO 9660 image (a DVD image, ready to burn) with ``as_iso``. Its files and folders
    get ``access``'s modes (owner-only by default).

    The package is built in a hidden folder beside the target and renamed into place only
    when complete and synced: a crash leaves no half package at the target name. Raises
    PackageWriteError when the target exists or the disk fails.
    """
    if target.exists():
        raise PackageWriteError(f"{target} already exists")
    work = target.parent / f".{target.name}.partial-{secrets.token_hex(4)}"
    try:
        PRIVATE.make_dir(work)  # nobody else sees the package before it is complete
        tree = work / "media"
        _build_tree(instances, tree, manifest)
        if as_zip:
            archive = work / "package.zip"
            with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
                for path in sorted(tree.rglob("*")):
                    if path.is_file():
                        zf.write(path, path.relative_to(tree).as_posix())
            final_source = archive
        elif as_iso:
            final_source = work / "package.iso"
            _write_iso(tree, final_source)
        else:
            final_source = tree
        access.restrict_tree(final_source)
        _fsync_tree(work)
        os.rename(final_source, target)
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise PackageWriteError(f"cannot write package {target}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return PackageWritten(target, manifest)
