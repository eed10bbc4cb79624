"""Associations over a TCP connection that we opened (and timed) ourselves.

pynetdicom's ``AE.associate`` creates and connects its own socket, so whoever wants to time
the TCP connect or the TLS handshake on their own, or to say in the operating system's words
why a connect failed, used to open a second connection and close it at once. Some DICOM
implementations log every connection that closes without an A-ASSOCIATE-RQ as an error, and
some legacy ones stop serving after it. Here the caller connects once (and handshakes, for
TLS) and the association then runs over that very socket: no connection is ever empty.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.transport import T_CONNECT, AddressInformation, AssociationSocket

from dvdexit_cli.errors import PeerUnreachableError

__all__ = ["HandoffAE", "connect_tcp"]


def connect_tcp(host: str, port: int, *, timeout: float) -> socket.socket:
    """A connected TCP socket to ``host:port`` with Nagle off; PeerUnreachableError if not.

    The error's message is the operating system's reason in plain words, its hint the next
    step for that reason.
    """
    address = f"{host}:{port}"
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror as exc:
        raise PeerUnreachableError(
            f"cannot resolve host {host!r}: {exc.strerror}",
            hint=f"check the host name and this machine's DNS ('getent hosts {host}')",
        ) from exc
    except TimeoutError as exc:
        raise PeerUnreachableError(
            f"no answer from {address} within {timeout:g} s",
            hint="a firewall may drop the traffic, or the host is down; check the route and "
            "the firewall rules for this port",
        ) from exc
    except ConnectionRefusedError as exc:
        raise PeerUnreachableError(
            f"connection to {address} refused: nothing listens on port {port}",
            hint="check that the peer's DICOM service runs and that the port is right",
        ) from exc
    except OSError as exc:
        raise PeerUnreachableError(
            f"cannot connect to {address}: {exc.strerror or exc}",
            hint="check the network route to the peer",
        ) from exc
    # pynetdicom sends a C-STORE as several writes: with Nagle on, each costs a delayed-ACK
    # round (PEERS.md). Failing to set it is not fatal, only slower.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class _ConnectedSocket(AssociationSocket):
    """An AssociationSocket whose transport connection is already open.

    The requestor's state machine still asks it to connect (Evt2 must follow the
    T-CONNECT request); it then only reports the connection that exists.
    """

    def __init__(self, assoc: Association, connected: socket.socket) -> None:
        self._connected = connected
        # The address is never bound: _create_socket hands back the open socket.
        super().__init__(assoc, address=AddressInformation.from_tuple(("", 0)))

    def _create_socket(self, address: AddressInformation) -> socket.socket:
        self._is_connected = False
        return self._connected

    def connect(self, primitive: T_CONNECT) -> None:
        sock = self._connected
        try:
            # As pynetdicom leaves a socket it connected: blocking, reads gated by select.
            sock.settimeout(None)
            self.assoc.requestor.address_info = AddressInformation.from_tuple(sock.getsockname())
            self._is_connected = True
            evt.trigger(self.assoc, evt.EVT_CONN_OPEN, {"address": primitive.address_info.as_tuple})
            primitive.result = "Evt2"  # transport connection confirmed
        except OSError:
            self._shutdown_socket()
            self.socket = None
            primitive.result = "Evt17"  # transport connection closed
        finally:
            self.provider_queue.put(primitive)
            self._ready.set()


_ASSOCIATE_RJ = 0x03


class HandoffAE(AE):
    """An AE that can request an association over a socket the caller already connected.

    It also keeps a peer's rejection that pynetdicom loses: when the peer sends
    A-ASSOCIATE-RJ and closes the connection at once, pynetdicom's reactor sometimes
    takes the close first and reports an abort without an answer (seen against Orthanc
    in about 1 of 30 attempts on a loaded machine, with pynetdicom's own sockets too).
    The rejection PDU did arrive; it is decoded here so that the caller can name the
    peer's reason instead of calling the peer unreachable.
    """

    def __init__(self, ae_title: str = "PYNETDICOM") -> None:
        super().__init__(ae_title=ae_title)
        self._handoff = threading.local()

    def associate(self, addr: str, port: int, **kwargs: Any) -> Association:  # type: ignore[override]
        """``AE.associate``, with a rejection that pynetdicom lost restored (see above)."""
        received: list[bytes] = []

        def keep_rejection(event: evt.Event) -> None:
            data = bytes(event.data)
            if data[:1] == bytes([_ASSOCIATE_RJ]) and not received:
                received.append(data)

        handlers = list(kwargs.pop("evt_handlers", None) or [])
        handlers.append((evt.EVT_DATA_RECV, keep_rejection))
        assoc = super().associate(addr, port, evt_handlers=handlers, **kwargs)
        if received and not assoc.is_established and not assoc.is_rejected:
            pdu = A_ASSOCIATE_RJ()
            pdu.decode(received[0])
            assoc.acceptor.primitive = pdu.to_primitive()
            assoc.is_rejected = True
            assoc.is_aborted = False
        return assoc

    def associate_over(
        self, sock: socket.socket, host: str, port: int, **kwargs: Any
    ) -> Association:
        """``associate(host, port, **kwargs)`` over ``sock`` (plain or TLS, connected).

        The association owns the socket afterwards; a failed negotiation closes it.
        """
        self._handoff.sock = sock
        try:
            assoc = self.associate(host, port, **kwargs)
        except BaseException:
            sock.close()
            raise
        finally:
            self._handoff.sock = None
        if not assoc.is_established:
            sock.close()  # pynetdicom closes it on most paths; never leave one open
        return assoc

    def _create_socket(
        self,
        assoc: Association,
        address: AddressInformation,
        tls_args: tuple[ssl.SSLContext, str] | None,
    ) -> AssociationSocket:
        sock: socket.socket | None = getattr(self._handoff, "sock", None)
        if sock is None:
            return super()._create_socket(assoc, address, tls_args)
        if tls_args is not None:
            raise ValueError("wrap the handed-over socket in TLS before associating")
        return _ConnectedSocket(assoc, sock)
