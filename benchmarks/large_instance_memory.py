"""Memory for one large instance: `dvdexit send` into `dvdexit receive`, peak RSS of each.

    .venv/bin/python benchmarks/large_instance_memory.py [--size-mb 1024] [--tree DIR]

One instance of about --size-mb MB (512x512 16-bit frames, Explicit VR Little Endian),
written under /var/tmp, is sent by `dvdexit send` to `dvdexit receive` on loopback; a
DCMTK `storescu` (16 kB PDUs) into the same receiver gives the reference. Peak RSS is
each process's own maximum resident set (wait4's ru_maxrss), seconds are wall clock.
`--tree DIR` runs the dvdexit of another checkout (for example the main branch before
a change) by putting DIR first on PYTHONPATH. Nothing is asserted: these are
measurements.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import free_port, wait_for

from dvdexit_cli.samples import write_large_instance


def run_measured(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, float, float]:
    """Exit code, seconds and peak RSS (MB) of one process."""
    start = time.monotonic()
    proc = subprocess.Popen(
        args, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode and proc.stderr is not None:
        print(proc.stderr.read().decode(errors="replace"), file=sys.stderr)
    return proc.returncode, time.monotonic() - start, usage.ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dvdexit-bench-", dir="/var/tmp") as tmp:
        root = Path(tmp)
        source = root / "study"
        source.mkdir()
        size = write_large_instance(source / "LARGE.dcm", args.size_mb).stat().st_size
        tree = args.tree.resolve()
        # `python -m` puts the working directory first on sys.path: run from the tree.
        env = {**os.environ, "PYTHONPATH": str(tree)}
        print(f"one instance of {size / 1e6:.0f} MB; dvdexit from {tree}")
        print("| sender | seconds | sender peak RSS MB | receiver peak RSS MB |")
        print("|---|---|---|---|")
        senders = {
            "dvdexit send": [sys.executable, "-m", "dvdexit_cli", "send", str(source)],
            "DCMTK storescu": ["/usr/bin/storescu", "-aec", "DVDEXIT"],
        }
        for name, command in senders.items():
            home, store = root / f"home-{len(name)}", root / f"store-{len(name)}"
            home.mkdir()
            port = free_port()
            receiver = subprocess.Popen(
                [
                    *(sys.executable, "-m", "dvdexit_cli", "receive", "--host", "127.0.0.1"),
                    *("--port", str(port), "--store", str(store), "--durability", "os"),
                ],
                env={**env, "DVDEXIT_HOME": str(home)},
                cwd=tree,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wait_for(port, receiver)
            sender_env = {**env, "DVDEXIT_HOME": str(home), "TCP_NODELAY": "1"}
            if command[0] == sys.executable:
                subprocess.run(
                    [
                        *(sys.executable, "-m", "dvdexit_cli", "peers", "add", "gw"),
                        *("--dimse", f"127.0.0.1:{port}", "--ae", "DVDEXIT"),
                    ],
                    env=sender_env,
                    cwd=tree,
                    check=True,
                    capture_output=True,
                )
                command = [*command, "--to", "gw"]
            else:
                command = [*command, "127.0.0.1", str(port), str(source / "LARGE.dcm")]
            code, seconds, sender_peak = run_measured(command, sender_env, tree)
            receiver.send_signal(15)
            _pid, _status, usage = os.wait4(receiver.pid, 0)
            receiver.returncode = os.waitstatus_to_exitcode(_status)
            stored = [p for p in store.rglob("*.dcm") if not p.name.startswith(".")]
            verdict = "" if code == 0 and len(stored) == 1 else f" (FAILED: exit {code})"
            print(
                f"| {name}{verdict} | {seconds:.1f} | {sender_peak:.0f} | "
                f"{usage.ru_maxrss / 1024:.0f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
