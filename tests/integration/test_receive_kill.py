"""kill -9 of the receiver during a large send: nothing half-written, and the replay completes.

The sender is ``dvdexit send`` (a separate process); the receiver is killed with SIGKILL
while instances are arriving, restarted on the same store, and the same folder is sent
again: instances already stored are answered as duplicates, the rest are stored.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from peers import dvdexit_env, run_dvdexit

from dvdexit_cli.dicom.digest import dataset_digest
from dvdexit_cli.samples import write_study

pytestmark = pytest.mark.peer


def add_peer(home: Path, port: int) -> None:
    added = run_dvdexit(
        "peers",
        "add",
        "gw",
        "--dimse",
        f"127.0.0.1:{port}",
        "--ae",
        "DVDEXIT",
        "--replace",
        home=home,
    )
    assert added.returncode == 0, added.stderr


def test_kill_9_mid_send_leaves_only_whole_instances_and_the_replay_completes_the_study(
    tmp_path, dvdexit_receiver, dvdexit_home
):
    study = write_study(tmp_path / "study", n_instances=60, seed="kill-9", rows=512, cols=512)
    sources = {dataset_digest(p)[1] for p in study}
    store = tmp_path / "STORE"
    first = dvdexit_receiver(store)
    sender_home = tmp_path / "sender"
    add_peer(sender_home, first.port)
    sender = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dvdexit_cli",
            "send",
            str(tmp_path / "study"),
            "--to",
            "gw",
            "--retries",
            "0",
            "--json",
        ],
        env=dvdexit_env(sender_home),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while len([p for p in store.rglob("*.dcm") if not p.name.startswith(".")]) < 5:
            assert sender.poll() is None, "the send ended before the kill"
            assert time.monotonic() < deadline, "nothing arrived"
            time.sleep(0.005)
        first.stop(sig=signal.SIGKILL)
        out, _ = sender.communicate(timeout=120)
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait()
    assert sender.returncode != 0, "a send cut off by the receiver's death must not exit 0"
    cut = json.loads(out)
    assert cut["sent"] < len(study)

    # Every instance file is whole and parses; whatever else is there is a temporary.
    # In the store a dot-prefixed name is a temporary (ours, or pynetdicom's spool).
    instances = [p for p in store.rglob("*.dcm") if not p.name.startswith(".")]
    for path in instances:
        pydicom.dcmread(path)  # raises on a truncated file
        assert dataset_digest(path)[1] in sources, f"{path.name} is not a sent instance"
    others = [p for p in store.rglob("*") if p.is_file() and p not in instances]
    assert all(p.name.startswith(".") for p in others), others

    second = dvdexit_receiver(store)
    add_peer(sender_home, second.port)
    replay = run_dvdexit("send", tmp_path / "study", "--to", "gw", "--json", home=sender_home)
    assert replay.returncode == 0, replay.stderr
    assert second.stop() == 0
    stored = [p for p in store.rglob("*") if p.is_file()]
    assert len(stored) == len(study), "one file per instance, no leftovers"
    assert {dataset_digest(p)[1] for p in stored} == sources
    assert not list((store / ".incoming").iterdir())
    verified = run_dvdexit("verify", store, home=dvdexit_home)
    assert verified.returncode == 0, verified.stdout + verified.stderr
