"""DICOMweb transport (httpx): STOW-RS with streamed multipart bodies, in batches.

The response body decides every instance's outcome, whatever the HTTP status: an
instance in the Referenced SOP Sequence is sent (a Warning Reason is recorded), one in
the Failed SOP Sequence failed with its Failure Reason, and one in neither is unknown and
retryable. HTTP 200, 202 and 409 are only hints. 429 and 503 are retryable (with the
server's Retry-After as the suggested delay); other 5xx, 408 and network errors are
retryable; other 4xx are not.
"""

from __future__ import annotations

import secrets
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx

from dvdexit_cli.dicom.digest import CHUNK_SIZE
from dvdexit_cli.dicom.scan import Instance
from dvdexit_cli.errors import PeerUnreachableError
from dvdexit_cli.transport.base import StoreOutcome

__all__ = [
    "DicomwebQueryError",
    "DicomwebTransport",
    "StowBatchResult",
    "parse_stow_response",
    "retrieve_instance",
    "study_instances",
]

_REFERENCED = "00081199"
_FAILED = "00081198"
_SOP_INSTANCE = "00081155"
_FAILURE_REASON = "00081197"
_WARNING_REASON = "00081196"
_RETRYABLE_HTTP = {408, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class StowBatchResult:
    outcomes: dict[str, StoreOutcome]
    retry_after: float | None = None


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
    unexplained_retryable = status_code in _RETRYABLE_HTTP or status_code < 400
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


class DicomwebTransport:
    """STOW-RS to ``base_url`` (e.g. ``http://host:8042/dicom-web``)."""

    def __init__(
        self,
        base_url: str,
        *,
        name: str = "dicomweb",
        auth: httpx.Auth | None = None,
        verify: bool | str | ssl.SSLContext = True,
        connect_timeout: float = 15.0,
        read_timeout: float = 120.0,
        client: httpx.Client | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = name
        self._client = client or httpx.Client(
            auth=auth,
            verify=verify,
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
        )

    @property
    def description(self) -> str:
        return f"{self.name} ({self.base_url})"

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

        def body() -> Iterator[bytes]:
            for head, inst in zip(heads, instances, strict=True):
                yield head
                with inst.path.open("rb") as fh:
                    while chunk := fh.read(CHUNK_SIZE):
                        yield chunk
                yield b"\r\n"
            yield tail

        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Content-Length": str(length),
            "Accept": "application/dicom+json",
        }
        uids = [i.sop_instance_uid for i in instances]
        try:
            response = self._client.post(
                f"{self.base_url}/studies", content=body(), headers=headers
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise PeerUnreachableError(
                f"peer {self.name} unreachable: cannot connect to {self.base_url}: {exc}",
                hint="check the URL and that the server runs",
            ) from exc
        except httpx.HTTPError as exc:
            reason = (
                f"connection failed during the request: {exc}; whether it was stored is unknown"
            )
            return StowBatchResult(
                {uid: StoreOutcome("failed", None, reason, retryable=True) for uid in uids}
            )
        return parse_stow_response(
            response.status_code, response.content, uids, retry_after=_retry_after(response)
        )


class DicomwebQueryError(Exception):
    """A QIDO-RS or WADO-RS request failed (HTTP status or a broken body)."""


def _get(client: httpx.Client, url: str, **kwargs: Any) -> httpx.Response:
    try:
        response = client.get(url, **kwargs)
    except httpx.HTTPError as exc:
        raise DicomwebQueryError(f"GET {url} failed: {exc}") from exc
    if response.status_code == 204:
        return response
    if response.status_code >= 400:
        raise DicomwebQueryError(f"GET {url} answered HTTP {response.status_code}")
    return response


def study_instances(
    transport: DicomwebTransport, study_uid: str, *, page: int = 1000
) -> list[tuple[str, str]]:
    """QIDO-RS: (Series Instance UID, SOP Instance UID) of every instance of a study."""
    found: list[tuple[str, str]] = []
    offset = 0
    while True:
        response = _get(
            transport._client,
            f"{transport.base_url}/studies/{study_uid}/instances",
            params={"limit": page, "offset": offset},
            headers={"Accept": "application/dicom+json"},
        )
        items = response.json() if response.status_code != 204 and response.content else []
        for item in items:
            found.append((str(_value(item, "0020000E")), str(_value(item, "00080018"))))
        if len(items) < page:
            return found
        offset += len(items)


def retrieve_instance(
    transport: DicomwebTransport, study_uid: str, series_uid: str, sop_uid: str, dest: Path
) -> Path:
    """WADO-RS: stream one instance (Part 10) to ``dest``; raise DicomwebQueryError."""
    from dvdexit_cli.transport.multipart import MultipartError, boundary_of, split_parts

    url = f"{transport.base_url}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"
    headers = {"Accept": 'multipart/related; type="application/dicom"'}
    try:
        with transport._client.stream("GET", url, headers=headers) as response:
            if response.status_code >= 400:
                raise DicomwebQueryError(f"GET {url} answered HTTP {response.status_code}")
            boundary = boundary_of(response.headers.get("Content-Type", ""))
            count = split_parts(response.iter_bytes(), boundary, lambda index: dest.open("wb"))
    except (httpx.HTTPError, MultipartError) as exc:
        raise DicomwebQueryError(f"GET {url} failed: {exc}") from exc
    if count != 1:
        raise DicomwebQueryError(f"GET {url} returned {count} parts instead of 1")
    return dest
