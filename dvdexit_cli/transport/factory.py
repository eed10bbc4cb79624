"""The transport for a configured peer, whatever its kind."""

from __future__ import annotations

import ssl
from collections.abc import Generator

import httpx

from dvdexit_cli.config import AnyPeer, DicomWebPeer, DimsePeer, FolderPeer
from dvdexit_cli.credentials import Secret, lookup_secret
from dvdexit_cli.events import Observer, ignore
from dvdexit_cli.tls import check_key_file, client_context, peer_context
from dvdexit_cli.transport.base import Transport
from dvdexit_cli.transport.dicomweb import DicomwebTransport
from dvdexit_cli.transport.dimse import DimseTransport
from dvdexit_cli.transport.folder import FolderTransport

__all__ = ["check_key_file", "dicomweb_ssl_context", "dicomweb_transport", "transport_for"]

# check_key_file and dicomweb_ssl_context stay importable from here for one release;
# both live in dvdexit_cli.tls.


class _Bearer(httpx.Auth):
    def __init__(self, token: Secret) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token.reveal()}"
        yield request


def dicomweb_auth(peer: DicomWebPeer) -> httpx.Auth | None:
    """The peer's HTTP authentication, with its secret from the lookup chain."""
    if peer.auth == "basic":
        return httpx.BasicAuth(peer.user or "", lookup_secret(peer.name).reveal())
    if peer.auth == "bearer":
        return _Bearer(lookup_secret(peer.name))
    return None


def dicomweb_ssl_context(peer: DicomWebPeer) -> ssl.SSLContext:
    """Kept one release for old imports: use :func:`dvdexit_cli.tls.peer_context`."""
    context = peer_context(peer)
    return context if context is not None else client_context(ca=None)


def dicomweb_transport(peer: DicomWebPeer, *, timeout: float | None = None) -> DicomwebTransport:
    """The peer's DICOMweb client; ``timeout`` overrides its connect and read timeouts."""
    context = peer_context(peer)
    verify: ssl.SSLContext | bool = context if context is not None else True
    return DicomwebTransport(
        peer.url,
        name=peer.name,
        auth=dicomweb_auth(peer),
        verify=verify,
        connect_timeout=timeout if timeout is not None else peer.connect_timeout,
        read_timeout=timeout if timeout is not None else peer.read_timeout,
        min_rate=peer.min_rate,
    )


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
        return DimseTransport(
            peer,
            observer=observer,
            ssl_context=peer_context(peer),
            allow_lossy_transcode=allow_lossy_transcode,
        )
    if isinstance(peer, DicomWebPeer):
        return dicomweb_transport(peer)
    if isinstance(peer, FolderPeer):
        return FolderTransport(
            peer, note=note, reason=reason, recipient=recipient, as_zip=as_zip, as_iso=as_iso
        )
    raise TypeError(f"no transport for peer kind {type(peer).__name__}")
