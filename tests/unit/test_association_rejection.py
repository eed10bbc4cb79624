"""A peer's A-ASSOCIATE-RJ is named even when the peer closes the connection at once.

pynetdicom's reactor sometimes takes the close before the rejection and reports an abort
without an answer (seen against Orthanc about once in 30 attempts on a loaded machine);
`HandoffAE` keeps the rejection PDU that did arrive, so that every caller names the peer's
reason ("Called AE title not recognised") instead of calling the peer unreachable.
"""

from __future__ import annotations

import socket
import struct
import threading

from pynetdicom.sop_class import Verification

from dvdexit_cli.transport.handoff import HandoffAE, connect_tcp

# A-ASSOCIATE-RJ: rejected-permanent (1), by the service user (1), called AE title not
# recognised (7): PS3.8 9.3.4.
_REJECT = bytes([0x03, 0x00]) + struct.pack(">I", 4) + bytes([0x00, 0x01, 0x01, 0x07])


def _read_pdu(conn: socket.socket) -> bytes:
    header = b""
    while len(header) < 6:
        chunk = conn.recv(6 - len(header))
        if not chunk:
            return header
        header += chunk
    (length,) = struct.unpack(">I", header[2:6])
    body = b""
    while len(body) < length:
        chunk = conn.recv(length - len(body))
        if not chunk:
            break
        body += chunk
    return header + body


class _RejectAndHangUp:
    """Reads each A-ASSOCIATE-RQ, answers A-ASSOCIATE-RJ and closes at once."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.requests = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                if _read_pdu(conn)[:1] == b"\x01":
                    self.requests += 1
                    conn.sendall(_REJECT)

    def close(self) -> None:
        self.server.close()
        self._thread.join(timeout=5)


def test_a_rejection_followed_by_a_hang_up_is_always_named() -> None:
    peer = _RejectAndHangUp()
    outcomes: list[tuple[bool, str | None]] = []
    try:
        for n in range(40):
            ae = HandoffAE("DVDEXIT")
            ae.add_requested_context(Verification)
            ae.acse_timeout = 10
            if n % 2:
                assoc = ae.associate("127.0.0.1", peer.port, ae_title="NOT_THERE")
            else:
                sock = connect_tcp("127.0.0.1", peer.port, timeout=5)
                assoc = ae.associate_over(sock, "127.0.0.1", peer.port, ae_title="NOT_THERE")
            primitive = assoc.acceptor.primitive
            outcomes.append(
                (assoc.is_rejected, primitive.reason_str if primitive is not None else None)
            )
    finally:
        peer.close()
    assert peer.requests == 40
    assert outcomes == [(True, "Called AE title not recognised")] * 40
