"""Pick up transfer packages from a drop folder: verify, import into the receive store, file.

Used by ``dvdexit receive --watch DIR``. Each package that appears in the drop folder (a
folder, .zip or .iso holding a MANIFEST.JSON; hidden names such as a writer's
``.NAME.partial-XXXX`` are left alone) is taken only once it is complete: a zip or ISO
must be readable as one (a half-copied zip has no central directory yet), and nothing in
it may have changed for ``settle`` seconds (a package copied by ``cp -r`` or rsync gets
its manifest before its last file). It is verified first. An intact package has every
instance stored in the receive store (durably, with the store's duplicate and conflict
rules) and recorded in the journal as received, through the one ingest pipeline
(receive/ingest.py: statuses, the sender's note from a transfer-note SR, activity),
its studies completed (``completed_by``
``package``: hook, forward and audit as for a received study) with the manifest's note,
then is moved to ``done/``. A package that is not intact, or whose import failed, is
moved to ``rejected/`` with ``NAME.reason.txt`` beside it saying why; nothing of a
package that is not intact is stored. A package with an instance in conflict (its UID
stored with other content) or refused by the store goes to ``rejected/`` too, though its
other instances are stored: ``done/`` holds only packages that arrived whole. Studies
stored in part by a failed import are audited (not completed). A package is filed only
after its import and completion: after a crash it is still in the drop folder, and the
next pass imports it again (its stored instances as duplicates).
"""

from __future__ import annotations

import os
import secrets
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dvdexit_cli.dicom.reports import clean_note_text
from dvdexit_cli.dicom.scan import scan
from dvdexit_cli.fsmode import Access
from dvdexit_cli.journal import Journal
from dvdexit_cli.package.manifest import Manifest
from dvdexit_cli.package.verify import is_package, verify_package
from dvdexit_cli.receive.completeness import CompletenessTracker
from dvdexit_cli.receive.ingest import Ingest, Sender
from dvdexit_cli.receive.store import InstanceStore

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
    waiting: list[str] = field(default_factory=list)
    """Packages still changing (younger than ``settle``): left for the next pass."""
    not_intact: int = 0
    """Rejected because verification failed (incomplete or tampered)."""
    studies: list[str] = field(default_factory=list)
    """Studies imported (and completed) in this pass."""

    def to_json(self) -> dict[str, object]:
        return {
            "done": self.done,
            "rejected": [{"package": name, "reason": why} for name, why in self.rejected],
            "waiting": self.waiting,
            "studies": self.studies,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "conflicts": self.conflicts,
        }


def newest_change(path: Path) -> float:
    """The latest modification time of ``path`` and, for a folder, of anything inside it."""
    newest = path.stat().st_mtime
    if path.is_dir():
        for folder, dirs, files in os.walk(path):
            for name in (*dirs, *files):
                try:
                    newest = max(newest, os.lstat(os.path.join(folder, name)).st_mtime)
                except FileNotFoundError:  # removed meanwhile: still changing
                    return time.time()
    return newest


def _move(path: Path, folder: Path, access: Access, *, reason: str | None = None) -> Path:
    """File ``path`` in ``folder``; with ``reason``, its ``NAME.reason.txt`` is written first.

    Reason first: a crash between the two leaves the package in the drop folder (taken
    again at the next pass), never filed under rejected/ without saying why.
    """
    if not folder.is_dir():  # with the store's modes: done/ and rejected/ hold patient data
        access.make_dir(folder)
    target = folder / path.name
    if target.exists():  # a package of the same name was filed before: keep both
        target = folder / f"{path.name}.{secrets.token_hex(3)}"
    if reason is not None:
        with access.open_new(folder / f"{target.name}.reason.txt") as out:
            out.write((reason + "\n").encode())
    os.rename(path, target)
    return target


def _audit_unfinished(
    tracker: CompletenessTracker | None,
    package: Path,
    study_uids: list[str],
    *,
    detail: str,
    missing: Counter[str] | None = None,
) -> None:
    if tracker is not None:
        tracker.audit_unfinished(
            study_uids,
            calling_ae=CALLING_AE,
            peer_address=str(package),
            detail=detail,
            not_imported=missing or Counter(),
        )


def _import(
    package: Path,
    ingest: Ingest,
    result: DropResult,
    unpack: Path,
    imported: _Imported,
) -> str | None:
    """Store every instance of an intact package; return why it failed, or None."""
    found = scan([package], unpack_dir=unpack)
    failed = [r for r in found.rejected if r.disposition == "failed"]
    if failed:
        return f"{failed[0].path}: {failed[0].reason}"
    sender = Sender(CALLING_AE, str(package))
    for number, inst in enumerate(found.instances, start=1):
        done = ingest.put(
            inst.path,
            sender=sender,
            sop_class_uid=inst.sop_class_uid,
            sop_instance_uid=inst.sop_instance_uid,
            transfer_syntax=inst.transfer_syntax,
            study_uid=inst.study_uid,
            series_uid=inst.series_uid,
        )
        if done.outcome == "refused":
            # Journaled as a refusal, so that the audit record of the study counts it.
            if inst.study_uid:
                imported.touched.add(inst.study_uid)
            for later in found.instances[number:]:
                if later.study_uid:
                    imported.touched.add(later.study_uid)
                    imported.missing[later.study_uid] += 1
            left = len(found.instances) - number
            return f"{inst.path.name}: {done.reason}" + (
                f" ({left} later instance(s) of the package not imported)" if left else ""
            )
        put = done.put
        assert put is not None  # every outcome but a refusal has been through the store
        imported.touched.add(put.study_uid)
        if done.outcome == "stored":
            imported.new.add(put.study_uid)
        if done.kept:
            imported.studies.setdefault(
                put.study_uid, str(ingest.store.study_folder(put.path, put.study_uid))
            )
        result.stored += done.outcome == "stored"
        result.duplicates += done.outcome == "duplicate"
        result.conflicts += done.outcome == "conflict"
    return None


