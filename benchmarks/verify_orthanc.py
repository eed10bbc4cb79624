"""Remote verify cost: `dvdexit verify --peer` (C-FIND, Storage Commitment, C-GET) against
Orthanc, next to the `dvdexit send` that put the study there and DCMTK's `findscu` for
the same C-FIND, in the same run.

    .venv/bin/python benchmarks/verify_orthanc.py [--slices 200]

Times whole commands (process start included). Nothing is asserted: measurements only;
the verify must still report every instance identical and committed, or the script stops.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from peers import dcmtk_env, free_port, run_dvdexit, start_orthanc, stop_process

from dvdexit_cli.samples import make_sample_dvd


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slices", type=int, default=200)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dvdexit-bench-verify-"))
    listen = free_port()
    pacs = start_orthanc(tmp / "orthanc", modalities={"DVDEXIT": ("DVDEXIT", "127.0.0.1", listen)})
    try:
        home = tmp / "home"
        home.mkdir()
        media = make_sample_dvd(tmp / "dvd", ct_slices=args.slices, sc_images=4)
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
        start = time.monotonic()
        sent = run_dvdexit("send", media.root, "--to", "pacs", "--json", home=home)
        send_s = time.monotonic() - start
        transfer = json.loads(sent.stdout)["transfer_id"]
        start = time.monotonic()
        done = run_dvdexit(
            "verify",
            "--peer",
            "pacs",
            "--transfer",
            str(transfer),
            "--listen-port",
            str(listen),
            "--json",
            home=home,
            timeout=600,
        )
        verify_s = time.monotonic() - start
        report = json.loads(done.stdout)
        if done.returncode != 0 or report["identical"] != media.instance_count:
            raise SystemExit(f"verify did not prove everything: {done.stdout[:2000]}")
        study = max(report["studies"], key=lambda uid: len(report["studies"][uid]["instances"]))
        findscu = shutil.which("findscu")
        find_s = float("nan")
        if findscu:
            start = time.monotonic()
            subprocess.run(
                [
                    findscu,
                    "-S",
                    "-aet",
                    "DVDEXIT",
                    "-aec",
                    pacs.aet,
                    "-k",
                    "QueryRetrieveLevel=IMAGE",
                    "-k",
                    f"StudyInstanceUID={study}",
                    "-k",
                    "SOPInstanceUID",
                    "127.0.0.1",
                    str(pacs.dicom_port),
                ],
                env=dcmtk_env(),
                capture_output=True,
                check=True,
                timeout=600,
            )
            find_s = time.monotonic() - start
        print(f"instances: {media.instance_count}")
        print(f"dvdexit send:   {send_s:6.2f} s")
        print(
            f"dvdexit verify: {verify_s:6.2f} s  (checks: {', '.join(report['checks_used'])};"
            f" {report['identical']} identical, {report['committed']} committed)"
        )
        print(f"findscu IMAGE-level C-FIND of the largest study alone: {find_s:6.2f} s")
        print(f"verify / send: {verify_s / send_s:.2f}")
    finally:
        stop_process(pacs.proc)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
