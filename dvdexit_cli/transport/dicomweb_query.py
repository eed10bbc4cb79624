"""DICOMweb reads for remote verification: QIDO-RS instance lists and WADO-RS retrieval.

Authentication comes from the secret chain (``dvdexit_cli.credentials``); the secret goes
into the request and nowhere else. httpx errors become ``PeerError`` subclasses here.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from dvdexit_cli.config import DicomWebPeer
from dvdexit_cli.credentials import lookup_secret
from dvdexit_cli.errors import InputError, PeerError, PeerUnreachableError

__all__ = ["CHECK_QIDO", "CHECK_WADO", "client", "qido_instances", "wado_instance"]

CHECK_QIDO = "qido-rs"
CHECK_WADO = "wado-rs"

_SOP_CLASS = "00080016"
_SOP_INSTANCE = "00080018"
_SERIES = "0020000E"


@contextmanager
def client(peer: DicomWebPeer, *, timeout: float = 30.0) -> Iterator[httpx.Client]:
    """An httpx client for ``peer`` with its auth and CA bundle (ConfigError: no secret)."""
    auth: Any = None
    headers: dict[str, str] = {}
    if peer.auth != "none":
        secret = lookup_secret(peer.name)
        if peer.auth == "basic":
            auth = httpx.BasicAuth(peer.user or "", secret.reveal())
        else:
            headers["Authorization"] = f"Bearer {secret.reveal()}"
    verify: Any = (
        ssl.create_default_context(cafile=peer.ca_bundle) if peer.url.startswith("https") else True
    )
    with httpx.Client(auth=auth, headers=headers, timeout=timeout, verify=verify) as http:
        yield http


def _get(http: httpx.Client, peer: DicomWebPeer, path: str, accept: str) -> httpx.Response:
    url = peer.url.rstrip("/") + path
    try:
        response = http.get(url, headers={"Accept": accept})
    except httpx.TransportError as exc:
        raise PeerUnreachableError(
            f"DICOMweb peer {peer.name} unreachable: {type(exc).__name__}",
            hint=f"run 'dvdexit status --peer {peer.name}' for a diagnosis",
        ) from exc
    except httpx.HTTPError as exc:
        raise PeerError(f"DICOMweb request to {peer.name} failed: {type(exc).__name__}") from exc
    if response.status_code in (401, 403):
        raise PeerError(
            f"DICOMweb peer {peer.name} refused our credentials (HTTP {response.status_code})",
            hint=f"check 'dvdexit peers show {peer.name}' and 'dvdexit peers login {peer.name}'",
        )
    return response


def _first(item: dict[str, Any], tag: str) -> str | None:
    values = item.get(tag, {}).get("Value") or []
    return str(values[0]) if values else None


def qido_instances(
    http: httpx.Client, peer: DicomWebPeer, study_uid: str
) -> dict[str, tuple[str, str]]:
    """SOP Instance UID -> (SOP Class UID, Series UID) of the study's instances at the peer."""
    response = _get(http, peer, f"/studies/{study_uid}/instances", "application/dicom+json")
    if response.status_code in (204, 404):
        return {}
    if response.status_code != 200:
        raise PeerError(f"QIDO-RS at {peer.name} answered HTTP {response.status_code}")
    try:
        body = response.json()
    except ValueError as exc:
        raise PeerError(f"QIDO-RS at {peer.name} answered something other than JSON") from exc
    if not isinstance(body, list):
        raise PeerError(f"QIDO-RS at {peer.name} answered JSON that is not a list")
    found: dict[str, tuple[str, str]] = {}
    for item in body:
        if not isinstance(item, dict):
            continue
        uid = _first(item, _SOP_INSTANCE)
        if uid:
            found[uid] = (_first(item, _SOP_CLASS) or "", _first(item, _SERIES) or "")
    return found


def _first_part(body: bytes, content_type: str) -> bytes:
    """The first body part of a multipart/related response."""
    boundary = None
    for parameter in content_type.split(";")[1:]:
        key, _, value = parameter.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip('"')
    if not boundary:
        raise ValueError("multipart response without a boundary")
    delimiter = b"--" + boundary.encode()
    start = body.find(delimiter)
    if start < 0:
        raise ValueError("multipart boundary not found")
    header_end = body.find(b"\r\n\r\n", start)
    end = body.find(b"\r\n" + delimiter, header_end)
    if header_end < 0 or end < 0:
        raise ValueError("multipart body part is not terminated")
    return body[header_end + 4 : end]


def wado_instance(
    http: httpx.Client,
    peer: DicomWebPeer,
    study_uid: str,
    series_uid: str,
    sop_instance_uid: str,
    target: Path,
) -> bool:
    """Fetch one instance as it is stored (``transfer-syntax=*``) into ``target``.

    Returns False when the peer does not have it (HTTP 404).
    """
    response = _get(
        http,
        peer,
        f"/studies/{study_uid}/series/{series_uid}/instances/{sop_instance_uid}",
        'multipart/related; type="application/dicom"; transfer-syntax=*',
    )
    if response.status_code == 404:
        return False
    if response.status_code != 200:
        raise PeerError(f"WADO-RS at {peer.name} answered HTTP {response.status_code}")
    try:
        part = _first_part(response.content, response.headers.get("content-type", ""))
    except ValueError as exc:
        raise PeerError(f"WADO-RS at {peer.name}: {exc}") from exc
    try:
        target.write_bytes(part)
    except OSError as exc:
        raise InputError(f"cannot write a retrieved copy to {target}: {exc.strerror}") from exc
    return True
