"""TLS contexts for DICOM associations: TLS 1.2 at least, client certificates optional.

A server given a CA bundle requires and checks client certificates (mutual TLS); a
client checks the server's certificate against its CA bundle and the host name.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dvdexit_cli.errors import ConfigError

__all__ = [
    "HandshakeFailed",
    "client_context",
    "handshake_failure_reason",
    "report_handshake_failures",
    "server_context",
]


def _load(context: ssl.SSLContext, cert: Path | None, key: Path | None, ca: Path | None) -> None:
    try:
        if cert is not None:
            context.load_cert_chain(certfile=cert, keyfile=key)
        if ca is not None:
            context.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load TLS certificate, key or CA: {exc}",
            hint="check the --tls-cert, --tls-key and --tls-ca files (PEM)",
        ) from exc


HandshakeFailed = Callable[[str, str], None]
"""Told of a failed TLS handshake: the client's address (HOST:PORT) and why, in words."""

# OpenSSL's reason codes, as a receiver's operator should read them.
_PLAIN = ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNEXPECTED_MESSAGE", "RECORD_LAYER_FAILURE")
_WE_ARE_DISTRUSTED = ("TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE")
_OLD_PROTOCOL = ("UNSUPPORTED_PROTOCOL", "NO_PROTOCOLS_AVAILABLE", "TLSV1_ALERT_PROTOCOL_VERSION")


def handshake_failure_reason(exc: ssl.SSLError) -> str:
    """Why a client's TLS handshake failed, with what to check."""
    code = str(getattr(exc, "reason", "") or "")
    if code in _PLAIN:
        return "not TLS: the client speaks plain DICOM on the TLS port (configure it for TLS)"
    if code == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return "the client presented no certificate (--tls-ca requires one)"
    if code == "CERTIFICATE_VERIFY_FAILED":
        detail = getattr(exc, "verify_message", None) or "verification failed"
        return f"client certificate not trusted: {detail} (check it against --tls-ca)"
    if code in _WE_ARE_DISTRUSTED:
        return f"the client does not trust our certificate ({code.lower()})"
    if code in _OLD_PROTOCOL:
        return "the client offers no TLS version from 1.2 up"
    return str(code.lower() or exc)


class _HandshakeReportingSocket(ssl.SSLSocket):
    """An accepted TLS socket that reports a handshake failing on its first read."""

    _handshaken = False

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        if self._handshaken:
            return super().recv(buflen, flags)
        try:
            host, port = self.getpeername()[:2]
            address = f"{host}:{port}"
        except OSError:
            address = "an unknown address"
        try:
            data = super().recv(buflen, flags)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            raise  # closed before or while saying anything: a probe, not a client
        except ssl.SSLError as exc:
            callback = getattr(self.context, "on_handshake_failure", None)
            if callback is not None:
                callback(address, handshake_failure_reason(exc))
            raise
        self._handshaken = True
        return data


class _DeferredHandshakeContext(ssl.SSLContext):
    """Server context whose handshake happens on the connection's first read.

    pynetdicom wraps each accepted socket in its accept loop; with the default
    (handshake at wrap time) one client that connects and says nothing blocks every
    other association. Deferred, the handshake runs in that association's own thread,
    where pynetdicom only closes the connection when it fails: ``on_handshake_failure``
    is told who and why.
    """

    sslsocket_class = _HandshakeReportingSocket
    on_handshake_failure: HandshakeFailed | None = None

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        kwargs["do_handshake_on_connect"] = False
        return super().wrap_socket(sock, *args, **kwargs)


def report_handshake_failures(context: ssl.SSLContext, callback: HandshakeFailed) -> None:
    """Have a :func:`server_context` tell ``callback`` of every failed client handshake.

    A context made elsewhere handshakes in pynetdicom's accept loop, out of our reach.
    """
    if isinstance(context, _DeferredHandshakeContext):
        context.on_handshake_failure = callback


def server_context(*, cert: Path, key: Path | None, ca: Path | None) -> ssl.SSLContext:
    """For a listening receiver; with ``ca`` every client must present a certificate."""
    context = _DeferredHandshakeContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(context, cert, key, ca)
    context.verify_mode = ssl.CERT_REQUIRED if ca is not None else ssl.CERT_NONE
    return context


def client_context(
    *, ca: Path | None, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """For a sender; checks the server against ``ca`` (system CAs when None)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca is None:
        context.load_default_certs()
    _load(context, cert, key, ca)
    return context
