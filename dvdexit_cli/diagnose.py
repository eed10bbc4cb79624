"""Staged diagnosis of a DIMSE peer: DNS -> TCP -> TLS -> association -> C-ECHO -> contexts.

Each stage is timed and reported on its own; the diagnosis stops at the first stage that
fails and gives a hint for that exact failure, so a PACS administrator (or a monitoring
check) learns in one command *where* a link is broken. Nothing here prints.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pynetdicom import StoragePresentationContexts
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dvdexit_cli.config import AnyPeer, DicomWebPeer, DimsePeer, FolderPeer
from dvdexit_cli.credentials import lookup_secret
from dvdexit_cli.errors import ConfigError, PeerUnreachableError
from dvdexit_cli.exitcodes import ExitCode
from dvdexit_cli.tls import peer_context
from dvdexit_cli.transport.handoff import HandoffAE, connect_tcp

__all__ = [
    "Diagnosis",
    "StageResult",
    "diagnose",
    "diagnose_dicomweb",
    "diagnose_dimse",
    "diagnose_folder",
    "explain_rejection",
    "tls_context",
]

log = logging.getLogger(__name__)

STAGES = ("dns", "tcp", "tls", "association", "echo", "contexts")

# A-ASSOCIATE-RJ (PS3.8 9.3.4): (source, diagnostic) -> what it means and what to do.
_REJECTIONS: dict[tuple[int, int], tuple[str, str]] = {
    (1, 1): (
        "rejected by the peer's application, no reason given",
        "ask the peer's administrator to check its log for our AE titles and address",
    ),
    (1, 2): (
        "application context name not supported",
        "the peer does not speak standard DICOM on this port; check the port",
    ),
    (1, 3): (
        "calling AE title not recognised: the peer does not accept our AE title {calling}",
        "ask the peer's administrator to register {calling} (with our address), or change "
        "calling_ae for this peer",
    ),
    (1, 7): (
        "called AE title not recognised: the peer does not know {called}",
        "the peer's AE title is not {called}; fix it with 'dvdexit peers add {name} "
        "--replace ... --ae CORRECT_AE' (compare 'dvdexit peers show {name}')",
    ),
    (2, 1): ("rejected by the peer's DICOM stack, no reason given", "check the peer's log"),
    (2, 2): (
        "protocol version not supported",
        "the peer does not accept DICOM protocol version 1; check the port",
    ),
    (3, 1): ("temporary congestion at the peer", "the peer is busy: retry later"),
    (3, 2): (
        "local limit exceeded: the peer has too many associations open",
        "retry later, or use fewer workers for this peer",
    ),
}


def explain_rejection(source: int, diagnostic: int, peer: DimsePeer) -> tuple[str, str]:
    """What an A-ASSOCIATE-RJ (source, reason) means, and the next step, for ``peer``."""
    text, hint = _REJECTIONS.get(
        (source, diagnostic),
        (
            f"rejected (source {source}, reason {diagnostic})",
            "check the peer's configuration for our AE titles",
        ),
    )
    values = {"called": peer.called_ae, "calling": peer.calling_ae, "name": peer.name}
    return text.format(**values), hint.format(**values)


@dataclass(frozen=True)
class StageResult:
    """One stage of a diagnosis."""

    stage: str
    status: str  # "ok", "failed" or "skipped"
    seconds: float
    detail: str
    hint: str | None = None
    data: dict[str, object] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "stage": self.stage,
            "status": self.status,
            "seconds": round(self.seconds, 4),
            "detail": self.detail,
            "hint": self.hint,
            **({"data": self.data} if self.data else {}),
        }


@dataclass(frozen=True)
class Diagnosis:
    """All stages run for one peer; healthy when none failed."""

    peer: str
    kind: str
    address: str
    stages: tuple[StageResult, ...]

    @property
    def failed_stage(self) -> StageResult | None:
        return next((s for s in self.stages if s.status == "failed"), None)

    @property
    def healthy(self) -> bool:
        return self.failed_stage is None

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.OK if self.healthy else ExitCode.PEER_UNREACHABLE

    def to_json(self) -> dict[str, object]:
        failed = self.failed_stage
        return {
            "peer": self.peer,
            "kind": self.kind,
            "address": self.address,
            "healthy": self.healthy,
            "failed_stage": failed.stage if failed else None,
            "stages": [s.to_json() for s in self.stages],
            "exit_code": int(self.exit_code),
        }


class _StageFailed(Exception):
    def __init__(self, detail: str, hint: str, data: dict[str, object] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.hint = hint
        self.data = data or {}


def tls_context(peer: DimsePeer) -> ssl.SSLContext:
    """Kept one release for old imports: use :func:`dvdexit_cli.tls.peer_context`."""
    context = peer_context(peer)
    if context is None:
        raise ConfigError(f"peer {peer.name} does not use TLS")
    return context


def _dns(peer: DimsePeer, timeout: float) -> tuple[str, dict[str, object]]:
    try:
        infos = socket.getaddrinfo(peer.host, peer.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise _StageFailed(
            f"cannot resolve host {peer.host!r}: {exc.strerror}",
            f"check the host name of peer {peer.name} and this machine's DNS "
            f"('getent hosts {peer.host}')",
        ) from exc
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    return f"{peer.host} -> {', '.join(addresses)}", {"addresses": addresses}


def _tcp(peer: DimsePeer, timeout: float) -> tuple[socket.socket, str]:
    """The connection the association will then use; the caller owns (and closes) it."""
    try:
        sock = connect_tcp(peer.host, peer.port, timeout=timeout)
    except PeerUnreachableError as exc:
        raise _StageFailed(exc.message, exc.hint or "check the network route to the peer") from exc
    return sock, f"connected to {peer.address} from {sock.getsockname()[0]}"


def _tls(
    peer: DimsePeer,
    timeout: float,
    *,
    context: ssl.SSLContext,
    probe: Callable[[ssl.SSLSocket], None] | None = None,
    fields: tuple[str, str, str] = ("tls_ca", "tls_cert", "tls_key"),
) -> tuple[str, dict[str, object]]:
    """Handshake on a connection of its own; ``probe`` then exchanges data (TLS 1.3 refuses a
    client certificate only then). For DICOMweb peers, where an HTTP request follows."""
    try:
        raw = connect_tcp(peer.host, peer.port, timeout=timeout)
    except PeerUnreachableError as exc:
        raise _StageFailed(exc.message, exc.hint or "check the network route") from exc
    tls, detail, data = _tls_session(peer, raw, context=context, fields=fields)
    try:
        with tls:
            if probe is not None:
                probe(tls)
    except (ssl.SSLError, OSError) as exc:
        raise _tls_failure(peer, exc, fields) from exc
    return detail, data


def _tls_failure(peer: DimsePeer, exc: BaseException, fields: tuple[str, str, str]) -> _StageFailed:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _StageFailed(
            f"the peer's certificate is not trusted: {exc.verify_message}",
            f"check that {fields[0]} holds the CA that signed the peer's certificate, that "
            "the certificate has not expired and that it names " + peer.host,
        )
    return _StageFailed(
        f"TLS handshake with {peer.address} failed: {exc}",
        "the peer may not speak TLS on this port, or may require a client certificate "
        f"({fields[1]} / {fields[2]}) or not trust ours",
    )


def _tls_session(
    peer: DimsePeer,
    raw: socket.socket,
    *,
    context: ssl.SSLContext,
    fields: tuple[str, str, str] = ("tls_ca", "tls_cert", "tls_key"),
) -> tuple[ssl.SSLSocket, str, dict[str, object]]:
    """Handshake over the connected ``raw``: the TLS socket, a detail and data (with the
    certificate's subject and expiry). Closes ``raw`` when the handshake fails."""
    try:
        tls = context.wrap_socket(raw, server_hostname=peer.host)
    except (ssl.SSLError, OSError) as exc:
        raw.close()
        raise _tls_failure(peer, exc, fields) from exc
    cert = tls.getpeercert() or {}
    version = tls.version() or "unknown"
    rdns: Any = cert.get("subject", ())
    subject = ", ".join(f"{k}={v}" for rdn in rdns for (k, v) in rdn)
    expires = str(cert.get("notAfter", ""))
    data: dict[str, object] = {"subject": subject, "not_after": expires, "protocol": version}
    days = None
    if expires:
        expiry = datetime.fromtimestamp(ssl.cert_time_to_seconds(expires), UTC)
        days = (expiry - datetime.now(UTC)).days
        data["days_left"] = days
    detail = f"{version}, certificate {subject}, expires {expires} ({days} days left)"
    if days is not None and days < 30:
        # Still healthy today; a monitor reading the JSON can alert before it breaks.
        data["warning"] = f"the peer's certificate expires in {days} day(s)"
        detail += f"; WARNING: {data['warning']}"
    return tls, detail, data


def _associate(
    peer: DimsePeer, timeout: float, contexts: Sequence[Any], sock: socket.socket
) -> tuple[Any, str, dict[str, object]]:
    """Request an association over ``sock`` (connected, and TLS-wrapped for a TLS peer)."""
    ae = HandoffAE(ae_title=peer.calling_ae)
    ae.connection_timeout = timeout
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    assoc = ae.associate_over(
        sock,
        peer.host,
        peer.port,
        contexts=list(contexts),
        ae_title=peer.called_ae,
        max_pdu=peer.pdu_limit,
    )
    if assoc.is_established:
        accepted = len(assoc.accepted_contexts)
        return (
            assoc,
            f"accepted: {peer.calling_ae} -> {peer.called_ae}, max PDU "
            f"{int(assoc.acceptor.maximum_length or 0)}",
            {"max_pdu": int(assoc.acceptor.maximum_length or 0), "accepted_contexts": accepted},
        )
    primitive = assoc.acceptor.primitive
    if assoc.is_rejected and primitive is not None:
        text, hint = explain_rejection(
            int(primitive.result_source or 0), int(primitive.diagnostic or 0), peer
        )
        transient = int(primitive.result or 0) == 2
        raise _StageFailed(
            f"association rejected ({'transient' if transient else 'permanent'}): {text}",
            hint,
            {
                "result": int(primitive.result or 0),
                "source": int(primitive.result_source or 0),
                "reason": int(primitive.diagnostic or 0),
            },
        )
    if primitive is not None:
        raise _StageFailed(
            "the peer aborted the association during negotiation",
            "the peer may refuse our AE titles or address; check its log",
        )
    raise _StageFailed(
        "no association: the peer did not answer the request",
        "the port may belong to something that is not DICOM (or needs TLS); check the port",
    )


def _proposed_contexts(verification: bool) -> list[Any]:
    contexts = [build_context(Verification)] if verification else []
    # The storage SOP classes a send would propose, within DICOM's 128-context limit.
    return contexts + [
        build_context(str(cx.abstract_syntax)) for cx in StoragePresentationContexts[:127]
    ]


def diagnose_dimse(
    peer: DimsePeer,
    *,
    timeout: float = 10.0,
    contexts: bool = False,
    clock: Callable[[], float] = time.monotonic,
) -> Diagnosis:
    """Diagnose ``peer`` stage by stage, stopping at the first failure.

    The TCP connection the tcp stage opens (and the tls stage wraps) is the one the
    association stage then uses: a diagnosis never leaves a connection that closed
    without an A-ASSOCIATE-RQ, which some DICOM implementations log as an error or, in
    legacy ones, take as fatal. ``contexts`` negotiates the storage SOP classes in a second
    association of its own, so that a peer refusing a 128-context request does not hide
    the result of the echo.
    """
    results: list[StageResult] = []
    # A TLS configuration problem is ours (exit 3): find it before connecting at all.
    context = peer_context(peer)

    def finish() -> Diagnosis:
        return Diagnosis(peer.name, peer.kind, peer.address, tuple(results))

    holder: dict[str, Any] = {}
    try:
        return _dimse_stages(peer, timeout, contexts, context, results, clock, holder, finish)
    finally:
        leftover = holder.pop("sock", None)
        if leftover is not None:  # a stage raised between connect and associate
            leftover.close()


def _dimse_stages(
    peer: DimsePeer,
    timeout: float,
    contexts: bool,
    context: ssl.SSLContext | None,
    results: list[StageResult],
    clock: Callable[[], float],
    holder: dict[str, Any],
    finish: Callable[[], Diagnosis],
) -> Diagnosis:
    run = _runner(results, clock)
    if not run("dns", lambda: _dns(peer, timeout)):
        return finish()

    def tcp() -> tuple[str, dict[str, object]]:
        holder["sock"], detail = _tcp(peer, timeout)
        return detail, {}

    def tls() -> tuple[str, dict[str, object]]:
        assert context is not None  # the stage runs only for a peer that uses TLS
        holder["sock"], detail, data = _tls_session(peer, holder.pop("sock"), context=context)
        return detail, data

    if not run("tcp", tcp):
        return finish()
    if context is not None:
        if not run("tls", tls):
            return finish()
    else:
        results.append(StageResult("tls", "skipped", 0.0, "not configured for this peer"))

    def associate() -> tuple[str, dict[str, object]]:
        assoc, detail, data = _associate(
            peer, timeout, _proposed_contexts(True)[:1], holder.pop("sock")
        )
        holder["assoc"] = assoc
        return detail, data

    if not run("association", associate):
        return finish()
    assoc = holder["assoc"]
    try:

        def echo() -> tuple[str, dict[str, object]]:
            status = assoc.send_c_echo()
            code = getattr(status, "Status", None)
            if code is None:
                raise _StageFailed(
                    "no C-ECHO response (timeout or aborted association)",
                    "the peer accepted the association but did not answer; check its log",
                )
            if code != 0:
                raise _StageFailed(
                    f"C-ECHO answered with status 0x{int(code):04X}",
                    "the peer refuses verification; check its log",
                    {"status": f"{int(code):04X}"},
                )
            return "C-ECHO success (0000)", {"status": "0000"}

        if not run("echo", echo):
            return finish()
    finally:
        if assoc.is_established:
            assoc.release()

    if contexts:

        def negotiate() -> tuple[str, dict[str, object]]:
            proposed = _proposed_contexts(False)
            sock, _ = _tcp(peer, timeout)
            if context is not None:
                sock, _, _ = _tls_session(peer, sock, context=context)
            probe, _, _ = _associate(peer, timeout, proposed, sock)
            try:
                accepted = sorted({str(cx.abstract_syntax) for cx in probe.accepted_contexts})
                rejected = sorted(
                    {str(cx.abstract_syntax) for cx in probe.rejected_contexts} - set(accepted)
                )
            finally:
                if probe.is_established:
                    probe.release()
            data: dict[str, object] = {
                "proposed": len(proposed),
                "accepted": accepted,
                "rejected": rejected,
            }
            if not accepted:
                raise _StageFailed(
                    "the peer accepted none of the storage SOP classes we propose",
                    "the peer cannot store images from us; check its storage configuration",
                    data,
                )
            return (
                f"{len(accepted)} of {len(proposed)} storage SOP classes accepted",
                data,
            )

        run("contexts", negotiate)
    return finish()


def _runner(
    results: list[StageResult], clock: Callable[[], float]
) -> Callable[[str, Callable[[], tuple[str, dict[str, object]]]], bool]:
    def run(stage: str, step: Callable[[], tuple[str, dict[str, object]]]) -> bool:
        start = clock()
        try:
            detail, data = step()
        except _StageFailed as failure:
            results.append(
                StageResult(
                    stage, "failed", clock() - start, failure.detail, failure.hint, failure.data
                )
            )
            return False
        results.append(StageResult(stage, "ok", clock() - start, detail, None, data))
        return True

    return run


def diagnose_dicomweb(
    peer: DicomWebPeer,
    *,
    timeout: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
) -> Diagnosis:
    """DNS -> TCP -> TLS (https) -> HTTP auth -> a QIDO-RS request, stopping at a failure."""
    import httpx

    from dvdexit_cli.transport.dicomweb import tls_refusal

    url = httpx.URL(peer.url)
    https = url.scheme == "https"
    port = url.port or (443 if https else 80)
    host = url.host
    # The DIMSE stages work on any host:port; reuse them through a stand-in peer.
    stand_in = DimsePeer(name=peer.name, host=host, port=port, called_ae="-", tls_ca=peer.ca_bundle)
    fields = ("ca_bundle", "client_cert", "client_key")

    def http_probe(tls: ssl.SSLSocket) -> None:
        # One HEAD request proves the session carries data: under TLS 1.3 a server that
        # refuses our certificate says so only after the handshake.
        path = url.raw_path.decode("ascii", "replace") or "/"
        tls.sendall(f"HEAD {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        try:
            tls.recv(1)
        except TimeoutError:
            return  # a slow web server is the next stages' business

    results: list[StageResult] = []
    run = _runner(results, clock)

    def finish() -> Diagnosis:
        return Diagnosis(peer.name, peer.kind, peer.url, tuple(results))

    def tcp() -> tuple[str, dict[str, object]]:
        # An HTTP server takes a connection without a request calmly (unlike some DICOM
        # ones, see diagnose_dimse); the HTTP stages below use connections of their own.
        sock, detail = _tcp(stand_in, timeout)
        sock.close()
        return detail, {}

    # A TLS configuration problem is ours (exit 3): find it before connecting at all.
    context = peer_context(peer)
    if not run("dns", lambda: _dns(stand_in, timeout)) or not run("tcp", tcp):
        return finish()
    if context is not None:
        if not run(
            "tls",
            lambda: _tls(stand_in, timeout, context=context, probe=http_probe, fields=fields),
        ):
            return finish()
    else:
        results.append(StageResult("tls", "skipped", 0.0, "plain http"))

    holder: dict[str, Any] = {}

    def auth() -> tuple[str, dict[str, object]]:
        headers = {"Accept": "application/dicom+json"}
        credentials: Any = None
        if peer.auth != "none":
            # No secret at all is a configuration problem (exit 3), not an unhealthy peer.
            secret = lookup_secret(peer.name)
            if peer.auth == "basic":
                credentials = httpx.BasicAuth(peer.user or "", secret.reveal())
            else:
                headers["Authorization"] = f"Bearer {secret.reveal()}"
        verify: Any = context if context is not None else True
        try:
            response = httpx.get(
                peer.url.rstrip("/") + "/studies",
                params={"limit": "1"},
                headers=headers,
                auth=credentials,
                timeout=timeout,
                verify=verify,
            )
        except httpx.HTTPError as exc:
            refusal = tls_refusal(exc)
            raise _StageFailed(
                f"HTTP request failed: {refusal or type(exc).__name__}",
                "check the URL's path and that the service answers HTTP"
                if refusal is None
                else "check ca_bundle, client_cert and client_key",
            ) from exc
        holder["response"] = response
        if response.status_code in (401, 403):
            what = "no credentials were sent" if peer.auth == "none" else "they were refused"
            raise _StageFailed(
                f"HTTP {response.status_code}: the peer requires authentication and {what}",
                f"check the user and the secret ('dvdexit peers login {peer.name}'), or the "
                f"auth kind ('dvdexit peers show {peer.name}')",
                {"http_status": response.status_code},
            )
        return f"HTTP {response.status_code} ({peer.auth} auth)", {
            "http_status": response.status_code
        }

    if not run("auth", auth):
        return finish()

    def qido() -> tuple[str, dict[str, object]]:
        response = holder["response"]
        if response.status_code == 204:
            return "QIDO-RS answered: no studies", {"studies": 0}
        if response.status_code != 200:
            raise _StageFailed(
                f"QIDO-RS answered HTTP {response.status_code}",
                "check that the URL is the DICOMweb base (it ends before /studies)",
                {"http_status": response.status_code},
            )
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, list):
            raise _StageFailed(
                "QIDO-RS answer is not a DICOM JSON list",
                "the URL may point at a web page rather than the DICOMweb service",
            )
        return f"QIDO-RS answered with {len(body)} study record(s)", {"studies": len(body)}

    run("qido", qido)
    return finish()


def diagnose_folder(peer: FolderPeer, *, clock: Callable[[], float] = time.monotonic) -> Diagnosis:
    """A drop folder: does it exist, and can we write into it?"""
    import os
    import tempfile

    results: list[StageResult] = []
    run = _runner(results, clock)

    def exists() -> tuple[str, dict[str, object]]:
        if not os.path.isdir(peer.path):
            raise _StageFailed(
                f"{peer.path} is not a folder (or is not mounted)",
                "create it, or mount the share, or fix the path with 'dvdexit peers add "
                f"{peer.name} --replace --folder PATH'",
            )
        return f"{peer.path} exists", {}

    def writable() -> tuple[str, dict[str, object]]:
        try:
            with tempfile.NamedTemporaryFile(dir=peer.path, prefix=".dvdexit-probe-"):
                pass
        except OSError as exc:
            raise _StageFailed(
                f"cannot write into {peer.path}: {exc.strerror or exc}",
                "check the folder's permissions for this user",
            ) from exc
        return "a probe file was written and removed", {}

    if run("path", exists):
        run("write", writable)
    return Diagnosis(peer.name, peer.kind, peer.path, tuple(results))


def diagnose(peer: AnyPeer, *, timeout: float = 10.0, contexts: bool = False) -> Diagnosis:
    """The staged diagnosis that fits the peer's kind."""
    if isinstance(peer, DimsePeer):
        return diagnose_dimse(peer, timeout=timeout, contexts=contexts)
    if isinstance(peer, DicomWebPeer):
        return diagnose_dicomweb(peer, timeout=timeout)
    return diagnose_folder(peer)
