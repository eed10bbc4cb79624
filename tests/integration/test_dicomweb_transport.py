"""DICOMweb transport limits: the per-request time budget, client certificates, timeouts.

A small STOW-RS server of the test's own (plain or https, optionally requiring a client
certificate signed by a CA made in the test with trustme) reads slowly, stalls or answers
at a trickle on purpose. Outcomes are asserted, never timings.
"""

from __future__ import annotations

import io
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import trustme
from peers import LOOPBACK, free_port, run_dvdexit

from dvdexit_cli.config import DicomWebPeer, PeerBook, resolve_paths
from dvdexit_cli.dicom.digest import dataset_digest
from dvdexit_cli.dicom.scan import scan
from dvdexit_cli.errors import ConfigError, PeerUnreachableError
from dvdexit_cli.journal import Journal
from dvdexit_cli.samples import write_study
from dvdexit_cli.transport.dicomweb import DicomwebTransport
from dvdexit_cli.transport.factory import dicomweb_transport
from dvdexit_cli.transport.multipart import boundary_of, split_parts
from dvdexit_cli.verify_remote import Expected, verify_remote_dicomweb


@dataclass
class Server:
    """What the scripted server does (``mode``) and what it stored."""

    url: str = ""
    mode: str = "ok"
    """ok | stall (reads nothing, never answers) | trickle-body (reads the body a few
    KiB at a time) | trickle-answer (reads the body, answers one byte at a time)."""
    ok_first: int = 0
    """Requests answered normally before ``mode`` applies."""
    gather: int = 0
    """Hold each request until this many have been in flight together (or 10 s)."""
    peak: int = 0
    stored: list[str] = field(default_factory=list)
    held: dict[str, bytes] = field(default_factory=dict)
    """SOP Instance UID -> the bytes stored (served back by QIDO-RS and WADO-RS)."""
    stop: threading.Event = field(default_factory=threading.Event)


def _parts(body: bytes, content_type: str) -> list[bytes]:
    parts: list[io.BytesIO] = []

    class _Part(io.BytesIO):
        def close(self) -> None:  # keep the bytes after split_parts closes it
            return None

    def open_part(_index: int) -> Any:
        parts.append(_Part())
        return parts[-1]

    split_parts([body], boundary_of(content_type), open_part)
    return [p.getvalue() for p in parts]


def _uids(body: bytes, content_type: str) -> list[str]:
    return [
        str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)
        for data in _parts(body, content_type)
    ]


