"""TLS, in one place: every context dvdexit builds, and the check of every private key.

- :func:`peer_context`: the client context for a configured peer, DIMSE (``tls_*``) or
  DICOMweb (https; ``ca_bundle``, ``client_*``). Every path that reaches a peer builds it
  here: send, ``verify --peer``, ``receive --from``, ``status --peer`` / ``peers test``.
- :func:`receiver_contexts`: the listening receiver's server context and the client
  context its Storage Commitment reports go out with.
- :func:`check_key_file`: a private key (or a certificate file holding one) that every
  user of the machine can read is refused (ConfigError, exit 3), at every use, before
  anything connects: a key anyone can copy lets anyone pose as us.

TLS 1.2 at least everywhere. A server given a CA bundle requires and checks client
certificates (mutual TLS); a client checks the server's certificate against its CA bundle
(the system's when none) and the host name. Messages name the peers.toml keys; the CLI
names its options where they are the source (``what`` / ``prefix``).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from dvdexit_cli.config import AnyPeer, DicomWebPeer, DimsePeer
from dvdexit_cli.errors import ConfigError

__all__ = [
    "HandshakeFailed",
    "ReceiverTls",
    "check_key_file",
    "client_context",
    "handshake_failure_reason",
    "peer_context",
    "receiver_contexts",
    "report_handshake_failures",
    "server_context",
]


def check_key_file(path: str | Path, *, what: str) -> None:
    """ConfigError when a private key file can be read by every user of the machine.

    Like ssh with an unprotected key: a key anyone can copy identifies anyone as us.
    Group-readable stays allowed (a service group such as Debian's ssl-cert). ``what``
    names the file for the user (``tls_key``, or the option it came from).
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


def _check_key(cert: str | Path | None, key: str | Path | None, *, prefix: str) -> None:
    """Check our private key: ``key``, or inside ``cert`` when there is no key file.

    A file that does not exist is left to the loading, which names it.
    """
    secret = key or cert
    if secret and Path(secret).exists():
        check_key_file(secret, what=f"{prefix}key" if key else f"{prefix}cert")


def _load(context: ssl.SSLContext, cert: Path | None, key: Path | None, ca: Path | None) -> None:
    try:
        if cert is not None:
            context.load_cert_chain(certfile=cert, keyfile=key)
        if ca is not None:
            context.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load TLS certificate, key or CA: {exc}",
            hint="check that the certificate, key and CA files are readable PEM",
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
    """For a listening receiver; with ``ca`` every client must present a certificate.

    Checks no key file: :func:`receiver_contexts` does, for dvdexit's own receiver.
    """
    context = _DeferredHandshakeContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(context, cert, key, ca)
    context.verify_mode = ssl.CERT_REQUIRED if ca is not None else ssl.CERT_NONE
    return context


def client_context(
    *, ca: Path | None, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """For a sender; checks the server against ``ca`` (system CAs when None).

    Checks no key file: :func:`peer_context` does, for a configured peer.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca is None:
        context.load_default_certs()
    _load(context, cert, key, ca)
    return context


def _path(value: str | Path | None) -> Path | None:
    return Path(value) if value else None


def peer_context(peer: AnyPeer) -> ssl.SSLContext | None:
    """The client TLS context for ``peer``, its key file checked; None without TLS.

    DIMSE: with ``tls_ca`` or ``tls_cert``. DICOMweb: for an https URL. ConfigError (naming
    the peer and the key) for a key readable by everyone or files that do not load.
    """
    if isinstance(peer, DimsePeer):
        if not peer.uses_tls:
            return None
        files = (peer.tls_ca, peer.tls_cert, peer.tls_key)
        prefix, keys = "tls_", "tls_ca, tls_cert and tls_key"
    elif isinstance(peer, DicomWebPeer):
        if not peer.url.startswith("https://"):
            return None
        files = (peer.ca_bundle, peer.client_cert, peer.client_key)
        prefix, keys = "client_", "ca_bundle, client_cert and client_key"
    else:
        return None
    ca, cert, key = files
    try:
        _check_key(cert, key, prefix=prefix)
    except ConfigError as exc:
        raise ConfigError(f"peer {peer.name}: {exc.message}", hint=exc.hint) from exc
    try:
        return client_context(ca=_path(ca), cert=_path(cert), key=_path(key))
    except ConfigError as exc:
        raise ConfigError(
            f"peer {peer.name}: {exc.message}",
            hint=f"check {keys} ('dvdexit peers show {peer.name}')",
        ) from exc


class ReceiverTls(NamedTuple):
    """A receiver's TLS: it listens with ``server``; its commitment reports use ``client``."""

    server: ssl.SSLContext
    client: ssl.SSLContext


def receiver_contexts(
    *, cert: Path, key: Path | None, ca: Path | None, prefix: str = "tls_"
) -> ReceiverTls:
    """Our receiver's contexts, its key file checked (``prefix`` names the files in
    messages: ``tls_`` for the ``[receive]`` keys, ``--tls-`` for the options)."""
    _check_key(cert, key, prefix=prefix)
    try:
        return ReceiverTls(
            server=server_context(cert=cert, key=key, ca=ca),
            # Reports on a new association go out with TLS too: our certificate, their CA.
            client=client_context(ca=ca, cert=cert, key=key),
        )
    except ConfigError as exc:
        raise ConfigError(
            exc.message, hint=f"check the {prefix}cert, {prefix}key and {prefix}ca files (PEM)"
        ) from exc
