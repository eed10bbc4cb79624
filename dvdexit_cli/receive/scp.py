"""A Storage SCP (pynetdicom) in front of the InstanceStore, journaling every instance.

Each C-STORE goes through the one ingest pipeline (receive/ingest.py), whose status
table is what the sender is answered (documented in docs/conformance.md); a journal that
cannot record the instance answers A700 (retry later), never C211.

Who may connect: an association from an address outside ``allow_from`` is rejected
permanently with no reason given (A-ASSOCIATE-RJ 1/1/1), one from a calling AE title
outside ``allow_ae`` with "calling AE title not recognised" (1/1/3); beyond
``max_associations`` established ones, transiently (2/3/2, local limit exceeded).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from pynetdicom._globals import ALL_TRANSFER_SYNTAXES

from dvdexit_cli.audit import AuditTrail, ReceiveAuditor
from dvdexit_cli.config import DEFAULT_MAX_PDU, DimsePeer
from dvdexit_cli.errors import ConfigError, JournalError
from dvdexit_cli.events import AssociationRefused, InstanceReceived, Observer, ignore
from dvdexit_cli.fsmode import PRIVATE, Access
from dvdexit_cli.journal import Journal
from dvdexit_cli.receive.commitment import (
    COMMITMENT_CLASS,
    evaluate_commitment,
    send_event_report,
)
from dvdexit_cli.receive.completeness import StudySink
from dvdexit_cli.receive.ingest import (
    STATUS_CONFLICT,
    STATUS_OUT_OF_RESOURCES,
    STATUS_SUCCESS,
    Ingest,
    Sender,
)
from dvdexit_cli.receive.reconcile import PatientMapping
from dvdexit_cli.receive.service import completion_stack
from dvdexit_cli.receive.store import (
    DEFAULT_LAYOUT,
    SPOOL_DIR,
    TEMPORARY_GLOB,
    InstanceStore,
    is_store_temporary,
)
from dvdexit_cli.tls import report_handshake_failures
from dvdexit_cli.transport.dimse import bound_pdus, set_nodelay

__all__ = ["STATUS_CONFLICT", "ReceiveSettings", "StorageServer", "is_store_temporary"]

log = logging.getLogger(__name__)

_VERIFICATION = "1.2.840.10008.1.1"
_EXPLICIT_LE = "1.2.840.10008.1.2.1"

# Module-wide in pynetdicom: receive each dataset into a temporary file, not memory.
_config.STORE_RECV_CHUNKED_DATASET = True


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ReceiveSettings:
    """Where and as whom to listen, where to store, whom to let in, what to do when done."""

    host: str
    port: int
    ae_title: str
    store: Path
    fsync: bool = True
    stop_timeout: float = 30.0
    allow_ae: tuple[str, ...] = ()
    allow_from: tuple[Network, ...] = ()
    max_associations: int = 10
    layout: str = DEFAULT_LAYOUT
    max_instance_size: int | None = None
    min_free: int = 0
    idle_timeout: float = 60.0
    on_complete: str | None = None
    commit_reply: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    ssl_context: Any = None
    #: For associations we open (storage commitment reports) when listening with TLS.
    client_ssl_context: Any = None
    forward_to: DimsePeer | None = None
    reconcile: PatientMapping | None = None
    #: Where reconciled copies wait to be forwarded (outside the store).
    staging: Path | None = None
    #: The audit trail (audit.jsonl); None writes no audit records.
    audit_file: Path | None = None
    #: Store a received SR also rendered as an Encapsulated PDF (receive/render.py).
    sr_to_pdf: bool = False
    #: Modes of the store's files and folders: owner-only unless ``[receive] group``.
    access: Access = PRIVATE
    #: The maximum PDU length we advertise and send (``[local] max_pdu``).
    max_pdu: int = DEFAULT_MAX_PDU


def _spool_prefix(pid: int) -> str:
    """How a receiving process names its spool files: ``.spool-PID-``."""
    return f".spool-{pid}-"


def _spooled_by_another_live_process(name: str) -> bool:
    """True for ``.spool-PID-...`` of a running process other than this one."""
    pid_text = name.removeprefix(".spool-").partition("-")[0]
    if not name.startswith(".spool-") or not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_store(store: Path) -> int:
    """Remove what a killed receiver left: the spool, and dot-prefixed ``.tmp`` files.

    Only names the store itself creates are removed, and never the spool files of
    another receiver running on the same store; returns how many files went.
    """
    removed = 0
    spool = store / SPOOL_DIR
    if spool.is_dir():
        for path in spool.iterdir():
            if path.is_file() and not _spooled_by_another_live_process(path.name):
                path.unlink(missing_ok=True)
                removed += 1
    for path in store.rglob(TEMPORARY_GLOB):
        if path.is_file() and path.parent != spool:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


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
        self,
        settings: ReceiveSettings,
        *,
        journal: Journal,
        observer: Observer = ignore,
        forwarder: StudySink | None = None,
    ) -> None:
        """``forwarder``: where complete studies are forwarded when ``settings.forward_to``
        is set (relay.forwarder_for builds it; receive/ does not know the send side)."""
        self.settings = settings
        self._journal = journal
        self._observer = observer
        self._store = InstanceStore(
            settings.store, fsync=settings.fsync, layout=settings.layout, access=settings.access
        )
        if settings.fsync:
            # An instance answered as stored must keep its journal row through a power cut
            # as its fsynced file does (WAL with synchronous=NORMAL may lose the last rows).
            journal.sync_every_commit()
        self._ingest = Ingest(
            self._store,
            journal,
            receiver=None,  # known once bound: receiver_id names the port
            spool=settings.store / SPOOL_DIR,
            sr_to_pdf=settings.sr_to_pdf,
            max_instance_size=settings.max_instance_size,
            min_free=settings.min_free,
            observer=observer,
        )
        self._server: Any = None
        self._ae = AE(ae_title=settings.ae_title)
        self._ae.require_called_aet = True
        # pynetdicom counts every connection toward its limit, even a port probe waiting
        # out its ACSE timeout; the limit is applied in _on_requested to established ones.
        self._ae.maximum_associations = 1000
        self._ae.add_supported_context(COMMITMENT_CLASS)
        if settings.forward_to is not None and forwarder is None:
            raise ValueError(
                "forward_to needs its forwarder: pass relay.forwarder_for(settings.forward_to, ...)"
            )
        self._completion = completion_stack(
            journal,
            on_complete=settings.on_complete,
            forwarder=forwarder,
            idle_timeout=settings.idle_timeout,
            observer=observer,
            audit=(
                ReceiveAuditor(
                    AuditTrail(settings.audit_file, process="dvdexit receive"),
                    local_ae=settings.ae_title,
                )
                if settings.audit_file is not None
                else None
            ),
        )
        self.tracker = self._completion.tracker
        self.swept = 0
        self._previous_tempdir: str | None = None
        self._previous_template = tempfile.template
        # Bounded: pynetdicom reads each PDU whole, so an unlimited maximum let a sender
        # put a 1 GB instance in one PDU, held in memory several times over.
        self._ae.maximum_pdu_size = settings.max_pdu
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

    @property
    def receiver_id(self) -> str:
        """This receiver in the journal: ``AE@HOST:PORT STORE``.

        A study belongs to the receiver that stored its latest new instance: only that
        one completes it, runs its hook and forwards it (docs/receiving.md). Stable
        across restarts, so a restarted receiver takes up its own unfinished studies.
        """
        return f"{self.settings.ae_title}@{self.settings.host}:{self.port} {self.settings.store}"

    def start(self) -> None:
        """Bind and serve in background threads; raise ConfigError when binding fails."""
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, self._on_connection),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_N_ACTION, self._on_n_action),
        ]
        if self.settings.ssl_context is not None:
            report_handshake_failures(self.settings.ssl_context, self._on_tls_failure)
        try:
            self._server = self._ae.start_server(
                (self.settings.host, self.settings.port),
                block=False,
                evt_handlers=handlers,
                ssl_context=self.settings.ssl_context,
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {self.settings.host}:{self.settings.port}: {exc.strerror}",
                hint="choose another --port, or stop the program that uses it",
            ) from exc
        try:
            self._store.make_root()
            self.swept = sweep_store(self.settings.store)
            spool = self.settings.store / SPOOL_DIR
            self.settings.access.make_dir(spool)
            self.settings.access.restrict(spool)
        except OSError as exc:
            self.stop()
            raise ConfigError(
                f"cannot create the store {self.settings.store}: {exc.strerror}",
                hint="choose another --store, or fix its permissions",
            ) from exc
        # pynetdicom offers no spool folder of its own: its NamedTemporaryFile follows
        # tempfile's process-wide default, so the receiving process points it at the store.
        # Its default name prefix is made dot-prefixed too (pynetdicom names them *.dcm):
        # in the store, a name starting with a dot is always a temporary, never an instance.
        self._previous_tempdir = tempfile.tempdir
        self._previous_template = tempfile.template
        tempfile.tempdir = str(self.settings.store / SPOOL_DIR)
        tempfile.template = _spool_prefix(os.getpid())
        self._ingest.receiver = self.receiver_id
        self._completion.start(self.receiver_id, idle=True)

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
        self._completion.stop(deadline - time.monotonic())
        tempfile.tempdir = self._previous_tempdir
        tempfile.template = self._previous_template
        # No association of ours runs now: what is left of our spool belongs to
        # associations aborted mid-dataset (pynetdicom keeps those files), never an instance.
        spool = self.settings.store / SPOOL_DIR
        if spool.is_dir():
            for leftover in spool.glob(_spool_prefix(os.getpid()) + "*"):
                leftover.unlink(missing_ok=True)
        return len(active)

    def _on_tls_failure(self, address: str, reason: str) -> None:
        log.info("connection from %s refused: TLS handshake failed: %s", address, reason)
        self._observer(
            AssociationRefused(
                calling_ae="", address=address, reason=f"TLS handshake failed: {reason}"
            )
        )

    def _on_connection(self, event: Any) -> None:
        set_nodelay(event.assoc)
        bound_pdus(event.assoc, self.settings.max_pdu)

    def _on_requested(self, event: Any) -> None:
        assoc = event.assoc
        # The requestor's AE title is filled in only during negotiation: read the request.
        calling_ae = str(assoc.requestor.primitive.calling_ae_title or "").strip()
        address = str(assoc.requestor.address)
        why: str | None = None
        diagnostic = 0x01
        if self.settings.allow_from and not _address_allowed(address, self.settings.allow_from):
            why = "address not allowed (--allow-from)"
        elif self.settings.allow_ae and calling_ae not in self.settings.allow_ae:
            why, diagnostic = "calling AE title not allowed (--allow-ae)", 0x03
        elif self._established() >= self.settings.max_associations:
            log.info("association from %s (%s) rejected: limit reached", address, calling_ae)
            self._observer(
                AssociationRefused(
                    calling_ae=calling_ae, address=address, reason="too many associations"
                )
            )
            # Transient, presentation related, local limit exceeded: the sender may retry.
            assoc.acse.send_reject(0x02, 0x03, 0x02)
            evt.trigger(assoc, evt.EVT_REJECTED, {})
            assoc.kill()
            return
        if why is None:
            return
        log.info("association from %s (%s) rejected: %s", address, calling_ae, why)
        self._observer(AssociationRefused(calling_ae=calling_ae, address=address, reason=why))
        # Permanent rejection by the service user; the reason is "no reason given" for
        # an address (a stranger learns nothing) and "calling AE not recognised" for a title.
        assoc.acse.send_reject(0x01, 0x01, diagnostic)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()

    def _established(self) -> int:
        server = self._server
        if server is None:
            return 0
        return sum(1 for a in server.active_associations if a.is_established)

    def _on_n_action(self, event: Any) -> tuple[Dataset, Dataset | None]:
        request = event.request
        if str(request.RequestedSOPClassUID) != COMMITMENT_CLASS or request.ActionTypeID != 1:
            return _status(0x0123), None  # no such action
        try:
            info = event.action_information
            result = evaluate_commitment(info, journal=self._journal)
        except ValueError as exc:
            return _status(0x0115, f"invalid request: {exc}"), None  # invalid argument value
        except Exception as exc:  # pydicom decode errors come in many types
            log.error("storage commitment request could not be read: %s", exc)
            return _status(0x0110, "request could not be read"), None
        self._journal.mark_commit_requested(result.studies, receiver=self.receiver_id)
        log.info(
            "storage commitment %s: %d stored, %d failed",
            result.transaction_uid,
            len(result.succeeded),
            len(result.failed),
        )
        if not result.failed:
            self.tracker.complete(sorted(result.studies), completed_by="commitment")
        else:
            self.tracker.commitment_failed(
                result.studies, len(result.failed), result.transaction_uid
            )
        send_event_report(
            result,
            assoc=event.assoc,
            ae_title=self.settings.ae_title,
            reply_to=self.settings.commit_reply,
            ssl_context=self.settings.client_ssl_context,
            max_pdu=self.settings.max_pdu,
        )
        return _status(STATUS_SUCCESS), None

    def _on_store(self, event: Any) -> Dataset:
        request = event.request
        calling_ae = str(event.assoc.requestor.ae_title).strip()
        sop_instance = str(request.AffectedSOPInstanceUID or "")
        sender = Sender(calling_ae, f"{event.assoc.requestor.address}:{event.assoc.requestor.port}")
        spooled = Path(event.dataset_path)
        try:
            done = self._ingest.put(
                spooled,
                sender=sender,
                sop_class_uid=str(request.AffectedSOPClassUID or ""),
                sop_instance_uid=sop_instance,
                transfer_syntax=str(event.context.transfer_syntax),
            )
        except JournalError as exc:
            # Not C211 (pynetdicom's answer to an exception here, final for the sender):
            # the instance was not kept (the store removed it), so the sender must retry.
            reason = "journal unavailable, instance not kept; retry later"
            log.error("instance refused with A700: %s", exc.message)
            self._observer(
                InstanceReceived(
                    calling_ae=calling_ae,
                    sop_instance_uid=sop_instance if _plain(sop_instance) else None,
                    study_uid=None,
                    outcome="refused",
                    status=STATUS_OUT_OF_RESOURCES,
                    reason=reason,
                )
            )
            return _status(STATUS_OUT_OF_RESOURCES, reason)
        finally:
            # pynetdicom removes the spool file only after a handler that returns; one
            # that raised would leave it in .incoming/ (and the store never needs it now).
            spooled.unlink(missing_ok=True)
        return _status(done.status, done.reason)


def _address_allowed(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in networks)


def _plain(uid: str) -> bool:
    return len(uid) <= 64 and all(c.isdigit() or c == "." for c in uid)