def _serve(
    state: Server, context: ssl.SSLContext | None, *, receive_buffer: int = 0
) -> Iterator[Server]:
    lock = threading.Lock()
    gathering = threading.Condition()
    active = [0]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_HEAD(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            if state.mode == "stall":
                state.stop.wait(60)
                return
            path = self.path.split("?")[0].split("/")
            if path[-1] == "instances":  # QIDO-RS: /dicom-web/studies/{uid}/instances
                listed = [
                    {
                        "00080016": {"vr": "UI", "Value": [str(ds.SOPClassUID)]},
                        "00080018": {"vr": "UI", "Value": [str(ds.SOPInstanceUID)]},
                        "0020000E": {"vr": "UI", "Value": [str(ds.SeriesInstanceUID)]},
                    }
                    for ds in (
                        pydicom.dcmread(io.BytesIO(b), stop_before_pixels=True)
                        for b in state.held.values()
                    )
                    if str(ds.StudyInstanceUID) == path[-2]
                ]
                self._answer(200, json.dumps(listed).encode())
            elif "instances" in path and path[-1] in state.held:  # WADO-RS, one instance
                data = state.held[path[-1]]
                body = b"--wado\r\nContent-Type: application/dicom\r\n\r\n" + data
                self._answer(200, body + b"\r\n--wado--\r\n", "multipart/related; boundary=wado")
            else:
                self._answer(200, b"[]")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            with lock:
                state.ok_first -= 1
                mode = "ok" if state.ok_first >= 0 else state.mode
            if mode == "stall":
                state.stop.wait(60)
                return
            if mode == "trickle-body":
                body = b""
                while len(body) < length:
                    piece = self.rfile.read(min(4096, length - len(body)))
                    if not piece or state.stop.is_set():
                        return  # the client gave up, as it should
                    body += piece
                    time.sleep(0.01)
            else:
                body = self.rfile.read(length)
            with gathering:
                active[0] += 1
                state.peak = max(state.peak, active[0])
                gathering.notify_all()
                gathering.wait_for(lambda: state.peak >= state.gather, timeout=10)
                active[0] -= 1
            parts = _parts(body, self.headers["Content-Type"])
            uids = [
                str(pydicom.dcmread(io.BytesIO(d), stop_before_pixels=True).SOPInstanceUID)
                for d in parts
            ]
            items = [{"00081155": {"vr": "UI", "Value": [u]}} for u in uids]
            data = json.dumps({"00081199": {"vr": "SQ", "Value": items}}).encode()
            if mode == "trickle-answer":
                self.send_response(200)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(data) + 100_000))
                self.end_headers()
                try:
                    while not state.stop.is_set():
                        self.wfile.write(b" ")
                        self.wfile.flush()
                        time.sleep(0.05)
                except OSError:
                    return  # the client gave up, as it should
                return
            with lock:
                state.stored.extend(uids)
                state.held.update(zip(uids, parts, strict=True))
            self._answer(200, data)

        def _answer(
            self, status: int, data: bytes, content_type: str = "application/dicom+json"
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
    if receive_buffer:  # set before listen(): accepted sockets inherit it
        server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    server.server_bind()
    server.server_activate()
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    scheme = "https" if context is not None else "http"
    state.url = f"{scheme}://127.0.0.1:{server.server_address[1]}/dicom-web"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.stop.set()
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def server() -> Iterator[Server]:
    yield from _serve(Server(), None)


@dataclass
class Pki:
    ca: Path
    client_cert: Path
    client_key: Path
    server_cert: Path
    server_key: Path
    other_ca: Path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca, other = trustme.CA(), trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1")
    client = ca.issue_cert("hosp-a.example")
    files = Pki(*(tmp_path / n for n in ("ca.pem", "c.pem", "c.key", "s.pem", "s.key", "o.pem")))
    ca.cert_pem.write_to_path(str(files.ca))
    other.cert_pem.write_to_path(str(files.other_ca))
    client.cert_chain_pems[0].write_to_path(str(files.client_cert))
    client.private_key_pem.write_to_path(str(files.client_key))
    server_cert.cert_chain_pems[0].write_to_path(str(files.server_cert))
    server_cert.private_key_pem.write_to_path(str(files.server_key))
    files.client_key.chmod(0o600)
    return files


def _server_context(pki: Pki, *, signed_by_other: bool = False) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if signed_by_other:
        imposter = trustme.CA().issue_cert("127.0.0.1")
        imposter.configure_cert(context)
    else:
        context.load_cert_chain(pki.server_cert, pki.server_key)
    context.load_verify_locations(pki.ca)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


@pytest.fixture
def tls_server(pki: Pki) -> Iterator[Server]:
    yield from _serve(Server(), _server_context(pki))


def _journal_states(home: Path, stdout: str) -> dict[str, tuple[str, bool]]:
    transfer = json.loads(stdout)["transfer_id"]
    with Journal(resolve_paths({"DVDEXIT_HOME": str(home)}).journal_file) as journal:
        return {i.sop_instance_uid: (i.state, i.retryable) for i in journal.items(transfer)}


# -- the time budget ---------------------------------------------------------------------


def test_the_budget_grows_with_the_bytes_sent() -> None:
    peer = DicomWebPeer("web", "http://127.0.0.1:1/dicom-web", min_rate=1024 * 1024)
    transport = dicomweb_transport(peer)
    try:
        small, large = transport.budget(1 << 20), transport.budget(1 << 30)
    finally:
        transport.close()
    # 1 GiB more at 1 MiB/s: 1023 s more, on top of the connect and read timeouts.
    assert large - small == pytest.approx(1023.0)
    assert small == pytest.approx(peer.connect_timeout + peer.read_timeout + 1.0)


@pytest.mark.parametrize("mode", ["stall", "trickle-answer"])
def test_a_peer_that_stalls_or_trickles_is_given_up_on_and_nothing_counts_as_sent(
    tmp_path: Path, dvdexit_home: Path, server: Server, mode: str
) -> None:
    # Larger than the loopback socket buffers, so a slow reader really holds the body back.
    write_study(tmp_path / "study", n_instances=3, seed=f"slow-{mode}", rows=1024, cols=1024)
    instances = scan([tmp_path / "study"]).instances
    server.mode = mode
    added = run_dvdexit(
        "peers", "add", "web", "--dicomweb", server.url, "--connect-timeout", "1",
        "--read-timeout", "1", "--min-rate", "1G", home=dvdexit_home,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr

    done = run_dvdexit(
        "send", tmp_path / "study", "--to", "web", "--retries", "0", "--workers", "1",
        "--json", home=dvdexit_home,
    )  # fmt: skip

    assert done.returncode == 6, done.stderr
    result = json.loads(done.stdout)
    assert (result["sent"], result["failed"]) == (0, len(instances))
    states = _journal_states(dvdexit_home, done.stdout)
    assert states == {i.sop_instance_uid: ("failed", True) for i in instances}
    assert server.stored == []
    if mode == "trickle-answer":
        # Bytes keep coming (no read timeout), so only the budget can stop this one.
        reasons = {f["reason"] for f in result["failures"]}
        assert all("time budget" in r for r in reasons), reasons


def test_a_slow_reader_meets_the_budget_while_the_body_streams(tmp_path: Path) -> None:
    write_study(tmp_path / "study", n_instances=2, seed="slow-body", rows=1024, cols=1024)
    instances = scan([tmp_path / "study"]).instances
    # Small socket buffers on both sides: the body cannot hide in them, and the slow
    # reader frees room often, so no single write waits long enough for the read/write
    # timeout; only the request's total budget can end it.
    small = [(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)]
    for state in _serve(Server(mode="trickle-body"), None, receive_buffer=16384):
        client = httpx.Client(
            transport=httpx.HTTPTransport(socket_options=small),
            timeout=httpx.Timeout(2.0, connect=0.5),
        )
        transport = DicomwebTransport(
            state.url, name="web", client=client, connect_timeout=0.5, read_timeout=2.0,
            min_rate=1 << 30,
        )  # fmt: skip
        try:
            result = transport.store_batch(instances)
        finally:
            transport.close()
        assert state.stored == []

    assert {uid: (o.state, o.retryable) for uid, o in result.outcomes.items()} == {
        i.sop_instance_uid: ("failed", True) for i in instances
    }
    reasons = {o.reason or "" for o in result.outcomes.values()}
    assert all("time budget" in r for r in reasons), reasons


def test_the_budget_holds_for_every_batch_not_only_the_first(
    tmp_path: Path, server: Server
) -> None:
    write_study(tmp_path / "study", n_instances=3, seed="second-batch")
    instances = scan([tmp_path / "study"]).instances
    server.mode, server.ok_first = "trickle-answer", 1
    transport = DicomwebTransport(server.url, name="web", connect_timeout=0.5, read_timeout=1.0)
    try:
        first = transport.store_batch(instances[:1])
        second = transport.store_batch(instances[1:])
    finally:
        transport.close()

    assert [o.state for o in first.outcomes.values()] == ["sent"]
    assert {(o.state, o.retryable) for o in second.outcomes.values()} == {("failed", True)}
    assert all("time budget" in (o.reason or "") for o in second.outcomes.values())
    assert server.stored == [instances[0].sop_instance_uid]


def test_after_a_stalled_attempt_the_retry_sends_everything(
    tmp_path: Path, dvdexit_home: Path, server: Server
) -> None:
    write_study(tmp_path / "study", n_instances=2, seed="slow-then-ok")
    server.mode = "trickle-answer"
    run_dvdexit(
        "peers", "add", "web", "--dicomweb", server.url, "--read-timeout", "1",
        "--connect-timeout", "1", home=dvdexit_home,
    )  # fmt: skip
    first = run_dvdexit(
        "send", tmp_path / "study", "--to", "web", "--retries", "0", "--json", home=dvdexit_home
    )
    server.mode = "ok"
    again = run_dvdexit("send", "--retry-failed", "--json", home=dvdexit_home)

    assert first.returncode == 6, first.stderr
    assert again.returncode == 0, again.stderr
    assert sorted(server.stored) == sorted(_journal_states(dvdexit_home, first.stdout))
    assert set(_journal_states(dvdexit_home, first.stdout).values()) == {("sent", False)}


def test_verify_over_dicomweb_honours_its_timeout(tmp_path: Path, server: Server) -> None:
    server.mode = "stall"
    peer = DicomWebPeer("web", server.url)
    expected = [
        Expected(
            sop_instance_uid="1.2.3.4.5",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
            study_uid="1.2.3",
            transfer_syntax="1.2.840.10008.1.2.1",
            digest="0" * 64,
            path="x.dcm",
        )
    ]
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            verify_remote_dicomweb(peer, expected, timeout=0.5)
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    # The peer's own read timeout is 120 s; a verify that ignored its 0.5 s would still
    # be waiting long after this generous guard.
    thread.join(timeout=60)

    assert outcome, "verify ignored its timeout"
    assert isinstance(outcome[0], PeerUnreachableError)
    assert dicomweb_transport(peer, timeout=3)._client.timeout == httpx.Timeout(3)


def test_workers_send_batches_of_one_study_concurrently(
    tmp_path: Path, dvdexit_home: Path, server: Server
) -> None:
    write_study(tmp_path / "study", n_instances=6, seed="workers")
    instances = scan([tmp_path / "study"]).instances
    server.gather = 3
    run_dvdexit("peers", "add", "web", "--dicomweb", server.url, home=dvdexit_home)

    done = run_dvdexit(
        "send", tmp_path / "study", "--to", "web", "--workers", "3", "--batch-size", "1",
        "--json", home=dvdexit_home,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert server.peak == 3
    assert sorted(server.stored) == sorted(i.sop_instance_uid for i in instances)
    assert set(_journal_states(dvdexit_home, done.stdout).values()) == {("sent", False)}


def test_retry_failed_puts_the_peers_workers_in_flight(
    tmp_path: Path, dvdexit_home: Path, server: Server
) -> None:
    write_study(tmp_path / "study", n_instances=6, seed="retry-workers")
    instances = scan([tmp_path / "study"]).instances
    # First the peer is down (nothing listens at its address): every item is not sent.
    down = f"http://{LOOPBACK}:{free_port()}/dicom-web"
    run_dvdexit("peers", "add", "web", "--dicomweb", down, "--workers", "3", home=dvdexit_home)
    failed = run_dvdexit(
        "send", tmp_path / "study", "--to", "web", "--retries", "0", "--json", home=dvdexit_home
    )
    assert failed.returncode == 5, failed.stderr
    assert set(_journal_states(dvdexit_home, failed.stdout).values()) == {("pending", False)}
    moved = run_dvdexit(
        "peers", "add", "web", "--replace", "--dicomweb", server.url, "--workers", "3",
        home=dvdexit_home,
    )  # fmt: skip
    assert moved.returncode == 0, moved.stderr
    server.gather = 3

    done = run_dvdexit("send", "--retry-failed", "--batch-size", "1", "--json", home=dvdexit_home)

    assert done.returncode == 0, done.stderr
    assert server.peak == 3  # no --workers: the peer's 3 requests were in flight at once
    assert sorted(server.stored) == sorted(i.sop_instance_uid for i in instances)  # each once
    assert set(_journal_states(dvdexit_home, failed.stdout).values()) == {("sent", False)}


# -- client certificates -----------------------------------------------------------------


def _add_tls_peer(home: Path, url: str, pki: Pki, *, cert: bool = True) -> None:
    extra = ["--client-cert", pki.client_cert, "--client-key", pki.client_key] if cert else []
    added = run_dvdexit(
        "peers", "add", "web", "--dicomweb", url, "--ca-bundle", pki.ca, *extra, home=home
    )
    assert added.returncode == 0, added.stderr


def test_send_status_verify_and_pull_with_a_client_certificate(
    tmp_path: Path, dvdexit_home: Path, tls_server: Server, pki: Pki
) -> None:
    write_study(tmp_path / "study", n_instances=3, seed="mtls")
    instances = scan([tmp_path / "study"]).instances
    _add_tls_peer(dvdexit_home, tls_server.url, pki)

    status = run_dvdexit("status", "--peer", "web", "--json", home=dvdexit_home)
    done = run_dvdexit("send", tmp_path / "study", "--to", "web", "--json", home=dvdexit_home)
    shown = run_dvdexit("peers", "show", "web", "--json", home=dvdexit_home)
    verified = run_dvdexit("verify", "--peer", "web", "--transfer", "1", home=dvdexit_home)
    pulled = run_dvdexit(
        "receive", "--from", "web", "--study", instances[0].study_uid, "--store",
        tmp_path / "pulled", "--json", home=dvdexit_home,
    )  # fmt: skip

    assert status.returncode == 0, status.stdout + status.stderr
    stages = {s["stage"]: s["status"] for s in json.loads(status.stdout)["stages"]}
    assert stages["tls"] == "ok", stages
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["sent"] == len(instances)
    assert sorted(tls_server.stored) == sorted(i.sop_instance_uid for i in instances)
    assert json.loads(shown.stdout)["client_cert"] == str(pki.client_cert.resolve())
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    by_uid = {i.sop_instance_uid: i for i in instances}
    held = set(by_uid)
    back = {str(pydicom.dcmread(f).SOPInstanceUID): f for f in (tmp_path / "pulled").rglob("*.dcm")}
    assert set(back) == set(held)
    assert all(dataset_digest(back[u])[1] == i.digest for u, i in by_uid.items())


def test_without_the_client_certificate_the_send_fails_clearly_and_sends_nothing(
    tmp_path: Path, dvdexit_home: Path, tls_server: Server, pki: Pki
) -> None:
    write_study(tmp_path / "study", n_instances=2, seed="no-cert")
    instances = scan([tmp_path / "study"]).instances
    _add_tls_peer(dvdexit_home, tls_server.url, pki, cert=False)

    done = run_dvdexit(
        "send", tmp_path / "study", "--to", "web", "--retries", "0", "--json", home=dvdexit_home
    )
    status = run_dvdexit("status", "--peer", "web", "--json", home=dvdexit_home)

    assert done.returncode == 5, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["sent"] == 0
    assert "TLS" in result["error"] and "client certificate" in result["error"], result["error"]
    states = _journal_states(dvdexit_home, done.stdout)
    assert states == {i.sop_instance_uid: ("pending", False) for i in instances}  # not sent
    assert tls_server.stored == []
    assert status.returncode == 5
    stages = {s["stage"]: s["status"] for s in json.loads(status.stdout)["stages"]}
    assert stages["tls"] == "failed", stages


def test_a_server_certificate_from_another_ca_is_refused(
    tmp_path: Path, dvdexit_home: Path, pki: Pki
) -> None:
    write_study(tmp_path / "study", n_instances=2, seed="imposter")
    for state in _serve(Server(), _server_context(pki, signed_by_other=True)):
        _add_tls_peer(dvdexit_home, state.url, pki)
        done = run_dvdexit(
            "send", tmp_path / "study", "--to", "web", "--retries", "0", "--json",
            home=dvdexit_home,
        )  # fmt: skip
        assert state.stored == []

    assert done.returncode == 5, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["sent"] == 0
    assert "not trusted" in result["error"], result["error"]


def test_a_key_file_readable_by_everyone_is_refused(
    tmp_path: Path, dvdexit_home: Path, pki: Pki, tls_server: Server
) -> None:
    pki.client_key.chmod(0o644)

    added = run_dvdexit(
        "peers", "add", "web", "--dicomweb", tls_server.url, "--client-cert", pki.client_cert,
        "--client-key", pki.client_key, home=dvdexit_home,
    )  # fmt: skip

    assert added.returncode == 3
    assert "readable by every user" in added.stderr and "chmod o-r" in added.stderr
    assert not len(PeerBook(resolve_paths({"DVDEXIT_HOME": str(dvdexit_home)}).peers_file))
    # A key that became world-readable after the peer was added is refused at use too.
    peer = DicomWebPeer(
        "web", tls_server.url, client_cert=str(pki.client_cert), client_key=str(pki.client_key)
    )
    with pytest.raises(ConfigError, match="readable by every user"):
        dicomweb_transport(peer)
    assert os.stat(pki.client_key).st_mode & 0o004


def test_client_certificate_settings_are_checked(tmp_path: Path, dvdexit_home: Path) -> None:
    home = dvdexit_home
    plain = run_dvdexit(
        "peers", "add", "web", "--dicomweb", "http://127.0.0.1:1/dicom-web", "--client-cert",
        __file__, home=home,
    )  # fmt: skip
    orphan_key = run_dvdexit(
        "peers", "add", "web", "--dicomweb", "https://127.0.0.1:1/dicom-web", "--client-key",
        __file__, home=home,
    )  # fmt: skip
    bad_rate = run_dvdexit(
        "peers", "add", "web", "--dicomweb", "https://127.0.0.1:1/dicom-web", "--min-rate",
        "fast", home=home,
    )  # fmt: skip
    peers_file = resolve_paths({"DVDEXIT_HOME": str(home)}).peers_file
    peers_file.write_text(
        '[peers.web]\nkind = "dicomweb"\nurl = "https://x.example/dicom-web"\nread_timeout = 0\n'
    )
    broken = run_dvdexit("peers", "list", home=home)

    assert plain.returncode == 3 and "https" in plain.stderr
    assert orphan_key.returncode == 2 and "--client-cert" in orphan_key.stderr
    # A bad option value is a usage error (exit 2) like any other since issue 12 (was 3).
    assert bad_rate.returncode == 2 and "--min-rate" in bad_rate.stderr
    assert broken.returncode == 3 and "read_timeout" in broken.stderr
