"""DIMSE transport (pynetdicom): C-STORE each instance streamed from its file.

Notes on pynetdicom 3.0 that shape this module (see shared PEERS.md):

* Files are sent with ``STORE_SEND_CHUNKED_DATASET``: pynetdicom streams the dataset
  bytes that follow the File Meta Information straight from disk, so the bytes on the
  wire are the file's bytes and the receiver's digest equals ours.
* pynetdicom sends a dataset in PDUs as large as the peer allows, and a peer that
  advertises 0 (no limit) gets each dataset as one PDU, read whole into memory at both
  ends. Every association we take part in advertises a bounded maximum (``[local]
  max_pdu``) and sends no PDU larger than it (``bound_pdus``).
* Nagle's algorithm stalls every C-STORE on loopback and LANs (command and dataset are
  separate writes): TCP_NODELAY is set on every association socket.
* pynetdicom's association reactor may take a C-STORE response off the DIMSE queue while
  ``send_c_store`` waits for it (a pause/unpause race), leaving the call to time out. The
  reactor of a requestor has no business with responses, so its non-blocking reads are
  limited to requests (``guard_reactor``). Should an answer still go missing, the item is
  a retryable failure and the association is re-opened.
"""

from __future__ import annotations

import logging
import shutil
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import UID
from pynetdicom import _config
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import build_context

from dvdexit_cli.config import DimsePeer
from dvdexit_cli.dicom.contexts import UNCOMPRESSED, ContextPlan, plan_contexts
from dvdexit_cli.dicom.digest import CHUNK_SIZE, needs_padding
from dvdexit_cli.dicom.scan import Instance
from dvdexit_cli.dicom.transcode import (
    LOSSLESS_COMPRESSED,
    LOSSY_COMPRESSED,
    TranscodeError,
    decompressed,
)
from dvdexit_cli.errors import AssociationRejectedError, PeerUnreachableError
from dvdexit_cli.events import AssociationOpened, Observer, ignore
from dvdexit_cli.transport.base import StoreOutcome
from dvdexit_cli.transport.handoff import HandoffAE, connect_tcp
from dvdexit_cli.transport.statuses import classify_store_status

__all__ = ["DimseTransport", "bound_pdus", "guard_reactor", "set_nodelay", "uid_name"]

log = logging.getLogger(__name__)

_DEFLATED = "1.2.840.10008.1.2.1.99"

# Module-wide in pynetdicom: stream datasets from files instead of decoding them.
_config.STORE_SEND_CHUNKED_DATASET = True


def uid_name(uid: str) -> str:
    """A UID's registered name when pydicom knows it, else the UID itself."""
    name = UID(uid).name
    return name if name and name != uid else uid


def set_nodelay(assoc: Any) -> None:
    """Disable Nagle's algorithm on an association's socket."""
    try:
        assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError) as exc:  # socket already gone: nothing to tune
        log.debug("could not set TCP_NODELAY: %s", exc)


