"""Helpers the benchmarks share: loopback ports, data sets, waiting for and stopping peers."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

from pydicom.uid import generate_uid

from dvdexit_cli.samples import sample_uid, synthetic_instance


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_large(folder: Path, n: int) -> None:
    """`n` 512x512 16-bit CT slices of one study and series."""
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


def wait_for(port: int, proc: subprocess.Popen[bytes], seconds: float = 30) -> None:
    """Return once `port` accepts connections; exit if `proc` dies or it takes too long."""
    deadline = time.monotonic() + seconds
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"receiver on {port} exited ({proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"receiver on {port} did not start") from None
            time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM by PID, then SIGKILL if it has not ended within 30 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
