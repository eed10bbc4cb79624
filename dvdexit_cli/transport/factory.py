"""The transport for a configured peer, whatever its kind."""

from __future__ import annotations

import ssl
from collections.abc import Generator
from pathlib import Path

import httpx

from dvdexit_cli.config import AnyPeer, DicomWebPeer, DimsePeer, FolderPeer
from dvdexit_cli.credentials import Secret, lookup_secret
from dvdexit_cli.events import Observer, ignore
from dvdexit_cli.tls import client_context
from dvdexit_cli.transport.base import Transport
from dvdexit_cli.transport.dicomweb import DicomwebTransport
from dvdexit_cli.transport.dimse import DimseTransport
from dvdexit_cli.transport.folder import FolderTransport

__all__ = ["transport_for"]


class _Bearer(httpx.Auth):
    def __init__(self, token: Secret) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token.reveal()}"
        yield request


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def dicomweb_auth(peer: DicomWebPeer) -> httpx.Auth | None:
    """The peer's HTTP authentication, with its secret from the lookup chain."""
    if peer.auth == "basic":
        return httpx.BasicAuth(peer.user or "", lookup_secret(peer.name).reveal())
    if peer.auth == "bearer":
        return _Bearer(lookup_secret(peer.name))
    return None


def transport_for(
    peer: AnyPeer,
    *,
    observer: Observer = ignore,
    note: str | None = None,
    reason: str | None = None,
    allow_lossy_transcode: bool = False,
    recipient: str | None = None,
    as_zip: bool = False,
    as_iso: bool = False,
) -> Transport:
    """Build the transport that reaches ``peer``; ConfigError when a secret is missing."""
    if isinstance(peer, DimsePeer):
        context = None
        if peer.tls_ca or peer.tls_cert:
            context = client_context(
                ca=_path(peer.tls_ca), cert=_path(peer.tls_cert), key=_path(peer.tls_key)
            )
        return DimseTransport(
            peer,
            observer=observer,
            ssl_context=context,
            allow_lossy_transcode=allow_lossy_transcode,
        )
    if isinstance(peer, DicomWebPeer):
        verify: ssl.SSLContext | bool = True
        if peer.ca_bundle:
            verify = ssl.create_default_context(cafile=peer.ca_bundle)
        return DicomwebTransport(
            peer.url,
            name=peer.name,
            auth=dicomweb_auth(peer),
            verify=verify,
        )
    if isinstance(peer, FolderPeer):
        return FolderTransport(
            peer, note=note, reason=reason, recipient=recipient, as_zip=as_zip, as_iso=as_iso
        )
    raise TypeError(f"no transport for peer kind {type(peer).__name__}")
