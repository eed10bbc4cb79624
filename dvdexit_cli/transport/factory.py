"""The transport for a configured peer, whatever its kind."""

from __future__ import annotations

import ssl
from collections.abc import Generator
from pathlib import Path

import httpx

from dvdexit_cli.config import AnyPeer, DicomWebPeer, DimsePeer, FolderPeer
from dvdexit_cli.credentials import Secret, lookup_secret
from dvdexit_cli.errors import ConfigError
from dvdexit_cli.events import Observer, ignore
from dvdexit_cli.tls import client_context
from dvdexit_cli.transport.base import Transport
from dvdexit_cli.transport.dicomweb import DicomwebTransport
from dvdexit_cli.transport.dimse import DimseTransport
from dvdexit_cli.transport.folder import FolderTransport

__all__ = ["check_key_file", "dicomweb_ssl_context", "dicomweb_transport", "transport_for"]


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


def check_key_file(path: str, *, what: str = "client_key") -> None:
    """ConfigError when a private key file can be read by every user of the machine.

    Like ssh with an unprotected key: a key anyone can copy identifies anyone as us.
    Group-readable stays allowed (a service group such as Debian's ssl-cert).
    """
    try:
        mode = Path(path).stat().st_mode
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror}") from exc
    if mode & 0o004:
        raise ConfigError(
            f"{what} {path} is readable by every user of this machine: refusing to use it",
            hint=f"chmod o-r {path} (and keep it owned by the account that runs dvdexit)",
        )


def dicomweb_ssl_context(peer: DicomWebPeer) -> ssl.SSLContext:
    """TLS for an https DICOMweb peer: its CA bundle (else the system's), our certificate."""
    key = peer.client_key or peer.client_cert
    if key:
        check_key_file(key, what="client_key" if peer.client_key else "client_cert")
    try:
        return client_context(
            ca=_path(peer.ca_bundle), cert=_path(peer.client_cert), key=_path(peer.client_key)
        )
    except ConfigError as exc:
        raise ConfigError(
            f"peer {peer.name}: {exc.message}",
            hint=f"check ca_bundle, client_cert and client_key ('dvdexit peers show {peer.name}')",
        ) from exc


def dicomweb_transport(peer: DicomWebPeer, *, timeout: float | None = None) -> DicomwebTransport:
    """The peer's DICOMweb client; ``timeout`` overrides its connect and read timeouts."""
    verify: ssl.SSLContext | bool = True
    if peer.url.startswith("https://"):
        verify = dicomweb_ssl_context(peer)
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
        context = None
        key = peer.tls_key or peer.tls_cert
        if key and Path(key).exists():  # a missing file: client_context says so
            # Without tls_key the key must be inside tls_cert: then that file is secret too.
            try:
                check_key_file(key, what="tls_key" if peer.tls_key else "tls_cert")
            except ConfigError as exc:
                raise ConfigError(f"peer {peer.name}: {exc.message}", hint=exc.hint) from exc
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
        return dicomweb_transport(peer)
    if isinstance(peer, FolderPeer):
        return FolderTransport(
            peer, note=note, reason=reason, recipient=recipient, as_zip=as_zip, as_iso=as_iso
        )
    raise TypeError(f"no transport for peer kind {type(peer).__name__}")
