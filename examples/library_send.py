"""Use dvdexit as a library, without the CLI: send a folder and inspect the outcome.

Run:  python examples/library_send.py [PEER_NAME]

Without a peer name it sends a small synthetic study to the in-memory peer that ships
with the library; with one, it sends to that DIMSE peer from peers.toml. The library
prints nothing itself: progress arrives as events, rendered here with print().
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from dvdexit_cli import (
    DimseTransport,
    Journal,
    MemoryPeer,
    MemoryTransport,
    PeerBook,
    SendSettings,
    resolve_paths,
    send,
)
from dvdexit_cli.events import Event, InstanceDone
from dvdexit_cli.samples import write_study


def show(event: Event) -> None:
    if isinstance(event, InstanceDone) and event.state == "failed":
        print(f"failed: {event.path.name}: {event.reason}")


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "study"
        write_study(folder, n_instances=8, seed="library-example")
        if len(sys.argv) > 1:
            peer = PeerBook(resolve_paths().peers_file).get(sys.argv[1])
            transport: DimseTransport | MemoryTransport = DimseTransport(peer, observer=show)
            name, address = peer.name, peer.address
        else:
            memory = MemoryPeer()
            transport, name, address = MemoryTransport(memory), "memory", "in memory"
        with Journal(Path(tmp) / "journal.sqlite") as journal:
            result = send(
                SendSettings(inputs=(folder,), peer_name=name, peer_address=address),
                journal=journal,
                transport=transport,
                observer=show,
            )
    print(f"transfer {result.transfer_id}: {result.sent} sent, {result.failed} failed")
    return int(result.exit_code)


if __name__ == "__main__":
    sys.exit(main())
