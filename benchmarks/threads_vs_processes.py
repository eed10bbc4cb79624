"""Two associations from two threads vs two processes: the same engine code, same data.

    .venv/bin/python benchmarks/threads_vs_processes.py [--rounds 2] [--studies 10]
        [--per-study 200]

Times only the sending (scan and process start-up excluded), into DCMTK ``storescp --fork
+B`` writing to /dev/shm (TCP_NODELAY=1): one association (a thread), two associations
from two threads sharing one interpreter (the GIL), and two from two worker processes
(what ``dvdexit send --workers 2`` does). Nothing is asserted: these are measurements.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from dvdexit_cli.config import DimsePeer
from dvdexit_cli.dicom.scan import scan
from dvdexit_cli.journal import Journal
from dvdexit_cli.journal.store import new_claim
from dvdexit_cli.samples import make_small_instances
from dvdexit_cli.sending.rounds import RoundContext, RoundSettings, send_rounds
from dvdexit_cli.sending.workers import partition, send_parallel
from dvdexit_cli.transport.dimse import DimseTransport


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--studies", type=int, default=10)
    parser.add_argument("--per-study", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dvdexit-tvp-") as tmp:
        root = Path(tmp)
        data = root / "in"
        for n in range(args.studies):
            make_small_instances(data / f"s{n}", args.per_study, seed=f"tvp-{n}")
        found = scan([data])
        out = Path(tempfile.mkdtemp(prefix="dvdexit-tvp-", dir="/dev/shm"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        scp = subprocess.Popen(
            ["storescp", "--fork", "--aetitle", "B", "+B", "-od", str(out), str(port)],
            env={**os.environ, "TCP_NODELAY": "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1)
        peer = DimsePeer(name="b", host="127.0.0.1", port=port, called_ae="B")

        def run(mode: str, workers: int, number: int) -> tuple[float, int]:
            shutil.rmtree(out)
            out.mkdir()
            journal = Journal(root / f"journal-{number}.sqlite")
            claim = new_claim()
            _, ids = journal.create_transfer(
                peer="b", peer_address="-", inputs=[data], instances=found.instances,
                rejected=[], claim=claim,
            )  # fmt: skip
            shares = partition(list(zip(ids, found.instances, strict=True)), workers)
            start = time.perf_counter()
            if mode == "processes":
                send_parallel(
                    journal.path, RoundSettings(claim=claim),
                    lambda obs: DimseTransport(peer, observer=obs), shares, lambda event: None,
                )  # fmt: skip
            else:

                def go(share: list) -> None:  # type: ignore[type-arg]
                    own = Journal(journal.path)
                    transport = DimseTransport(peer)
                    rules = RoundSettings(retries=2, retry_delay=0.1, claim=claim)
                    send_rounds(RoundContext(own, rules), transport, share)
                    transport.close()
                    own.close()

                threads = [threading.Thread(target=go, args=(share,)) for share in shares]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
            elapsed = time.perf_counter() - start
            journal.close()
            return elapsed, sum(1 for _ in out.iterdir())

        try:
            number = 0
            for _ in range(args.rounds):
                for mode, workers in (("threads", 1), ("threads", 2), ("processes", 2)):
                    number += 1
                    elapsed, stored = run(mode, workers, number)
                    print(
                        f"{mode:<10} associations={workers} {elapsed:6.2f} s  {stored} stored  "
                        f"{stored / elapsed:6.0f} instances/s",
                        flush=True,
                    )
        finally:
            scp.terminate()
            scp.wait()
            shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
