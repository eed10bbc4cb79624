"""TLS contexts for DICOM associations: TLS 1.2 at least, client certificates optional.

A server given a CA bundle requires and checks client certificates (mutual TLS); a
client checks the server's certificate against its CA bundle and the host name.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from dvdexit_cli.errors import ConfigError

__all__ = ["client_context", "server_context"]


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


class _DeferredHandshakeContext(ssl.SSLContext):
    """Server context whose handshake happens on the connection's first read.

    pynetdicom wraps each accepted socket in its accept loop; with the default
    (handshake at wrap time) one client that connects and says nothing blocks every
    other association. Deferred, the handshake runs in that association's own thread.
    """

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        kwargs["do_handshake_on_connect"] = False
        return super().wrap_socket(sock, *args, **kwargs)


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
