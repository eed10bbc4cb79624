"""DICOMweb transport (httpx): STOW-RS with streamed multipart bodies, in batches.

The response body decides every instance's outcome, whatever the HTTP status: an
instance in the Referenced SOP Sequence is sent (a Warning Reason is recorded), one in
the Failed SOP Sequence failed with its Failure Reason, and one in neither is unknown and
retryable. HTTP 200, 202 and 409 are only hints. 429 and 503 are retryable (with the
server's Retry-After as the suggested delay); other 5xx, 408 and network errors are
retryable; other 4xx are not.

Each STOW-RS request has a total time budget that grows with its size
(connect + read timeout + bytes / min_rate): a large study never meets a fixed total
timeout, while a peer that stalls or trickles is given up on (its instances stay retryable,
never counted sent). A watchdog enforces it by shutting the request's socket down.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx

from dvdexit_cli.config import DEFAULT_CONNECT_TIMEOUT, DEFAULT_MIN_RATE, DEFAULT_READ_TIMEOUT
from dvdexit_cli.dicom.digest import CHUNK_SIZE
from dvdexit_cli.dicom.scan import Instance
from dvdexit_cli.errors import InputError, PeerError, PeerUnreachableError
from dvdexit_cli.fsmode import PRIVATE
from dvdexit_cli.transport.base import BatchResult, StoreOutcome

__all__ = [
    "CHECK_QIDO",
    "CHECK_WADO",
    "DicomwebTransport",
    "StowBatchResult",
    "parse_stow_response",
    "retrieve_instance",
    "search_studies",
    "study_instances",
    "tls_refusal",
]

_REFERENCED = "00081199"
_FAILED = "00081198"
_SOP_INSTANCE = "00081155"
_FAILURE_REASON = "00081197"
_WARNING_REASON = "00081196"
# 409: the Failed SOP Sequence explains the conflicts; an instance it does not mention
# may simply not have been reached, so it is retried like any unknown one.
_RETRYABLE_4XX = {408, 409, 429}


StowBatchResult = BatchResult


def _value(item: dict[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]


def parse_stow_response(
    status_code: int, body: bytes, uids: Sequence[str], *, retry_after: float | None = None
) -> StowBatchResult:
    """Per-instance outcomes from a STOW-RS response (PS3.18 10.5.3)."""
    outcomes: dict[str, StoreOutcome] = {}
    document: Any = None
    if body.strip():
        try:
            import json

            document = json.loads(body)
        except ValueError:
            document = None
    if isinstance(document, list):  # some servers wrap the dataset in a list
        document = document[0] if document else None
    if isinstance(document, dict):
        for item in (document.get(_REFERENCED) or {}).get("Value", []):
            uid = _value(item, _SOP_INSTANCE)
            warning = _value(item, _WARNING_REASON)
            reason = f"warning {int(warning):04X} from the peer" if warning is not None else None
            if uid:
                outcomes[str(uid)] = StoreOutcome("sent", warning, reason)
        for item in (document.get(_FAILED) or {}).get("Value", []):
            uid = _value(item, _SOP_INSTANCE)
            code = _value(item, _FAILURE_REASON)
            code_int = int(code) if code is not None else None
            retryable = code_int is not None and 0xA700 <= code_int <= 0xA7FF
            text = f"{code_int:04X} " if code_int is not None else ""
            if uid:
                outcomes[str(uid)] = StoreOutcome(
                    "failed",
                    code_int,
                    f"{text}failed at the peer (STOW-RS Failed SOP Sequence)",
                    retryable=retryable,
                )
    unexplained_retryable = (
        status_code < 400 or status_code >= 500 or (status_code in _RETRYABLE_4XX)
    )
    for uid in uids:
        if uid not in outcomes:
            outcomes[uid] = StoreOutcome(
                "failed",
                None,
                f"HTTP {status_code}: the peer's answer does not mention this instance; "
                f"whether it was stored is unknown",
                retryable=unexplained_retryable,
            )
    return StowBatchResult(outcomes, retry_after)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            from datetime import UTC, datetime

            return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
        except (TypeError, ValueError):
            return None


class _OverBudget(Exception):
    """The request's time budget ran out while its body was being produced."""


