"""Send speed: dvdexit against DCMTK storescu, same data, same receiver, same run.

    .venv/bin/python benchmarks/send_vs_dcmtk.py [--runs 3] [--large 300] [--small 2000]

Writes two synthetic data sets (large: 512x512 16-bit CT slices; small: 8x8 instances),
starts DCMTK `storescp +B` on a free loopback port (TCP_NODELAY=1, see shared PEERS.md),
and times, for each data set, `storescu` and `dvdexit send` as whole commands (process
start, scan, digests and journal included for dvdexit). Prints medians and the ratio
dvdexit / storescu. Every run's output folder is emptied and its file count checked, so a
fast but incomplete run cannot look good. Nothing is asserted: these are measurements.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydicom.uid import generate_uid

from dvdexit_cli.samples import make_small_instances, sample_uid, synthetic_instance


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_large(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    study, series = sample_uid("bench", "study"), sample_uid("bench", "series")
    for i in range(1, n + 1):
        ds = synthetic_instance(
            study_uid=study,
            series_uid=series,
            sop_uid=generate_uid(entropy_srcs=["bench", str(i)]),
            rows=512,
            cols=512,
            instance_number=i,
        )
        ds.save_as(folder / f"CT{i:05d}.dcm", enforce_file_format=True)


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--large", type=int, default=300)
    parser.add_argument("--small", type=int, default=2000)
    args = parser.parse_args()
    for tool in ("storescp", "storescu"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} missing: apt-get install dcmtk")

    with tempfile.TemporaryDirectory(prefix="dvdexit-bench-") as tmp:
        root = Path(tmp)
        sets = {"large": root / "large", "small": root / "small"}
        write_large(sets["large"], args.large)
        make_small_instances(sets["small"], args.small, seed="bench")
        counts = {"large": args.large, "small": args.small}
        out = root / "out"
        out.mkdir()
        port = free_port()
        dcmtk_env = {**os.environ, "TCP_NODELAY": "1"}
        scp = subprocess.Popen(
            ["storescp", "--aetitle", "BENCH", "+B", "+xa", "-od", str(out), str(port)],
            env=dcmtk_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit("storescp did not start") from None
                    time.sleep(0.1)
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
            commands = {
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
                "dvdexit": lambda d: [*dvdexit, "send", str(d), "--to", "bench", "-q"],
            }
            print(f"{'data':<7}{'tool':<10}{'median s':>10}{'runs':>30}")
            for name, folder in sets.items():
                medians = {}
                for tool, build in commands.items():
                    times = []
                    for _ in range(args.runs):
                        shutil.rmtree(out)
                        out.mkdir()
                        times.append(timed(build(folder), dcmtk_env if tool == "storescu" else env))
                        stored = sum(1 for _ in out.iterdir())
                        if stored != counts[name]:
                            raise SystemExit(f"{tool}: {stored} of {counts[name]} arrived")
                    medians[tool] = statistics.median(times)
                    runs = " ".join(f"{t:.2f}" for t in times)
                    print(f"{name:<7}{tool:<10}{medians[tool]:>10.2f}{runs:>30}")
                ratio = medians["dvdexit"] / medians["storescu"]
                print(f"{name:<7}{'ratio':<10}{ratio:>10.2f}   (dvdexit / storescu)")
        finally:
            scp.send_signal(signal.SIGTERM)
            try:
                scp.wait(timeout=10)
            except subprocess.TimeoutExpired:
                scp.kill()
                scp.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
