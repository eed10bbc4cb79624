"""Sending a package onward: every instance is checked against the package's manifest first.

A package among the inputs (a folder, or a zip the scan unpacked) is scanned like any
DVD medium; before anything is sent, each instance found in it is compared with its
manifest entry. A file whose dataset digest differs (tampered, or damaged in transit),
a file the manifest does not list, and a listed file that is missing are refused as
failed items with the reason, so the send exits 6 and names each of them; the rest of
the package is sent. A manifest that does not match its own digest cannot vouch for
anything: every instance of that package is refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dvdexit_cli.dicom.scan import Instance, Rejected, ScanResult
from dvdexit_cli.package.manifest import MANIFEST_DIGEST_NAME, MANIFEST_NAME, Manifest
from dvdexit_cli.package.verify import is_package

__all__ = ["screen_packages"]

TAMPERED = "refused: its dataset digest differs from the package manifest (tampered or damaged)"
UNLISTED = "refused: the package manifest does not list this file"
MISSING = "listed in the package manifest, but not in the package"


@dataclass(frozen=True)
class _Package:
    root: Path
    expected: dict[Path, tuple[str, str]]  # resolved path -> (SOP Instance UID, digest)
    broken: str | None  # why the manifest itself cannot be trusted


def _load(root: Path) -> _Package:
    try:
        data = (root / MANIFEST_NAME).read_bytes()
        recorded = (root / MANIFEST_DIGEST_NAME).read_bytes()
    except OSError as exc:
        return _Package(root, {}, f"package manifest unreadable: {exc.strerror or exc}")
    if recorded != Manifest.digest_line(data):
        return _Package(root, {}, "refused: the package manifest does not match its digest")
    try:
        manifest = Manifest.from_bytes(data)
    except ValueError as exc:
        return _Package(root, {}, f"refused: {exc}")
    expected = {
        root.joinpath(*e.file_id.split("/")).resolve(): (e.sop_instance_uid, e.digest)
        for e in manifest.entries
    }
    return _Package(root, expected, None)


def screen_packages(found: ScanResult, inputs: Iterable[Path]) -> ScanResult:
    """Refuse the instances of packages among the inputs that their manifest does not vouch for.

    Inputs that are not packages pass unchanged; the scan's order is kept.
    """
    roots = [p for p in inputs if p.is_dir() and is_package(p)]
    roots += [u for u in found.unpacked if is_package(u)]
    if not roots:
        return found
    packages = [_load(root.resolve()) for root in roots]
    kept: list[Instance] = []
    names = (MANIFEST_NAME, MANIFEST_DIGEST_NAME)
    own = {p.root / name for p in packages for name in names}
    # A package's manifest files are its own, not stray files of the medium. (A refusal
    # inside an archive is shown as ARCHIVE!/MEMBER; a root manifest there is a package's.)
    own_shown = tuple(f"!/{name}" for name in names)
    rejected = [
        r
        for r in found.rejected
        if not (
            r.disposition == "skipped"
            and (r.path.resolve() in own or str(r.path).endswith(own_shown))
        )
    ]
    seen: set[Path] = set()
    for inst in found.instances:
        path = inst.path.resolve()
        package = next((p for p in packages if path.is_relative_to(p.root)), None)
        if package is None:
            kept.append(inst)
            continue
        seen.add(path)
        listed = package.expected.get(path)
        if package.broken is not None:
            reason = package.broken
        elif listed is None:
            reason = UNLISTED
        elif listed != (inst.sop_instance_uid, inst.digest):
            reason = TAMPERED
        else:
            kept.append(inst)
            continue
        rejected.append(Rejected(inst.path, reason, "failed", inst.sop_instance_uid))
    seen.update(r.path.resolve() for r in found.rejected)
    for package in packages:
        for path, (uid, _) in package.expected.items():
            if path not in seen:
                rejected.append(Rejected(path, MISSING, "failed", uid))
    return ScanResult(instances=kept, rejected=rejected, unpacked=found.unpacked)
