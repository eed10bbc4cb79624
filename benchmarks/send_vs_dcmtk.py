"""Send speed: dvdexit against DCMTK storescu, same data, same receiver, same run.

    .venv/bin/python benchmarks/send_vs_dcmtk.py [--runs 3] [--large 300] [--small 2000]
        [--studies 10] [--workers 1,2]

Writes three synthetic data sets (large: 512x512 16-bit CT slices of one study; small:
8x8 instances of one study; small-N: the same number of 8x8 instances spread over N
studies, which parallel associations can share), starts DCMTK `storescp +B` on a free
loopback port (TCP_NODELAY=1, see shared PEERS.md), and times, for each data set,
`storescu` (one association) and `dvdexit send --workers W` for each W, as whole commands
(process start, scan, digests and journal included for dvdexit). Prints medians, MB/s,
instances/s, the peak RSS of the largest process of the command's tree, and the ratio
dvdexit / storescu. Every run's output folder is emptied and its file count checked, so a
fast but incomplete run cannot look good. Nothing is asserted: these are measurements.
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


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (kB, the largest process of the tree) of one command."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            errors.seek(0)
            text = errors.read().decode(errors="replace")[-2000:]
            raise SystemExit(f"{cmd[0]} failed ({proc.returncode}): {text}")
    return elapsed, int(usage.ru_maxrss)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--large", type=int, default=300)
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--studies", type=int, default=10)
    parser.add_argument("--workers", default="1,2")
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    for tool in ("storescp", "storescu"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} missing: apt-get install dcmtk")

    with tempfile.TemporaryDirectory(prefix="dvdexit-bench-") as tmp:
        root = Path(tmp)
        many = f"small-{args.studies}"
        sets = {"large": root / "large", "small": root / "small", many: root / many}
        write_large(sets["large"], args.large)
        make_small_instances(sets["small"], args.small, seed="bench")
        per_study = args.small // args.studies
        for n in range(args.studies):
            make_small_instances(sets[many] / f"study{n}", per_study, seed=f"bench-{n}")
        counts = {"large": args.large, "small": args.small, many: per_study * args.studies}
        sizes = {
            name: sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            for name, folder in sets.items()
        }
        out = root / "out"
        out.mkdir()
        port = free_port()
        dcmtk_env = {**os.environ, "TCP_NODELAY": "1"}
        scp = subprocess.Popen(
            # --fork: one process per association, so parallel associations are served in
            # parallel (without it storescp takes one association at a time).
            ["storescp", "--fork", "--aetitle", "BENCH", "+B", "+xa", "-od", str(out), str(port)],
            env=dcmtk_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(port, scp)
            home = root / "home"
            env = {**os.environ, "DVDEXIT_HOME": str(home)}
            dvdexit = [sys.executable, "-m", "dvdexit_cli"]
            subprocess.run(
                [
                    *dvdexit,
                    "peers",
                    "add",
                    "bench",
                    "--dimse",
                    f"127.0.0.1:{port}",
                    "--ae",
                    "BENCH",
                ],
                env=env,
                check=True,
                capture_output=True,
            )
            commands: dict[str, Callable[[Path], list[str]]] = {
                "storescu": lambda d: [
                    "storescu",
                    "-aec",
                    "BENCH",
                    "+sd",
                    "+r",
                    "127.0.0.1",
                    str(port),
                    str(d),
                ],
            }
            for w in workers:
                commands[f"dvdexit-w{w}"] = lambda d, w=w: [
                    *dvdexit, "send", str(d), "--to", "bench", "-q", "--workers", str(w)
                ]  # fmt: skip
            print(
                f"{'data':<10}{'tool':<12}{'median s':>9}{'MB/s':>8}{'inst/s':>8}"
                f"{'RSS MB':>8}{'ratio':>7}   runs"
            )
            for name, folder in sets.items():
                base = 0.0
                for tool, build in commands.items():
                    times, peaks = [], []
                    for _ in range(args.runs):
                        shutil.rmtree(out)
                        out.mkdir()
                        seconds, rss = timed(
                            build(folder), dcmtk_env if tool == "storescu" else env
                        )
                        times.append(seconds)
                        peaks.append(rss)
                        stored = sum(1 for p in out.rglob("*") if p.is_file())
                        if stored != counts[name]:
                            raise SystemExit(f"{tool}: {stored} of {counts[name]} arrived")
                    median = statistics.median(times)
                    base = base or median
                    runs = " ".join(f"{t:.2f}" for t in times)
                    print(
                        f"{name:<10}{tool:<12}{median:>9.2f}{sizes[name] / median / 1e6:>8.1f}"
                        f"{counts[name] / median:>8.0f}{max(peaks) / 1024:>8.0f}"
                        f"{median / base:>7.2f}   {runs}"
                    )
        finally:
            stop(scp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
