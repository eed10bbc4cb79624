"""The files a send starts from: scanned, screened, selected, attached; reloaded for a
replay; unpacked copies removed once no open item needs them."""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

from dvdexit_cli.dicom.scan import Instance, ScanResult, UnsendableFile, read_instance, scan
from dvdexit_cli.errors import NoDicomFoundError
from dvdexit_cli.events import Observer, ScanFinished
from dvdexit_cli.journal import ItemRecord, Journal
from dvdexit_cli.package.onward import screen_packages
from dvdexit_cli.sending.settings import SendSettings

__all__ = ["reload", "remove_folders", "remove_unpacked", "scan_selected"]


def scan_selected(settings: SendSettings, observer: Observer) -> tuple[ScanResult, int]:
    """Scan the inputs and apply the selection; return what to send and how many were left out.

    Raises NoDicomFoundError when nothing is left to send.
    """
    found = scan(list(settings.inputs), unpack_dir=settings.unpack_dir)
    found = screen_packages(found, settings.inputs)
    skipped = sum(r.disposition == "skipped" for r in found.rejected)
    unreadable = len(found.rejected) - skipped
    observer(ScanFinished(len(found.instances), found.total_bytes, skipped, unreadable))
    kept = [inst for inst in found.instances if settings.selects(inst)]
    excluded = len(found.instances) - len(kept)
    if not kept:
        reasons = sorted({r.reason for r in found.rejected})[:3]
        raise NoDicomFoundError(
            f"no DICOM instance to send in {', '.join(map(str, settings.inputs))}"
            + (f" ({excluded} instance(s) left out by the selection options)" if excluded else "")
            + (
                f" ({skipped} file(s) skipped, {unreadable} unreadable: {'; '.join(reasons)})"
                if found.rejected
                else ""
            )
            + ("" if found.rejected or excluded else " (no files)"),
            hint="point dvdexit at a folder, DICOMDIR medium or DICOM files"
            + (", or widen --study/--modality/--exclude-*" if excluded else ""),
        )
    unpacked = list(found.unpacked)
    if settings.attach is not None:
        try:
            attached = [read_instance(path) for path in settings.attach(kept)]
        except BaseException:
            for folder in unpacked:  # nothing will be sent: keep no copies
                shutil.rmtree(folder, ignore_errors=True)
            raise
        kept.extend(attached)
        # Kept like unpacked copies: until the transfer is complete, for --retry-failed.
        unpacked.extend(sorted({inst.path.parent for inst in attached}))
    return ScanResult(instances=kept, rejected=found.rejected, unpacked=unpacked), excluded


def reload(item: ItemRecord) -> Instance | str:
    """The instance behind a journaled item, or why it cannot be resent as journaled."""
    try:
        inst = read_instance(Path(item.path))
    except UnsendableFile as exc:
        return f"cannot resend: {exc.reason}"
    if inst.sop_instance_uid != item.sop_instance_uid or inst.digest != item.digest:
        return (
            "cannot resend: the file changed since it was journaled (its dataset digest or "
            "SOP Instance UID differs); send it again as a new transfer"
        )
    return inst


def remove_unpacked(journal: Journal, items: Sequence[ItemRecord], unpack_dir: Path) -> None:
    """Remove the unpacked archive folders a completed transfer's items came from."""
    folders = set()
    for item in items:
        path = Path(item.path)
        if path.is_relative_to(unpack_dir) and path != unpack_dir:
            folders.add(unpack_dir / path.relative_to(unpack_dir).parts[0])
    remove_folders(journal, folders)


def remove_folders(journal: Journal, folders: Iterable[Path]) -> None:
    """Remove unpacked folders that no unfinished item (of any transfer) still needs."""
    for folder in folders:
        if not journal.has_open_items_under(folder):
            shutil.rmtree(folder, ignore_errors=True)
