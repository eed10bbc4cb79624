"""A receiver whose disk fills up answers "out of resources" and loses nothing it stored."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import run_dvdexit

from dvdexit_cli.dicom.digest import dataset_digest
from dvdexit_cli.samples import write_study

_SIZE = "600k"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 600 kB tmpfs: a disk that fills after a few instances (needs root, as in CI)."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={_SIZE}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        message = f"cannot mount a small tmpfs (root needed): {done.stderr.strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_disk_is_answered_a700_and_every_stored_instance_is_whole(
    tmp_path: Path, small_disk: Path, dvdexit_home: Path, dvdexit_receiver: object
) -> None:
    files = write_study(tmp_path / "study", n_instances=12, seed="disk-full", rows=256, cols=256)
    store = small_disk / "store"
    receiver = dvdexit_receiver(store)  # type: ignore[operator]
    sender_home = tmp_path / "sender"
    run_dvdexit(
        "peers",
        "add",
        "gw",
        "--dimse",
        f"127.0.0.1:{receiver.port}",
        "--ae",
        receiver.ae,
        home=sender_home,
    )

    done = run_dvdexit(
        "send", tmp_path / "study", "--to", "gw", "--retries", "0", "--json", home=sender_home
    )

    result = json.loads(done.stdout)
    assert done.returncode == 6, done.stderr
    assert 0 < result["sent"] < len(files)
    assert result["failed"] == len(files) - result["sent"]
    assert {f["status"] for f in result["failures"]} == {"A700"}
    assert all(f["retryable"] for f in result["failures"])
    stored = sorted(store.rglob("*.dcm"))
    assert len(stored) == result["sent"]
    assert not [p for p in store.rglob("*") if p.name.endswith(".tmp")]
    sources = {dataset_digest(f)[1] for f in files}
    assert {dataset_digest(p)[1] for p in stored} <= sources
    verify = run_dvdexit("verify", store, home=dvdexit_home)
    assert verify.returncode == 0, verify.stdout
