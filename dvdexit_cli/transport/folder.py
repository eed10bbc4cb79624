"""Folder transport: a drop folder receives each send as one transfer package.

The whole package is written (atomically: built beside its final name, synced, renamed)
when the transport opens; an instance is reported sent only when it is in the committed
package. A package that cannot be written leaves nothing at its name, and every item of
the send stays failed and retryable.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from dvdexit_cli.config import FolderPeer
from dvdexit_cli.dicom.scan import Instance
from dvdexit_cli.errors import PeerUnreachableError
from dvdexit_cli.fsmode import PRIVATE, group_access
from dvdexit_cli.package import Manifest, write_package
from dvdexit_cli.package.writer import PackageWriteError
from dvdexit_cli.transport.base import StoreOutcome

__all__ = ["FolderTransport"]


class FolderTransport:
    """Write the instances of one send as a package into ``peer.path``."""

    def __init__(
        self,
        peer: FolderPeer,
        *,
        sender_ae: str = "DVDEXIT",
        organisation: str | None = None,
        note: str | None = None,
        reason: str | None = None,
        recipient: str | None = None,
        as_zip: bool = False,
        as_iso: bool = False,
    ) -> None:
        self.peer = peer
        self._manifest_fields = {
            "sender_ae": sender_ae,
            "organisation": organisation,
            "note": note,
            "reason": reason,
            "recipient": recipient,
        }
        self._as_zip = as_zip
        self._as_iso = as_iso
        self._packaged: set[str] = set()
        self._unindexable: dict[str, str] = {}  # SOP Instance UID -> why
        self.package_path: Path | None = None

    def set_sender_note(self, note: str | None, reason: str | None, recipient: str | None) -> None:
        """The note, reason and recipient for the manifest of the next package."""
        self._manifest_fields.update(note=note, reason=reason, recipient=recipient)

    @property
    def description(self) -> str:
        return f"{self.peer.name} (folder {self.peer.path})"

    def open(self, instances: Sequence[Instance]) -> None:
        folder = Path(self.peer.path)
        if not folder.is_dir():
            raise PeerUnreachableError(
                f"folder {folder} of peer {self.peer.name} does not exist or is not mounted",
                hint="check the path with 'dvdexit peers show'",
            )
        access = (
            group_access(self.peer.group, where=f"peer {self.peer.name} group")
            if self.peer.group
            else PRIVATE
        )
        now = datetime.now(UTC)
        name = f"DVDEXIT-{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3).upper()}"
        target = folder / (name + (".zip" if self._as_zip else ".iso" if self._as_iso else ""))
        manifest = Manifest(
            created_at=now.isoformat(timespec="seconds").replace("+00:00", "Z"),
            **self._manifest_fields,  # type: ignore[arg-type]
        )
        rest = list(instances)
        while True:
            try:
                written = write_package(
                    rest,
                    target,
                    manifest=manifest,
                    as_zip=self._as_zip,
                    as_iso=self._as_iso,
                    access=access,
                )
                break
            except PackageWriteError as exc:
                # A file no DICOMDIR can index fails for good, alone; the rest is packaged.
                bad = [i for i in rest if exc.unindexable and i.path == exc.unindexable]
                if not bad:
                    raise PeerUnreachableError(
                        f"cannot write a package into {folder}: {exc}",
                        hint="check free space and permissions of the folder",
                    ) from exc
                self._unindexable[bad[0].sop_instance_uid] = str(exc)
                rest.remove(bad[0])
                if not rest:
                    return
        self._packaged = {e.sop_instance_uid for e in written.manifest.entries}
        self.package_path = written.path

    def store(self, instance: Instance) -> StoreOutcome:
        if instance.sop_instance_uid in self._packaged:
            return StoreOutcome("sent", None)
        if instance.sop_instance_uid in self._unindexable:
            return StoreOutcome(
                "failed", None, self._unindexable[instance.sop_instance_uid], retryable=False
            )
        return StoreOutcome(
            "failed", None, "not in the package written for this send", retryable=True
        )

    def close(self) -> None:
        return None
