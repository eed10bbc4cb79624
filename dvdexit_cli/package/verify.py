"""Check a package: its manifest, every instance's digest, and the DICOMDIR against both."""

from __future__ import annotations

import contextlib
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pydicom
from pycdlib.pycdlib import PyCdlib
from pycdlib.pycdlibexception import PyCdlibException

from dvdexit_cli.dicom.archives import archive_kind, unpack
from dvdexit_cli.dicom.digest import dataset_digest
from dvdexit_cli.package.manifest import MANIFEST_DIGEST_NAME, MANIFEST_NAME, Manifest

__all__ = ["PackageCheck", "is_package", "verify_package"]


@dataclass
class PackageCheck:
    """The verdict on a package: ``intact``, ``incomplete`` or ``tampered``."""

    path: Path
    manifest: Manifest | None = None
    problems: list[tuple[str, str, str]] = field(default_factory=list)
    """(kind, file ID or name, reason); kind is missing, tampered, extra or manifest."""
    checked: int = 0

    @property
    def verdict(self) -> str:
        kinds = {kind for kind, _, _ in self.problems}
        if kinds & {"tampered", "manifest", "extra"}:
            return "tampered"
        if "missing" in kinds:
            return "incomplete"
        return "intact"

    def to_json(self) -> dict[str, object]:
        return {
            "package": str(self.path),
            "verdict": self.verdict,
            "instances": len(self.manifest.entries) if self.manifest else None,
            "checked": self.checked,
            "problems": [
                {"kind": kind, "file": name, "reason": reason}
                for kind, name, reason in self.problems
            ],
        }


def _safe_member(root: Path, file_id: str) -> Path | None:
    parts = PurePosixPath(file_id).parts
    if not parts or any(p in ("..", "") for p in parts) or PurePosixPath(file_id).is_absolute():
        return None
    return root.joinpath(*parts)


def is_package(path: Path) -> bool:
    """True for a folder, zip or ISO image that holds a dvdexit manifest at its root."""
    if path.is_dir():
        return (path / MANIFEST_NAME).is_file()
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            return MANIFEST_NAME in zf.namelist()
    if path.is_file() and archive_kind(path) == "iso":
        return _iso_has_manifest(path)
    return False


def _iso_has_manifest(path: Path) -> bool:
    iso = PyCdlib()
    try:
        iso.open(str(path))
    except (PyCdlibException, OSError, ValueError):
        return False
    try:
        for kind in ("rr_path", "joliet_path"):
            try:
                iso.get_record(**{kind: "/" + MANIFEST_NAME})
                return True
            except (PyCdlibException, ValueError):
                continue
        return False
    finally:
        with contextlib.suppress(PyCdlibException):
            iso.close()


def verify_package(path: Path) -> PackageCheck:
    """Verify the package at ``path`` (a folder, a .zip file, or an ISO 9660 image)."""
    if path.is_file() and zipfile.is_zipfile(path):
        with tempfile.TemporaryDirectory(prefix="dvdexit-pkg-") as tmp:
            root = Path(tmp)
            with zipfile.ZipFile(path) as zf:
                for member in zf.infolist():
                    target = _safe_member(root, member.filename)
                    if target is None:
                        check = PackageCheck(path)
                        check.problems.append(("extra", member.filename, "unsafe member name"))
                        return check
                zf.extractall(root)
            check = _verify_tree(root)
            check.path = path
            return check
    if path.is_file() and archive_kind(path) == "iso":
        with tempfile.TemporaryDirectory(prefix="dvdexit-pkg-") as tmp:
            refused = unpack(path, "iso", Path(tmp))
            check = _verify_tree(Path(tmp))
            check.path = path
            check.problems.extend(("tampered", str(p.path), p.reason) for p in refused)
            return check
    return _verify_tree(path)


def _verify_tree(root: Path) -> PackageCheck:
    check = PackageCheck(root)
    try:
        data = (root / MANIFEST_NAME).read_bytes()
    except OSError:
        check.problems.append(("manifest", MANIFEST_NAME, "no manifest: not a dvdexit package"))
        return check
    try:
        recorded = (root / MANIFEST_DIGEST_NAME).read_bytes()
    except OSError:
        recorded = b""
    if recorded != Manifest.digest_line(data):
        check.problems.append(("manifest", MANIFEST_NAME, "manifest digest does not match"))
    try:
        manifest = Manifest.from_bytes(data)
    except ValueError as exc:
        check.problems.append(("manifest", MANIFEST_NAME, str(exc)))
        return check
    check.manifest = manifest
    listed = set()
    for entry in manifest.entries:
        target = _safe_member(root, entry.file_id)
        if target is None:
            check.problems.append(("manifest", entry.file_id, "file ID leaves the package"))
            continue
        listed.add(PurePosixPath(entry.file_id))
        if not target.is_file():
            check.problems.append(("missing", entry.file_id, "listed in the manifest, not present"))
            continue
        try:
            _, digest = dataset_digest(target)
        except (OSError, ValueError) as exc:
            check.problems.append(("tampered", entry.file_id, f"unreadable: {exc}"))
            continue
        check.checked += 1
        if digest != entry.digest:
            check.problems.append(("tampered", entry.file_id, "dataset digest differs"))
    _check_dicomdir(root, listed, check)
    return check


def _check_dicomdir(root: Path, listed: set[PurePosixPath], check: PackageCheck) -> None:
    try:
        dicomdir = pydicom.dcmread(root / "DICOMDIR")
        records = list(dicomdir.DirectoryRecordSequence)
    except Exception as exc:  # pydicom raises many kinds for a damaged DICOMDIR
        check.problems.append(("tampered", "DICOMDIR", f"unreadable: {exc}"))
        return
    indexed = set()
    for record in records:
        file_id = record.get("ReferencedFileID")
        if file_id is not None:
            parts = [file_id] if isinstance(file_id, str) else [str(p) for p in file_id]
            indexed.add(PurePosixPath(*parts))
    for extra in sorted(indexed - listed):
        check.problems.append(("extra", str(extra), "in the DICOMDIR, not in the manifest"))
    for absent in sorted(listed - indexed):
        check.problems.append(("tampered", str(absent), "in the manifest, not in the DICOMDIR"))
    on_disk = {
        PurePosixPath(p.relative_to(root).as_posix())
        for p in root.rglob("*")
        if p.is_file() and p.name not in ("DICOMDIR", MANIFEST_NAME, MANIFEST_DIGEST_NAME)
    }
    for extra in sorted(on_disk - listed - indexed):
        check.problems.append(("extra", str(extra), "a file neither manifest nor DICOMDIR lists"))
