"""Receive speed: DCMTK storescu into `dvdexit receive` against into DCMTK storescp.

    .venv/bin/python benchmarks/receive_vs_dcmtk.py [--runs 3] [--large 300] [--small 2000]

Same data as send_vs_dcmtk.py (large: 512x512 16-bit CT slices; small: 8x8 instances),
same sender (`storescu`, TCP_NODELAY=1), three receivers on free loopback ports:
DCMTK `storescp +B` (which never fsyncs), `dvdexit receive --durability os` (no fsync
either: the like-for-like comparison) and `dvdexit receive` (fsync of every file and
folder entry before answering, the default). Each run empties the receiver's folder
and checks its file count, so a fast but incomplete run cannot look good. Prints
median seconds, instances/s, MB/s, the ratio to storescp, and each receiver's peak RSS
(VmHWM). Nothing is asserted: these are measurements.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import free_port, stop, wait_for, write_large

from dvdexit_cli.samples import make_small_instances


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def count_instances(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--large", type=int, default=300)
    parser.add_argument("--small", type=int, default=2000)
    args = parser.parse_args()
    for tool in ("storescp", "storescu"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} missing: apt-get install dcmtk")

    # Under /var/tmp (disk), not /tmp (possibly RAM), so fsync costs what it costs.
    with tempfile.TemporaryDirectory(prefix="dvdexit-bench-", dir="/var/tmp") as tmp:
        root = Path(tmp)
        sets = {"large": root / "large", "small": root / "small"}
        write_large(sets["large"], args.large)
        make_small_instances(sets["small"], args.small, seed="bench")
        counts = {"large": args.large, "small": args.small}
        sizes = {n: sum(p.stat().st_size for p in f.iterdir()) / 1e6 for n, f in sets.items()}
        dcmtk_env = {**os.environ, "TCP_NODELAY": "1"}
        home = root / "home"
        dvdexit_env = {**os.environ, "DVDEXIT_HOME": str(home)}
        dvdexit = [sys.executable, "-m", "dvdexit_cli", "receive", "--host", "127.0.0.1"]

        receivers: dict[str, Callable[[int, Path], tuple[list[str], dict[str, str]]]] = {
            "storescp": lambda port, out: (
                ["storescp", "--aetitle", "BENCH", "+B", "+xa", "-od", str(out), str(port)],
                dcmtk_env,
            ),
            "dvdexit-os": lambda port, out: (
                [
                    *dvdexit,
                    "--port",
                    str(port),
                    "--ae",
                    "BENCH",
                    "--store",
                    str(out),
                    "--durability",
                    "os",
                ],
                dvdexit_env,
            ),
            "dvdexit-fsync": lambda port, out: (
                [*dvdexit, "--port", str(port), "--ae", "BENCH", "--store", str(out)],
                dvdexit_env,
            ),
        }
        print(
            f"{'data':<7}{'receiver':<15}{'median s':>9}{'inst/s':>9}{'MB/s':>8}"
            f"{'ratio':>7}{'peak RSS MB':>13}   runs"
        )
        for name, folder in sets.items():
            base = None
            for receiver, build in receivers.items():
                out = root / f"out-{receiver}"
                out.mkdir(exist_ok=True)
                port = free_port()
                cmd, env = build(port, out)
                proc = subprocess.Popen(
                    cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
                try:
                    wait_for(port, proc)
                    times = []
                    for _ in range(args.runs):
                        for child in out.iterdir():
                            if child.name != ".incoming":
                                shutil.rmtree(child) if child.is_dir() else child.unlink()
                        start = time.perf_counter()
                        done = subprocess.run(
                            [
                                "storescu",
                                "-aec",
                                "BENCH",
                                "+sd",
                                "+r",
                                "127.0.0.1",
                                str(port),
                                str(folder),
                            ],
                            env=dcmtk_env,
                            capture_output=True,
                            text=True,
                            check=False,
                        )
                        times.append(time.perf_counter() - start)
                        if done.returncode != 0:
                            raise SystemExit(f"storescu -> {receiver}: {done.stderr[-2000:]}")
                        stored = count_instances(out)
                        if stored != counts[name]:
                            raise SystemExit(f"{receiver}: {stored} of {counts[name]} arrived")
                    rss = peak_rss_mb(proc.pid)
                finally:
                    stop(proc)
                median = statistics.median(times)
                base = base or median
                runs = " ".join(f"{t:.2f}" for t in times)
                print(
                    f"{name:<7}{receiver:<15}{median:>9.2f}{counts[name] / median:>9.0f}"
                    f"{sizes[name] / median:>8.0f}{median / base:>7.2f}{rss:>13.0f}   {runs}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
