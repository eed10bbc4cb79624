"""The package manifest: what a package holds, so a receiver knows when it is complete.

``MANIFEST.JSON`` lists, per study, every instance with its file ID, size and dataset
digest, with counts and total bytes (like BagIt's Payload-Oxum), the sender and the
sender's note. ``MANIFEST.SHA256`` holds the SHA-256 of ``MANIFEST.JSON`` in the format
``sha256sum -c`` reads, so a changed manifest is detected too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FORMAT", "MANIFEST_DIGEST_NAME", "MANIFEST_NAME", "Manifest", "ManifestEntry"]

FORMAT = "dvdexit-package/1"
MANIFEST_NAME = "MANIFEST.JSON"
MANIFEST_DIGEST_NAME = "MANIFEST.SHA256"


@dataclass(frozen=True)
class ManifestEntry:
    study_uid: str
    series_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    file_id: str  # POSIX-style path relative to the package root
    size: int
    digest: str


@dataclass
class Manifest:
    created_at: str
    sender_ae: str
    organisation: str | None = None
    note: str | None = None
    reason: str | None = None
    recipient: str | None = None
    entries: list[ManifestEntry] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        studies: dict[str, list[ManifestEntry]] = {}
        for entry in self.entries:
            studies.setdefault(entry.study_uid, []).append(entry)
        document: dict[str, Any] = {
            "format": FORMAT,
            "created_at": self.created_at,
            "sender": {"ae_title": self.sender_ae, "organisation": self.organisation},
            "note": self.note,
            "reason": self.reason,
            "recipient": self.recipient,
            "instance_count": len(self.entries),
            "total_bytes": sum(e.size for e in self.entries),
            "studies": [
                {
                    "study_uid": study,
                    "instance_count": len(entries),
                    "total_bytes": sum(e.size for e in entries),
                    "instances": [
                        {
                            "series_uid": e.series_uid,
                            "sop_class_uid": e.sop_class_uid,
                            "sop_instance_uid": e.sop_instance_uid,
                            "file_id": e.file_id,
                            "size": e.size,
                            "sha256": e.digest,
                        }
                        for e in entries
                    ],
                }
                for study, entries in studies.items()
            ],
        }
        return (json.dumps(document, indent=2) + "\n").encode()

    @staticmethod
    def digest_line(data: bytes) -> bytes:
        return f"{hashlib.sha256(data).hexdigest()}  {MANIFEST_NAME}\n".encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Parse a manifest; raise ValueError with what is wrong."""
        try:
            document = json.loads(data)
            if document.get("format") != FORMAT:
                raise ValueError(f"unknown package format {document.get('format')!r}")
            entries = [
                ManifestEntry(
                    study_uid=str(study["study_uid"]),
                    series_uid=str(item["series_uid"]),
                    sop_class_uid=str(item["sop_class_uid"]),
                    sop_instance_uid=str(item["sop_instance_uid"]),
                    file_id=str(item["file_id"]),
                    size=int(item["size"]),
                    digest=str(item["sha256"]),
                )
                for study in document["studies"]
                for item in study["instances"]
            ]
            sender = document.get("sender") or {}
            return cls(
                created_at=str(document["created_at"]),
                sender_ae=str(sender.get("ae_title", "")),
                organisation=sender.get("organisation"),
                note=document.get("note"),
                reason=document.get("reason"),
                recipient=document.get("recipient"),
                entries=entries,
            )
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(f"manifest is not readable: {exc}") from exc