@dataclass
class _Imported:
    """What one package's import touched."""

    studies: dict[str, str] = field(default_factory=dict)
    """Each stored study's UID -> its folder in the store."""
    new: set[str] = field(default_factory=set)
    """Studies of which an instance was new to the store (not a duplicate)."""
    touched: set[str] = field(default_factory=set)
    """Every study with an instance journaled, or left unimported by a failure."""
    missing: Counter[str] = field(default_factory=Counter)
    """Per study, the instances a failure left unimported."""


def process_drop_folder(
    drop: Path,
    *,
    store: InstanceStore,
    journal: Journal,
    on_package: Callable[[str, str, str | None], None] | None = None,
    settle: float = 0.0,
    tracker: CompletenessTracker | None = None,
    sr_to_pdf: bool = False,
    receiver: str | None = None,
) -> DropResult:
    """One pass over ``drop``: import intact packages, file each under done/ or rejected/.

    ``on_package(name, "done" | "rejected", reason)`` is called for each package filed.
    A package changed less than ``settle`` seconds ago is left for a later pass. With a
    ``tracker``, the studies of an imported package are completed (hook, forward, audit).
    With ``sr_to_pdf``, each new SR is also stored rendered as an Encapsulated PDF.
    ``receiver`` names this importer in the journal (like a listening receiver): a
    package's study becomes its study only through an instance new to the store, so an
    import of instances already stored never completes (or re-completes) a study that
    another receiver received.
    """
    result = DropResult()
    for path in sorted(drop.iterdir()):
        if path.name.startswith(".") or path.name in (DONE, REJECTED):
            continue
        try:
            if settle > 0 and time.time() - newest_change(path) < settle:
                result.waiting.append(path.name)
                continue
        except FileNotFoundError:
            continue  # moved away meanwhile
        if not is_package(path):
            continue
        check = verify_package(path)
        reason: str | None
        imported = _Imported()
        conflicts_before = result.conflicts
        if check.verdict != "intact":
            result.not_intact += 1
            _kind, name, why = check.problems[0]
            reason = f"{check.verdict}: {name}: {why}" + (
                f" (and {len(check.problems) - 1} more problem(s))"
                if len(check.problems) > 1
                else ""
            )
        else:
            with tempfile.TemporaryDirectory(prefix="dvdexit-drop-") as tmp:
                ingest = Ingest(
                    store, journal, receiver=receiver, spool=Path(tmp), sr_to_pdf=sr_to_pdf
                )
                reason = _import(path, ingest, result, Path(tmp), imported)
            conflicts = result.conflicts - conflicts_before
            if reason is None:
                # Completed (journaled, audited, hook and forward queued) before the package
                # is filed: a crash in between leaves it in the drop folder, imported again
                # (as duplicates) at the next pass, never in done/ without its completion.
                completed = _complete(journal, tracker, imported.studies, check.manifest, receiver)
                result.studies.extend(completed)
                # Studies of the package this import did not complete (nothing of them
                # stored, or only copies of what a receiver holds) are audited all the same.
                left = sorted(imported.touched - set(completed))
                if conflicts:
                    # The other instances are stored, but the package did not fully arrive.
                    reason = (
                        f"conflict: {conflicts} instance(s) differ from the copy already "
                        "stored under the same SOP Instance UID and were not stored (the "
                        "package's other instances are)"
                    )
                    _audit_unfinished(tracker, path, left, detail=reason)
                elif left:
                    _audit_unfinished(
                        tracker,
                        path,
                        left,
                        detail=f"package {path.name}: every instance of the study was already "
                        "stored; its completion is unchanged",
                    )
            elif imported.touched:
                # Stored in part: the store and the audit say so; the studies stay open.
                _audit_unfinished(
                    tracker,
                    path,
                    sorted(imported.touched),
                    detail=f"package {path.name} rejected: {reason}",
                    missing=imported.missing,
                )
        if reason is None:
            _move(path, drop / DONE, store.access)
            result.done.append(path.name)
        else:
            _move(path, drop / REJECTED, store.access, reason=reason)
            result.rejected.append((path.name, reason))
        if on_package is not None:
            on_package(path.name, REJECTED if reason else DONE, reason)
    return result


def _complete(
    journal: Journal,
    tracker: CompletenessTracker | None,
    studies: dict[str, str],
    manifest: Manifest | None,
    receiver: str | None,
) -> list[str]:
    """Record the imported studies (with the manifest's note) and complete them.

    Returns the studies this import completes: those it brought a new instance to, and
    open ones of nobody else (a study another receiver received, or one already complete,
    keeps its completion, hook and forward when the package holds only copies of its
    instances).
    """
    # Each instance's study activity is journaled with the instance (receive/ingest.py).
    for study_uid in sorted(studies):
        if manifest is not None and (manifest.note or manifest.reason or manifest.recipient):
            journal.set_study_note(
                study_uid,
                note=_clean(manifest.note),
                reason=_clean(manifest.reason),
                recipient=_clean(manifest.recipient),
                source="manifest",
                sender_ae=manifest.sender_ae or None,
            )
    ours = [
        uid
        for uid in sorted(studies)
        if (study := journal.study(uid)) is not None
        and study.state == "receiving"
        and (receiver is None or study.receiver in (None, receiver))
    ]
    if tracker is not None:
        tracker.complete(ours, completed_by="package")
    return ours


def _clean(text: object) -> str | None:
    return clean_note_text(text if isinstance(text, str) else None)