def tls_refusal(exc: BaseException) -> str | None:
    """What went wrong in TLS, when ``exc`` (or its cause) is a certificate problem.

    None for any other fault. A refused handshake means no request reached the peer.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"its TLS certificate is not trusted: {seen.verify_message}"
        if isinstance(seen, ssl.SSLError):
            reason = str(seen.reason or "")
            if any(k in reason for k in ("CERTIFICATE", "UNKNOWN_CA", "HANDSHAKE", "ACCESS")):
                return (
                    f"it refused our TLS connection ({reason}): it may require a client "
                    f"certificate (client_cert, client_key) or not trust ours"
                )
            return None
        seen = seen.__cause__ or seen.__context__
    return None


class _Watchdog:
    """Shut the request's socket down when its budget runs out (unblocks send and recv)."""

    def __init__(self, budget: float, current: Any) -> None:
        self.expired = False
        self._current = current
        self._timer = threading.Timer(budget, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        self.expired = True
        sock = self._current()
        if sock is not None:
            # The base class's shutdown: an SSLSocket's own would drop its TLS state
            # under the request thread's feet.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()


class DicomwebTransport:
    """STOW-RS to ``base_url`` (e.g. ``http://host:8042/dicom-web``)."""

    def __init__(
        self,
        base_url: str,
        *,
        name: str = "dicomweb",
        auth: httpx.Auth | None = None,
        verify: bool | str | ssl.SSLContext = True,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        min_rate: float = DEFAULT_MIN_RATE,
        client: httpx.Client | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = name
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.min_rate = min_rate
        self._client = client or httpx.Client(
            auth=auth,
            verify=verify,
            # read also bounds each write (a peer that stops reading the body) and the
            # wait for a free connection.
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
        )

    @property
    def description(self) -> str:
        return f"{self.name} ({self.base_url})"

    def budget(self, size: int) -> float:
        """Seconds a STOW-RS request of ``size`` body bytes may take in all."""
        return self.connect_timeout + self.read_timeout + size / self.min_rate

    def open(self, instances: Sequence[Instance]) -> None:
        return None

    def close(self) -> None:
        self._client.close()

    def store(self, instance: Instance) -> StoreOutcome:
        return self.store_batch([instance]).outcomes[instance.sop_instance_uid]

    def store_batch(self, instances: Sequence[Instance]) -> StowBatchResult:
        """STOW one batch; PeerUnreachableError only when nothing could be exchanged."""
        boundary = f"dvdexit-{secrets.token_hex(12)}"
        heads = [
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() for _ in instances
        ]
        tail = f"--{boundary}--\r\n".encode()
        length = sum(len(h) + i.size + 2 for h, i in zip(heads, instances, strict=True))
        length += len(tail)
        budget = self.budget(length)
        deadline = time.monotonic() + budget

        def body() -> Iterator[bytes]:
            for head, inst in zip(heads, instances, strict=True):
                yield head
                with inst.path.open("rb") as fh:
                    while chunk := fh.read(CHUNK_SIZE):
                        if time.monotonic() > deadline:
                            raise _OverBudget
                        yield chunk
                yield b"\r\n"
            yield tail

        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Content-Length": str(length),
            "Accept": "application/dicom+json",
            # A fresh connection per batch: the watchdog learns its socket when it is
            # opened (a kept-alive one would be out of its reach). One handshake per
            # batch of up to --batch-bytes is cheap.
            "Connection": "close",
        }
        uids = [i.sop_instance_uid for i in instances]

        def unknown(reason: str) -> StowBatchResult:
            return StowBatchResult(
                {uid: StoreOutcome("failed", None, reason, retryable=True) for uid in uids}
            )

        over_budget = (
            f"no complete answer within this request's time budget of {budget:.0f} s "
            f"({length} bytes at min_rate {self.min_rate:.0f} bytes/s, plus the connect and "
            f"read timeouts); whether it was stored is unknown"
        )
        opened: list[socket.socket] = []

        def trace(event: str, info: dict[str, Any]) -> None:
            # httpcore's trace extension, called in this request's thread: the socket of
            # this request's connection (after TLS, the wrapped one), for the watchdog.
            if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
                stream = info.get("return_value")
                sock = stream.get_extra_info("socket") if stream is not None else None
                if isinstance(sock, socket.socket):
                    opened.append(sock)

        watchdog = _Watchdog(budget, lambda: opened[-1] if opened else None)
        try:
            response = self._client.post(
                f"{self.base_url}/studies",
                content=body(),
                headers=headers,
                extensions={"trace": trace},
            )
        except _OverBudget:
            return unknown(over_budget)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            refusal = tls_refusal(exc)
            raise PeerUnreachableError(
                f"peer {self.name} unreachable: "
                + (refusal or f"cannot connect to {self.base_url}: {exc}"),
                hint="check ca_bundle, client_cert and client_key ('dvdexit peers show "
                f"{self.name}'), or run 'dvdexit status --peer {self.name}'"
                if refusal
                else "check the URL and that the server runs",
            ) from exc
        except httpx.HTTPError as exc:
            if watchdog.expired:
                return unknown(over_budget)
            refusal = tls_refusal(exc)
            if refusal is not None:
                # TLS 1.3 reports a refused client certificate only on the first read:
                # the handshake failed, so no request reached the peer.
                raise PeerUnreachableError(
                    f"peer {self.name} unreachable: {refusal}",
                    hint=f"check client_cert and client_key ('dvdexit peers show {self.name}')",
                ) from exc
            return unknown(
                f"connection failed during the request: {exc}; whether it was stored is unknown"
            )
        finally:
            watchdog.cancel()
        return parse_stow_response(
            response.status_code, response.content, uids, retry_after=_retry_after(response)
        )


# -- QIDO-RS and WADO-RS: verify and pull ----------------------------------------------

CHECK_QIDO = "qido-rs"
CHECK_WADO = "wado-rs"

_SOP_CLASS = "00080016"
_SOP_UID = "00080018"
_SERIES_UID = "0020000E"
_STUDY_UID = "0020000D"
_STUDY_FIELDS = {
    "study_uid": _STUDY_UID,
    "study_date": "00080020",
    "accession": "00080050",
    "modalities": "00080061",
    "description": "00081030",
    "series": "00201206",
    "instances": "00201208",
}


def _get(
    transport: DicomwebTransport, path: str, accept: str, params: dict[str, Any] | None = None
) -> httpx.Response:
    """GET (body read); PeerUnreachableError on network faults, PeerError on 401/403."""
    url = transport.base_url + path
    try:
        response = transport._client.get(url, headers={"Accept": accept}, params=params)
    except httpx.TransportError as exc:
        raise PeerUnreachableError(
            f"DICOMweb peer {transport.name} unreachable: {type(exc).__name__}",
            hint=f"run 'dvdexit status --peer {transport.name}' for a diagnosis",
        ) from exc
    except httpx.HTTPError as exc:
        raise PeerError(
            f"DICOMweb request to {transport.name} failed: {type(exc).__name__}"
        ) from exc
    _refuse_credentials(transport, response.status_code)
    return response


def _refuse_credentials(transport: DicomwebTransport, status_code: int) -> None:
    if status_code in (401, 403):
        raise PeerError(
            f"DICOMweb peer {transport.name} refused our credentials (HTTP {status_code})",
            hint=f"check 'dvdexit peers show {transport.name}' and the peer's secret",
        )


def _json_list(transport: DicomwebTransport, response: httpx.Response, what: str) -> list[Any]:
    if response.status_code in (204, 404) or not response.content.strip():
        return []
    if response.status_code != 200:
        raise PeerError(f"{what} at {transport.name} answered HTTP {response.status_code}")
    try:
        body = response.json()
    except ValueError as exc:
        raise PeerError(f"{what} at {transport.name} answered something other than JSON") from exc
    if not isinstance(body, list):
        raise PeerError(f"{what} at {transport.name} answered JSON that is not a list")
    return [item for item in body if isinstance(item, dict)]


def study_instances(
    transport: DicomwebTransport, study_uid: str, *, page: int = 1000
) -> dict[str, tuple[str, str]]:
    """QIDO-RS: SOP Instance UID -> (SOP Class UID, Series UID) of a study's instances.

    Pages through the list (``limit``/``offset``); an unknown study is an empty dict.
    """
    found: dict[str, tuple[str, str]] = {}
    offset = 0
    while True:
        params = {"limit": page, "offset": offset, "includefield": _SOP_CLASS}
        response = _get(
            transport, f"/studies/{study_uid}/instances", "application/dicom+json", params
        )
        items = _json_list(transport, response, "QIDO-RS")
        for item in items:
            uid = _value(item, _SOP_UID)
            if uid:
                found[str(uid)] = (
                    str(_value(item, _SOP_CLASS) or ""),
                    str(_value(item, _SERIES_UID) or ""),
                )
        if len(items) < page:
            return found
        offset += len(items)


def search_studies(
    transport: DicomwebTransport, filters: dict[str, str], *, limit: int = 1000
) -> list[dict[str, Any]]:
    """QIDO-RS at study level: one dict per matching study (keys of ``_STUDY_FIELDS``).

    The Patient ID is a matching key only: results never carry it (nor the name).
    """
    params: dict[str, Any] = dict(filters)
    params["limit"] = limit
    params["includefield"] = ",".join(_STUDY_FIELDS.values())
    response = _get(transport, "/studies", "application/dicom+json", params)
    studies = []
    for item in _json_list(transport, response, "QIDO-RS"):
        row: dict[str, Any] = {}
        for key, tag in _STUDY_FIELDS.items():
            values = item.get(tag, {}).get("Value") or []
            if key == "modalities":
                row[key] = [str(v) for v in values]
            elif key in ("series", "instances"):
                row[key] = int(values[0]) if values else None
            else:
                row[key] = str(values[0]) if values else None
        if row["study_uid"]:
            studies.append(row)
    return studies


def retrieve_instance(
    transport: DicomwebTransport,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    dest: Path,
) -> bool:
    """WADO-RS: stream one instance as the peer stores it (``transfer-syntax=*``) to ``dest``.

    Returns False when the peer does not have it (HTTP 404). PeerUnreachableError on a
    network fault, PeerError on any other refusal or a truncated or broken body, InputError
    when ``dest`` cannot be written.
    """
    from dvdexit_cli.transport.multipart import MultipartError, boundary_of, split_parts

    path = f"/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    try:
        with transport._client.stream(
            "GET", transport.base_url + path, headers={"Accept": accept}
        ) as response:
            _refuse_credentials(transport, response.status_code)
            if response.status_code == 404:
                return False
            if response.status_code != 200:
                raise PeerError(f"WADO-RS at {transport.name} answered HTTP {response.status_code}")
            boundary = boundary_of(response.headers.get("Content-Type", ""))
            count = split_parts(
                response.iter_bytes(), boundary, lambda _index: PRIVATE.open_new(dest)
            )
    except httpx.TransportError as exc:
        raise PeerUnreachableError(
            f"DICOMweb peer {transport.name} unreachable during WADO-RS: {type(exc).__name__}",
            hint=f"run 'dvdexit status --peer {transport.name}' for a diagnosis",
        ) from exc
    except httpx.HTTPError as exc:
        raise PeerError(f"WADO-RS at {transport.name} failed: {type(exc).__name__}") from exc
    except MultipartError as exc:
        raise PeerError(f"WADO-RS at {transport.name}: {exc}") from exc
    except OSError as exc:
        raise InputError(f"cannot write a retrieved copy to {dest}: {exc.strerror}") from exc
    if count != 1:
        raise PeerError(f"WADO-RS at {transport.name} returned {count} parts instead of 1")
    return True