class _BoundedDimse(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider, fragmenting messages at ``send_limit`` at most."""

    send_limit: int

    @property
    def maximum_pdu_size(self) -> int:
        theirs = super().maximum_pdu_size or 0  # None or 0: the peer sets no limit
        return min(theirs, self.send_limit) if theirs else self.send_limit


#: P-DATA PDUs that may wait for the socket; beyond, the sending thread waits.
_QUEUED_PDUS = 4
#: Seconds the socket may take no queued PDU before the waiting stops for good on that
#: association (pynetdicom's own DIMSE timeout then decides, as it did without it).
_STALL = 30.0


def bound_pdus(assoc: Any, limit: int) -> None:
    """Send no PDU larger than ``limit`` on ``assoc``, and queue few, whatever the peer.

    pynetdicom splits each message at the peer's maximum only, and sends a whole dataset
    (read whole into memory) as one PDU to a peer that advertises no limit. It also
    queues every PDU of a message for its socket thread at once: a dataset read from
    disk faster than the network takes it piled up in memory (600 MB for a 1 GB
    instance). Here the sending thread waits while ``_QUEUED_PDUS`` are queued.
    """
    dimse = assoc.dimse
    if not isinstance(dimse, _BoundedDimse):
        dimse.__class__ = _BoundedDimse
    dimse.send_limit = limit
    dul = assoc.dul
    if getattr(dul, "_dvdexit_throttled", False):
        return
    queue = dul.to_provider_queue
    original = dul.send_pdu
    stalled = threading.Event()

    def send_pdu(primitive: Any) -> None:
        if isinstance(primitive, P_DATA) and threading.current_thread() is not dul:
            head, since = None, time.monotonic()
            while queue.qsize() >= _QUEUED_PDUS and dul.is_alive() and not stalled.is_set():
                current = queue.queue[0] if queue.queue else None
                if current is not head:
                    head, since = current, time.monotonic()
                elif time.monotonic() - since > _STALL:
                    log.warning("the peer took no data for %g s; no longer pacing", _STALL)
                    stalled.set()
                time.sleep(0.0005)
        original(primitive)

    dul.send_pdu = send_pdu
    dul._dvdexit_throttled = True


def guard_reactor(assoc: Any) -> None:
    """Keep the requestor's reactor thread from consuming DIMSE responses."""
    dimse = assoc.dimse
    original = dimse.get_msg
    queue = dimse.msg_queue

    def get_msg(block: bool = False) -> Any:
        if not block and threading.current_thread() is assoc:
            with queue.mutex:
                head = queue.queue[0] if queue.queue else None
            if head is None or getattr(head[1], "Status", None) is not None:
                return None, None
        return original(block=block)

    dimse.get_msg = get_msg


def _dataset_with_own_identity(instance: Instance) -> pydicom.Dataset:
    ds = pydicom.dcmread(instance.path)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    return ds


def _reject_message(assoc: Any, peer: DimsePeer) -> AssociationRejectedError:
    primitive = assoc.acceptor.primitive
    if assoc.is_rejected and primitive is not None:
        reason = primitive.reason_str
        result = primitive.result_str
        hint = {
            "Called AE title not recognised": (
                f"the peer does not know called AE title {peer.called_ae!r}; compare "
                f"'dvdexit peers list' with the peer's configuration"
            ),
            "Calling AE title not recognised": (
                f"the peer does not accept our calling AE title {peer.calling_ae!r}; ask its "
                f"administrator to register it, or set --calling-ae on the peer"
            ),
            "Temporary congestion": "the peer is busy; retry later",
            "Local limit exceeded": "the peer has too many associations open; retry later",
        }.get(reason, "check the peer's configuration for our AE titles")
        return AssociationRejectedError(
            f"association rejected by {peer.name} ({result}: {reason})", hint=hint
        )
    return AssociationRejectedError(
        f"association aborted by {peer.name} during negotiation",
        hint="the peer may not accept our AE titles or proposed SOP classes; check its log",
    )


class DimseTransport:
    """Send instances to a DIMSE peer over as few associations as the context plan allows."""

    def __init__(
        self,
        peer: DimsePeer,
        *,
        connect_timeout: float = 15.0,
        acse_timeout: float = 30.0,
        dimse_timeout: float = 60.0,
        network_timeout: float = 120.0,
        observer: Observer = ignore,
        ssl_context: ssl.SSLContext | None = None,
        allow_lossy_transcode: bool = False,
    ) -> None:
        self.peer = peer
        self._allow_lossy = allow_lossy_transcode
        # TLS: the context checks the peer's certificate; host name checking uses the
        # peer's host as given.
        self._tls_args = (ssl_context, self.peer.host) if ssl_context is not None else None
        self._observer = observer
        self._ae = HandoffAE(ae_title=peer.calling_ae)
        self._ae.connection_timeout = connect_timeout
        self._ae.acse_timeout = acse_timeout
        self._ae.dimse_timeout = dimse_timeout
        self._ae.network_timeout = network_timeout
        self._connect_timeout = connect_timeout
        self._plans: list[ContextPlan] = []
        self._assoc: Any = None
        self._plan_index = -1

    @property
    def description(self) -> str:
        return f"{self.peer.name} ({self.peer.called_ae}@{self.peer.address})"

    def open(self, instances: Sequence[Instance]) -> None:
        """Plan presentation contexts and open the first association (raises PeerError)."""
        self._plans = plan_contexts((i.sop_class_uid, i.transfer_syntax) for i in instances)
        if self._plans:
            self._associate(0)

    def close(self) -> None:
        self._release()

    def _release(self) -> None:
        assoc, self._assoc = self._assoc, None
        if assoc is not None and assoc.is_established:
            assoc.release()
        elif assoc is not None:
            assoc.abort()

    def _associate(self, index: int) -> None:
        self._release()
        plan = self._plans[index]
        contexts = [
            build_context(c.abstract_syntax, list(c.transfer_syntaxes)) for c in plan.contexts
        ]
        # Our own connect: its failure is told in the operating system's words, without a
        # second, empty connection to find them (which some DICOM peers log or take badly).
        assoc = self._ae.associate_over(
            self._connect(),
            self.peer.host,
            self.peer.port,
            contexts=contexts,
            ae_title=self.peer.called_ae,
            max_pdu=self.peer.pdu_limit,
        )
        if not assoc.is_established:
            # Only an answer from the peer (a primitive) means it was reached and said no.
            answered = assoc.acceptor.primitive is not None
            if assoc.is_rejected or (assoc.is_aborted and answered):
                raise _reject_message(assoc, self.peer)
            raise PeerUnreachableError(
                f"peer {self.peer.name} unreachable: TCP connects, but no DICOM association "
                "could be negotiated",
                hint=f"check that {self.peer.address} is the peer's DICOM port (and whether it "
                "needs TLS), and the peer's log",
            )
        set_nodelay(assoc)
        guard_reactor(assoc)
        bound_pdus(assoc, self.peer.pdu_limit)
        self._assoc = assoc
        self._plan_index = index
        accepted = len(assoc.accepted_contexts)
        self._observer(
            AssociationOpened(
                peer=self.peer.name,
                accepted_contexts=accepted,
                rejected_contexts=len(assoc.rejected_contexts),
                max_pdu=int(assoc.acceptor.maximum_length or 0),
            )
        )

    def _connect(self) -> socket.socket:
        """A connected (and, for a TLS peer, handshaken) socket; PeerUnreachableError if not."""
        try:
            sock = connect_tcp(self.peer.host, self.peer.port, timeout=self._connect_timeout)
        except PeerUnreachableError as exc:
            raise PeerUnreachableError(
                f"peer {self.peer.name} unreachable: {exc.message}",
                hint=f"check that the peer runs and that {self.peer.address} is right "
                f"('dvdexit peers list')",
            ) from exc
        if self._tls_args is None:
            return sock
        context, hostname = self._tls_args
        try:
            return context.wrap_socket(sock, server_hostname=hostname)
        except (ssl.SSLError, OSError) as exc:
            sock.close()
            raise PeerUnreachableError(
                f"peer {self.peer.name} unreachable: TLS handshake with {self.peer.address} "
                f"failed: {exc}",
                hint=f"check the peer's TLS settings ('dvdexit status --peer {self.peer.name}' "
                "shows the certificate)",
            ) from exc

    def _plan_for(self, instance: Instance) -> int:
        key = (instance.sop_class_uid, instance.transfer_syntax)
        if self._plan_index >= 0 and key in self._plans[self._plan_index].serves:
            return self._plan_index
        for index, plan in enumerate(self._plans):
            if key in plan.serves:
                return index
        raise ValueError(f"instance {instance.sop_instance_uid} is not in the context plan")

    def store(self, instance: Instance) -> StoreOutcome:
        """C-STORE one instance; PeerError only when the peer can no longer be reached."""
        index = self._plan_for(instance)
        if self._assoc is None or not self._assoc.is_established or index != self._plan_index:
            self._associate(index)
        assoc = self._assoc
        accepted = [
            cx for cx in assoc.accepted_contexts if cx.abstract_syntax == instance.sop_class_uid
        ]
        exact = any(cx.transfer_syntax[0] == instance.transfer_syntax for cx in accepted)
        warning = None
        if exact and instance.meta_mismatch:
            # Streaming from the file would announce the File Meta's UIDs; the dataset's
            # UIDs are the ones every PACS indexes, so send the decoded dataset under them.
            payload: object = _dataset_with_own_identity(instance)
            warning = f"{instance.meta_mismatch}: sent under the dataset's UIDs, re-encoded"
        elif exact and needs_padding(
            instance.transfer_syntax, instance.size - instance.dataset_offset
        ):
            return self._send_padded(assoc, instance)
        elif exact:
            payload = instance.path
        elif accepted and self._can_reencode(instance, accepted):
            payload = _dataset_with_own_identity(instance)
            warning = (
                f"re-encoded from {uid_name(instance.transfer_syntax)} to "
                f"{uid_name(accepted[0].transfer_syntax[0])}: the peer accepted no context "
                f"in the file's own syntax"
            )
        elif self._may_decompress(instance, accepted):
            try:
                payload = decompressed(instance.path, instance.transfer_syntax)
            except TranscodeError as exc:
                return StoreOutcome("failed", None, str(exc), retryable=False)
            lossy = instance.transfer_syntax in LOSSY_COMPRESSED
            warning = (
                f"decompressed from {uid_name(instance.transfer_syntax)}"
                + (" (lossy: --allow-lossy-transcode)" if lossy else " (lossless)")
                + f": the peer accepts {uid_name(instance.sop_class_uid)} only uncompressed; "
                "the dataset the peer holds differs from the file's"
            )
        else:
            return self._no_context(instance, accepted)
        return self._c_store(assoc, payload, warning)

    def _send_padded(self, assoc: Any, instance: Instance) -> StoreOutcome:
        """Send an odd-length deflated dataset with the NULL byte PS3.5 A.5 requires."""
        with tempfile.TemporaryDirectory(prefix="dvdexit-pad-") as tmp:
            padded = Path(tmp) / "padded.dcm"
            with instance.path.open("rb") as src, padded.open("wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK_SIZE)
                dst.write(b"\x00")
            return self._c_store(
                assoc,
                padded,
                "deflated dataset of odd length: sent with the trailing NULL byte PS3.5 requires",
            )

    def _c_store(self, assoc: Any, payload: object, warning: str | None) -> StoreOutcome:
        try:
            status = assoc.send_c_store(payload)
        except (ValueError, AttributeError, OSError) as exc:
            return StoreOutcome("failed", None, f"could not send: {exc}", retryable=False)
        except RuntimeError as exc:  # the association died under us
            self._assoc = None
            return StoreOutcome("failed", None, f"association lost: {exc}", retryable=True)
        if "Status" not in status:
            aborted = assoc.is_aborted
            self._release()
            if aborted:
                reason = (
                    "the peer aborted the association while this instance was sent; "
                    "whether it kept the instance is unknown"
                )
            else:
                reason = (
                    f"no C-STORE response within {self._ae.dimse_timeout:g} s; whether the "
                    f"peer kept the instance is unknown"
                )
            return StoreOutcome("failed", None, reason, retryable=True)
        code = int(status.Status)
        meaning = classify_store_status(code)
        comment = status.get("ErrorComment")
        text = f"{code:04X} {meaning.text}" + (f": {comment}" if comment else "")
        if meaning.category == "success":
            return StoreOutcome("sent", code, warning)
        if meaning.category == "warning":
            return StoreOutcome("sent", code, text if warning is None else f"{text}; {warning}")
        return StoreOutcome("failed", code, text, retryable=meaning.retryable)

    def _may_decompress(self, instance: Instance, accepted: Sequence[Any]) -> bool:
        if not any(cx.transfer_syntax[0] in UNCOMPRESSED for cx in accepted):
            return False
        ts = instance.transfer_syntax
        return ts in LOSSLESS_COMPRESSED or (self._allow_lossy and ts in LOSSY_COMPRESSED)

    @staticmethod
    def _can_reencode(instance: Instance, accepted: Sequence[Any]) -> bool:
        return instance.transfer_syntax in UNCOMPRESSED and any(
            cx.transfer_syntax[0] in UNCOMPRESSED for cx in accepted
        )

    def _no_context(self, instance: Instance, accepted: Sequence[Any]) -> StoreOutcome:
        sop = uid_name(instance.sop_class_uid)
        ts = uid_name(instance.transfer_syntax)
        if not accepted:
            reason = f"the peer accepts no presentation context for {sop}"
        elif instance.transfer_syntax == _DEFLATED:
            reason = f"the peer does not accept {sop} in {ts}; inflating is not supported yet"
        elif instance.transfer_syntax in LOSSY_COMPRESSED:
            reason = (
                f"the peer accepts {sop} only as "
                f"{', '.join(uid_name(cx.transfer_syntax[0]) for cx in accepted)}, not in {ts}; "
                f"the file is lossy compressed and is not re-encoded unless "
                f"--allow-lossy-transcode is given"
            )
        else:
            reason = (
                f"the peer accepts {sop} only as "
                f"{', '.join(uid_name(cx.transfer_syntax[0]) for cx in accepted)}, not in {ts}"
            )
        return StoreOutcome("failed", None, reason, retryable=False)
