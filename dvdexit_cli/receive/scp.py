"""A Storage SCP (pynetdicom) in front of the InstanceStore, journaling every instance.

Answers (documented in docs/conformance.md):

* 0000 success: stored durably, or an identical copy was already stored (duplicate);
* A700 out of resources: the instance could not be written (disk full, I/O error);
* C000 cannot understand: invalid UIDs, unparsable dataset, dataset and request disagree;
* C001 (failure) conflict: an instance with this SOP Instance UID but other content is
  already stored; the newcomer is kept aside in ``conflicts/`` for a person to look at,
  and the sender is told it was not accepted as the instance.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from pynetdicom._globals import ALL_TRANSFER_SYNTAXES

from dvdexit_cli.errors import ConfigError
from dvdexit_cli.events import InstanceReceived, Observer, ignore
from dvdexit_cli.journal import Journal
from dvdexit_cli.receive.store import InstanceStore, RefusedInstance, StoreWriteError
from dvdexit_cli.transport.dimse import set_nodelay

__all__ = ["STATUS_CONFLICT", "ReceiveSettings", "StorageServer"]

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_CONFLICT = 0xC001
_VERIFICATION = "1.2.840.10008.1.1"
_EXPLICIT_LE = "1.2.840.10008.1.2.1"

# Module-wide in pynetdicom: receive each dataset into a temporary file, not memory.
_config.STORE_RECV_CHUNKED_DATASET = True


@dataclass(frozen=True)
class ReceiveSettings:
    """Where and as whom to listen, and where to store."""

    host: str
    port: int
    ae_title: str
    store: Path
    fsync: bool = True
    stop_timeout: float = 30.0


def _status(code: int, comment: str | None = None) -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        # ErrorComment is LO: at most 64 characters.
        ds.ErrorComment = comment[:64]
    return ds


class StorageServer:
    """A running Storage SCP. ``start`` binds and returns; ``stop`` drains and closes."""

    def __init__(
        self, settings: ReceiveSettings, *, journal: Journal, observer: Observer = ignore
    ) -> None:
        self.settings = settings
        self._journal = journal
        self._observer = observer
        self._store = InstanceStore(settings.store, fsync=settings.fsync)
        self._server: Any = None
        self._ae = AE(ae_title=settings.ae_title)
        self._ae.require_called_aet = True
        self._ae.maximum_pdu_size = 0  # accept whatever PDU size the sender prefers
        self._ae.add_supported_context(_VERIFICATION)
        # An acceptor picks from a proposed context by its own order of preference:
        # explicit VR little endian first, as it keeps the VRs and most senders use it.
        syntaxes = [_EXPLICIT_LE, *(ts for ts in ALL_TRANSFER_SYNTAXES if ts != _EXPLICIT_LE)]
        for cx in AllStoragePresentationContexts:
            self._ae.add_supported_context(str(cx.abstract_syntax), syntaxes)
        self._stopping = threading.Event()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1]) if self._server else self.settings.port

    def start(self) -> None:
        """Bind and serve in background threads; raise ConfigError when binding fails."""
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, self._on_connection),
            (evt.EVT_C_STORE, self._on_store),
        ]
        try:
            self._server = self._ae.start_server(
                (self.settings.host, self.settings.port), block=False, evt_handlers=handlers
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {self.settings.host}:{self.settings.port}: {exc.strerror}",
                hint="choose another --port, or stop the program that uses it",
            ) from exc
        try:
            self.settings.store.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self.stop()
            raise ConfigError(
                f"cannot create the store {self.settings.store}: {exc.strerror}",
                hint="choose another --store, or fix its permissions",
            ) from exc

    def stop(self) -> int:
        """Refuse new associations, let running ones finish (up to ``stop_timeout``).

        Returns how many associations had to be aborted because they did not finish.
        """
        if self._server is None:
            return 0
        self._stopping.set()
        server, self._server = self._server, None
        server.shutdown()  # stops accepting; running associations go on in their threads
        deadline = time.monotonic() + self.settings.stop_timeout
        running = list(server.active_associations)
        # A connection that never completed its association request (a port probe, a
        # half-open socket) holds no data: close it now rather than wait out its timeout.
        for assoc in running:
            if not assoc.is_established:
                assoc.abort()
        active = [a for a in running if a.is_established]
        while active and time.monotonic() < deadline:
            time.sleep(0.05)
            active = [a for a in active if a.is_alive() and a.is_established]
        for assoc in active:
            assoc.abort()
        return len(active)

    def _on_connection(self, event: Any) -> None:
        set_nodelay(event.assoc)

    def _on_store(self, event: Any) -> Dataset:
        request = event.request
        calling_ae = str(event.assoc.requestor.ae_title).strip()
        address = f"{event.assoc.requestor.address}:{event.assoc.requestor.port}"
        sop_class = str(request.AffectedSOPClassUID or "")
        sop_instance = str(request.AffectedSOPInstanceUID or "")
        transfer_syntax = str(event.context.transfer_syntax)
        record: dict[str, Any] = {
            "calling_ae": calling_ae,
            "peer_address": address,
            "sop_class_uid": sop_class,
            "sop_instance_uid": sop_instance,
            "transfer_syntax": transfer_syntax,
            "study_uid": None,
            "series_uid": None,
            "size": None,
            "digest": None,
            "path": None,
        }
        reason: str | None
        try:
            put = self._store.put(
                Path(event.dataset_path),
                sop_class_uid=sop_class,
                sop_instance_uid=sop_instance,
                transfer_syntax=transfer_syntax,
                calling_ae=calling_ae,
            )
        except RefusedInstance as exc:
            status, outcome, reason = STATUS_CANNOT_UNDERSTAND, "refused", str(exc)
            # A refused UID may be hostile; keep it out of the journal's key columns.
            record["sop_instance_uid"] = sop_instance if _plain(sop_instance) else None
        except StoreWriteError as exc:
            status, outcome = STATUS_OUT_OF_RESOURCES, "refused"
            reason = str(exc)
            log.error("store failed: %s", reason)
        else:
            record.update(
                study_uid=put.study_uid,
                series_uid=put.series_uid,
                size=put.size,
                digest=put.digest,
                path=str(put.path),
            )
            outcome = put.outcome
            if put.outcome == "conflict":
                status = STATUS_CONFLICT
                reason = "conflict: this SOP Instance UID is stored with other content"
            else:
                status, reason = STATUS_SUCCESS, None
        self._journal.record_received(**record, outcome=outcome, status=status, reason=reason)
        self._observer(
            InstanceReceived(
                calling_ae=calling_ae,
                sop_instance_uid=record["sop_instance_uid"],
                study_uid=record["study_uid"],
                outcome=outcome,
                status=status,
                reason=reason,
            )
        )
        return _status(status, reason)


def _plain(uid: str) -> bool:
    return len(uid) <= 64 and all(c.isdigit() or c == "." for c in uid)
