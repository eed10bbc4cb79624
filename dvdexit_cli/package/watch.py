"""Pick up transfer packages from a drop folder: verify, import into the receive store, file.

Library only for now (the ``dvdexit receive --watch DIR`` option is not wired into the
CLI yet). Each package that appears in the drop folder (a folder, .zip or .iso; hidden
names such as a writer's ``.NAME.partial-XXXX`` are left alone) is verified first. An
intact package has every instance stored in the receive store (durably, with the
store's duplicate and conflict rules) and recorded in the journal as received, then is
moved to ``done/``. A package that is not intact, or whose import failed, is moved to
``rejected/`` with ``NAME.reason.txt`` beside it saying why; nothing of a package that is
not intact is stored.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dvdexit_cli.dicom.scan import scan
from dvdexit_cli.journal import Journal
from dvdexit_cli.package.verify import is_package, verify_package
from dvdexit_cli.receive.store import InstanceStore, RefusedInstance, StoreWriteError

__all__ = ["DropResult", "process_drop_folder"]

DONE = "done"
REJECTED = "rejected"
CALLING_AE = "PACKAGE"  # what the journal shows as the sender of an imported package


@dataclass
class DropResult:
    """What one pass over the drop folder did, package by package."""

    done: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    """(package name, reason)."""
    stored: int = 0
    duplicates: int = 0
    conflicts: int = 0


def _move(path: Path, folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    target = folder / path.name
    if target.exists():  # a package of the same name was filed before: keep both
        target = folder / f"{path.name}.{secrets.token_hex(3)}"
    os.rename(path, target)
    return target


def _import(
    package: Path, store: InstanceStore, journal: Journal, result: DropResult, unpack: Path
) -> str | None:
    """Store every instance of an intact package; return why it failed, or None."""
    found = scan([package], unpack_dir=unpack)
    failed = [r for r in found.rejected if r.disposition == "failed"]
    if failed:
        return f"{failed[0].path}: {failed[0].reason}"
    for inst in found.instances:
        try:
            put = store.put(
                inst.path,
                sop_class_uid=inst.sop_class_uid,
                sop_instance_uid=inst.sop_instance_uid,
                transfer_syntax=inst.transfer_syntax,
                calling_ae=CALLING_AE,
            )
        except (RefusedInstance, StoreWriteError) as exc:
            return f"{inst.path.name}: {exc}"
        journal.record_received(
            calling_ae=CALLING_AE,
            peer_address=str(package),
            sop_class_uid=inst.sop_class_uid,
            sop_instance_uid=inst.sop_instance_uid,
            study_uid=put.study_uid,
            series_uid=put.series_uid,
            transfer_syntax=inst.transfer_syntax,
            size=put.size,
            digest=put.digest,
            path=str(put.path),
            outcome=put.outcome,
            status=0,
            reason=None,
        )
        result.stored += put.outcome == "stored"
        result.duplicates += put.outcome == "duplicate"
        result.conflicts += put.outcome == "conflict"
    return None


def process_drop_folder(
    drop: Path,
    *,
    store: InstanceStore,
    journal: Journal,
    on_package: Callable[[str, str, str | None], None] | None = None,
) -> DropResult:
    """One pass over ``drop``: import intact packages, file each under done/ or rejected/.

    ``on_package(name, "done" | "rejected", reason)`` is called for each package filed.
    """
    result = DropResult()
    for path in sorted(drop.iterdir()):
        if path.name.startswith(".") or path.name in (DONE, REJECTED) or not is_package(path):
            continue
        check = verify_package(path)
        reason: str | None
        if check.verdict != "intact":
            _kind, name, why = check.problems[0]
            reason = f"{check.verdict}: {name}: {why}" + (
                f" (and {len(check.problems) - 1} more problem(s))"
                if len(check.problems) > 1
                else ""
            )
        else:
            with tempfile.TemporaryDirectory(prefix="dvdexit-drop-") as tmp:
                reason = _import(path, store, journal, result, Path(tmp))
        if reason is None:
            _move(path, drop / DONE)
            result.done.append(path.name)
        else:
            filed = _move(path, drop / REJECTED)
            (drop / REJECTED / f"{filed.name}.reason.txt").write_text(reason + "\n")
            result.rejected.append((path.name, reason))
        if on_package is not None:
            on_package(path.name, REJECTED if reason else DONE, reason)
    return result
