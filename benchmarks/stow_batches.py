"""STOW-RS batch sizes into Orthanc (a series of 512x512 CT slices), next to DCMTK's
dcmsend (DIMSE) into the same Orthanc build, and pulling the study back (WADO-RS, C-GET)
next to DCMTK getscu; one run.

    .venv/bin/python benchmarks/stow_batches.py [--slices 100] [--runs 3]

Each send goes to a fresh Orthanc (so none is a duplicate). Times whole commands
(process start included). Nothing is asserted: measurements only; a command that fails
stops the script.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import pydicom
from peers import dcmtk_env, free_port, run_dcmsend, run_dvdexit, start_orthanc, stop_process

from dvdexit_cli.samples import write_study


def _timed(run: Callable[[], None]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def _check(done: subprocess.CompletedProcess[str]) -> None:
    if done.returncode != 0:
        raise SystemExit(f"command failed ({done.returncode}): {done.stderr[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dvdexit-bench-stow-"))
    files = write_study(tmp / "ct", n_instances=args.slices, seed="bench-stow", rows=512, cols=512)
    size = sum(p.stat().st_size for p in files)
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    rows: list[tuple[str, list[float]]] = []
    counter = iter(range(10_000))

    def fresh(**kwargs: Any) -> Any:
        return start_orthanc(tmp / f"orthanc-{next(counter)}", **kwargs)

    def send_stow(batch: int) -> float:
        pacs = fresh()
        home = tmp / f"home-{next(counter)}"
        home.mkdir()
        try:
            _check(run_dvdexit("peers", "add", "web", "--dicomweb", pacs.dicomweb_url, home=home))
            return _timed(
                lambda: _check(
                    run_dvdexit(
                        "send",
                        (tmp / "ct"),
                        "--to",
                        "web",
                        "--workers",
                        "1",
                        "--batch-size",
                        str(batch),
                        "--json",
                        home=home,
                        timeout=600,
                    )
                )
            )
        finally:
            stop_process(pacs.proc)

    def send_dcmsend() -> float:
        pacs = fresh()
        try:
            return _timed(lambda: _check(run_dcmsend(files, pacs.dicom_port, called_ae=pacs.aet)))
        finally:
            stop_process(pacs.proc)

    for batch in (1, 10, 50):
        rows.append(
            (
                f"dvdexit send, STOW-RS --batch-size {batch}",
                [send_stow(batch) for _ in range(args.runs)],
            )
        )
    rows.append(("dcmsend (DIMSE, one association)", [send_dcmsend() for _ in range(args.runs)]))

    # Pulls: one Orthanc holding the study, every pull into a fresh store.
    pacs = fresh(modalities={"DVDEXIT": ("DVDEXIT", "127.0.0.1", free_port())})
    home = tmp / "pull-home"
    home.mkdir()
    try:
        _check(run_dvdexit("peers", "add", "web", "--dicomweb", pacs.dicomweb_url, home=home))
        _check(run_dvdexit("send", (tmp / "ct"), "--to", "web", "--json", home=home, timeout=600))
        _check(
            run_dvdexit(
                "peers",
                "add",
                "pacs",
                "--dimse",
                f"127.0.0.1:{pacs.dicom_port}",
                "--ae",
                pacs.aet,
                home=home,
            )
        )

        def pull(peer: str) -> float:
            store = tmp / f"store-{next(counter)}"

            def run() -> None:
                done = run_dvdexit(
                    "receive",
                    "--from",
                    peer,
                    "--study",
                    study,
                    "--store",
                    store,
                    "--json",
                    home=home,
                    timeout=600,
                )
                _check(done)
                assert json.loads(done.stdout)["outcome"] == "complete"

            return _timed(run)

        def getscu() -> float:
            out = tmp / f"getscu-{next(counter)}"
            out.mkdir()
            command = [
                shutil.which("getscu") or "getscu",
                "-aet",
                "DVDEXIT",
                "-aec",
                pacs.aet,
                "-S",
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                f"StudyInstanceUID={study}",
                "-od",
                str(out),
                "127.0.0.1",
                str(pacs.dicom_port),
            ]
            took = _timed(
                lambda: subprocess.run(
                    command, env=dcmtk_env(), check=True, capture_output=True, timeout=600
                )
            )
            got = len(list(out.iterdir()))
            if got == 0:
                raise SystemExit("getscu retrieved nothing")
            getscu_counts.append(got)
            return took

        getscu_counts: list[int] = []
        startup = [_timed(lambda: _check(run_dvdexit("--help", home=home))) for _ in range(3)]
        pulls = [
            ("pull: receive --from, WADO-RS", [pull("web") for _ in range(args.runs)]),
            ("pull: receive --from, C-GET", [pull("pacs") for _ in range(args.runs)]),
            ("pull: getscu (DCMTK, C-GET)", [getscu() for _ in range(args.runs)]),
        ]
    finally:
        stop_process(pacs.proc)

    print(f"data: {len(files)} instances, {size / 1e6:.1f} MB; {args.runs} runs each")
    print(f"getscu retrieved {getscu_counts} files per run")
    print(f"dvdexit process start ('dvdexit --help'), median: {statistics.median(startup):.2f} s")
    for title, group in (("send", rows), ("pull", pulls)):
        reference = statistics.median(group[-1][1])
        print(f"\n{title}: | what | median s | ratio to the DCMTK row |")
        for name, times in group:
            median = statistics.median(times)
            print(f"| {name} | {median:.2f} | {median / reference:.2f} |")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
