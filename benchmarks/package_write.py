"""Package writing: dvdexit's folder / zip / DVD-image packages against DCMTK on the same data.

    .venv/bin/python benchmarks/package_write.py [--runs 3] [--slices 300]
    .venv/bin/python benchmarks/package_write.py --small 1000 3000


Writes one synthetic CT study (512x512 16-bit slices) and times, as whole commands,
`dvdexit send STUDY --to drop` (folder package), with `--zip` and with `--iso` (each: scan,
digests, journal, DICOMDIR, manifest, fsync, rename, and the package's own digest check),
against the DCMTK way of making media from the same files: `cp -r` of the study followed by
`dcmmkdir` (no digests, no manifest, no fsync). Prints medians and the ratio to cp+dcmmkdir.
With ``--small N ...`` it times instead the package writer itself (``write_package``,
a folder package, after the scan) on N tiny 8x8 CT instances of one series, where the
DICOMDIR's cost dominates, against `cp -r` + `dcmmkdir` of the same files.
Nothing is asserted: these are measurements.
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
from pathlib import Path

from dvdexit_cli.dicom.scan import scan
from dvdexit_cli.package import Manifest, write_package
from dvdexit_cli.samples import make_small_instances, write_study


def cp_dcmmkdir(study: Path, media: Path) -> float:
    """Copy ``study`` to ``media/IMAGES`` with level-1 names and index it with dcmmkdir."""
    started = time.perf_counter()
    shutil.copytree(study, media / "IMAGES")
    # dcmmkdir wants level-1 names: the synthetic files are CT00001.dcm or IM000001.dcm
    for old in (media / "IMAGES").iterdir():
        old.rename(old.with_name(old.stem.upper()[:8]))
    subprocess.run(
        ["dcmmkdir", "+r", "+id", str(media), "+D", str(media / "DICOMDIR")],
        check=True,
        capture_output=True,
    )
    took = time.perf_counter() - started
    shutil.rmtree(media)
    return took


def small(counts: list[int], runs: int) -> None:
    for n in counts:
        with tempfile.TemporaryDirectory(prefix="dvdexit-bench-") as tmp:
            root = Path(tmp)
            make_small_instances(root / "study", n, seed="bench-small")
            found = scan([root / "study"])
            ours, theirs = [], []
            for run in range(runs):
                started = time.perf_counter()
                write_package(
                    found.instances,
                    root / f"pkg-{run}",
                    manifest=Manifest(created_at="2026-01-01T00:00:00Z", sender_ae="BENCH"),
                )
                ours.append(time.perf_counter() - started)
                shutil.rmtree(root / f"pkg-{run}")
                theirs.append(cp_dcmmkdir(root / "study", root / f"media-{run}"))
            mine, base = statistics.median(ours), statistics.median(theirs)
            print(
                f"{n} small instances, median of {runs} runs: write_package {mine:6.2f} s, "
                f"cp + dcmmkdir {base:6.2f} s, x{mine / base:.2f}"
            )


def timed(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--small", type=int, nargs="+", metavar="N")
    args = parser.parse_args()
    if args.small:
        small(args.small, args.runs)
        return
    with tempfile.TemporaryDirectory(prefix="dvdexit-bench-") as tmp:
        root = Path(tmp)
        study = root / "study"
        write_study(study, n_instances=args.slices, seed="bench-package", rows=512, cols=512)
        size = sum(p.stat().st_size for p in study.rglob("*") if p.is_file())
        home = root / "home"
        env = {**os.environ, "DVDEXIT_HOME": str(home)}
        dvdexit = [sys.executable, "-m", "dvdexit_cli"]
        drop = root / "drop"
        drop.mkdir()
        subprocess.run(
            [*dvdexit, "peers", "add", "drop", "--folder", str(drop)], env=env, check=True
        )
        results: dict[str, list[float]] = {}
        for run in range(args.runs):
            for label, extra in (("folder", []), ("zip", ["--zip"]), ("iso", ["--iso"])):
                took = timed([*dvdexit, "send", str(study), "--to", "drop", "-q", *extra], env)
                results.setdefault(f"dvdexit {label}", []).append(took)
                for p in drop.iterdir():
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
            results.setdefault("cp + dcmmkdir", []).append(
                cp_dcmmkdir(study, root / f"media-{run}")
            )
        base = statistics.median(results["cp + dcmmkdir"])
        print(f"{args.slices} CT slices, {size / 1e6:.0f} MB, median of {args.runs} runs")
        for label, times in results.items():
            median = statistics.median(times)
            print(
                f"  {label:15s} {median:6.2f} s  {size / 1e6 / median:7.1f} MB/s  "
                f"x{median / base:.2f} of cp + dcmmkdir"
            )


if __name__ == "__main__":
    main()
