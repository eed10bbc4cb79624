"""`dvdexit send --retry-failed`: the nightly cron that replays what did not arrive.

A hospital's cron runs ``dvdexit send --retry-failed`` every night, sometimes while last
night's run is still busy. It must resend exactly what failed or was never answered,
nothing a peer confirmed, and never one instance twice. Each story runs the command a
user would type against a real peer (Orthanc), or against a pynetdicom Storage SCP where
the peer must misbehave on purpose (answer A700 "out of resources", answer slowly).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from peers import LOOPBACK, dvdexit_env, free_port, run_dvdexit, stop_process
from pydicom import dcmread
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt

from dvdexit_cli.journal import Journal
from dvdexit_cli.samples import make_small_instances


@dataclass
class ScriptedSCP:
    """A pynetdicom CT Storage SCP whose answers the test controls."""

    port: int
    ae_title: str
    busy: set[str] = field(default_factory=set)
    """SOP Instance UIDs answered A700 (out of resources) while ``failing`` is set."""
    failing: bool = True
    refusal: int = 0xA700
    """The status ``busy`` instances get (A700 retryable; A900 or C000 final)."""
    delay: float = 0.0
    stores: list[str] = field(default_factory=list)
    """Every C-STORE request's SOP Instance UID, answered or not, in arrival order."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        with self.lock:
            self.stores.append(uid)
        if self.delay:
            time.sleep(self.delay)
        return self.refusal if self.failing and uid in self.busy else 0x0000


@pytest.fixture
def scripted_scp() -> Iterator[Callable[..., ScriptedSCP]]:
    servers: list[Any] = []

    def start(*, ae_title: str = "SCRIPTED", delay: float = 0.0) -> ScriptedSCP:
        ae = AE(ae_title=ae_title)
        ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        ae.maximum_associations = 10
        error: Exception | None = None
        for _ in range(3):
            scp = ScriptedSCP(port=free_port(), ae_title=ae_title, delay=delay)
            try:
                server = ae.start_server(
                    (LOOPBACK, scp.port),
                    block=False,
                    evt_handlers=[(evt.EVT_C_STORE, scp.handle)],
                )
            except OSError as exc:  # lost the race for the port
                error = exc
                continue
            servers.append(server)
            return scp
        raise RuntimeError("the scripted Storage SCP could not bind a port") from error

    yield start
    for server in servers:
        server.shutdown()


def add_peer(home: Path, name: str, port: int, ae: str) -> None:
    result = run_dvdexit(
        "peers", "add", name, "--dimse", f"{LOOPBACK}:{port}", "--ae", ae, home=home
    )
    assert result.returncode == 0, result.stderr


def run_json(home: Path, *args: str | Path) -> tuple[int, Any]:
    result = run_dvdexit(*args, "--json", home=home)
    try:
        return result.returncode, json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(
            f"no single JSON document (exit {result.returncode}):\n"
            f"stdout: {result.stdout!r}\nstderr: {result.stderr}"
        )


def uid_of(path: Path) -> str:
    return str(
        dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID
    )


def test_out_of_resources_exits_6_then_retry_failed_sends_exactly_those_then_nothing(
    scripted_scp, dvdexit_home: Path, tmp_path: Path
):
    files = make_small_instances(tmp_path / "study", 30, seed="a700")
    uids = [uid_of(f) for f in files]
    scp = scripted_scp()
    scp.busy = {uids[3], uids[17], uids[29]}
    add_peer(dvdexit_home, "pacs", scp.port, scp.ae_title)

    code, first = run_json(
        dvdexit_home, "send", tmp_path / "study", "--to", "pacs", "--retries", "0"
    )
    assert code == 6, first
    assert {f["sop_instance_uid"] for f in first["failures"]} == scp.busy
    assert all(f["status"] == "A700" and f["retryable"] for f in first["failures"])
    with Journal(dvdexit_home / "journal.sqlite") as journal:
        failed = {
            i.sop_instance_uid for i in journal.items(first["transfer_id"], states=("failed",))
        }
    assert failed == scp.busy

    scp.failing = False  # the PACS got its disk space back
    before = len(scp.stores)
    code, retry = run_json(dvdexit_home, "send", "--retry-failed")
    resent = scp.stores[before:]
    code_again, again = run_json(dvdexit_home, "send", "--retry-failed", "--to", "pacs")

    assert code == 0, retry
    assert (retry["claimed"], retry["sent"], retry["failed"]) == (3, 3, 0)
    assert sorted(resent) == sorted(scp.busy)
    assert code_again == 0, again
    assert (again["claimed"], again["sent"], again["outcome"]) == (0, 0, "nothing to do")
    assert len(scp.stores) == before + 3  # the second replay sent nothing
    with Journal(dvdexit_home / "journal.sqlite") as journal:
        items = journal.items(first["transfer_id"])
        (transfer,) = journal.transfers()
    assert {i.state for i in items} == {"sent"}
    assert {i.sop_instance_uid: i.attempts for i in items if i.attempts != 1} == dict.fromkeys(
        scp.busy, 2
    )
    assert transfer.outcome == "complete"


def test_final_refusals_wait_for_include_refused_to_the_fixed_peer_and_only_they_go(
    scripted_scp, dvdexit_home: Path, tmp_path: Path
):
    files = make_small_instances(tmp_path / "study", 12, seed="c000")
    uids = [uid_of(f) for f in files]
    scp = scripted_scp()
    scp.busy, scp.refusal = {uids[2], uids[9]}, 0xC000
    add_peer(dvdexit_home, "pacs", scp.port, scp.ae_title)

    code, first = run_json(dvdexit_home, "send", tmp_path / "study", "--to", "pacs")
    assert code == 6, first
    assert all(not f["retryable"] for f in first["failures"])
    assert len(scp.stores) == 12  # a final refusal is not retried within the send

    code, plain = run_json(dvdexit_home, "send", "--retry-failed")
    assert code == 0, plain
    assert plain["claimed"] == 0  # final refusals are left alone by the nightly replay
    everywhere = run_dvdexit("send", "--retry-failed", "--include-refused", home=dvdexit_home)
    assert everywhere.returncode == 2
    assert "--to" in everywhere.stderr
    assert len(scp.stores) == 12

    scp.failing = False  # the PACS administrator fixed the peer
    code, fixed = run_json(
        dvdexit_home, "send", "--retry-failed", "--include-refused", "--to", "pacs"
    )

    assert code == 0, fixed
    assert (fixed["claimed"], fixed["sent"], fixed["failed"]) == (2, 2, 0)
    assert sorted(scp.stores[12:]) == sorted(scp.busy)
    with Journal(dvdexit_home / "journal.sqlite") as journal:
        assert {i.state for i in journal.items(first["transfer_id"])} == {"sent"}


def orthanc_sop_uids(peer: Any) -> set[str]:
    """Every SOP Instance UID Orthanc holds, in one REST call."""
    found = peer.rest(
        "POST", "/tools/find", json={"Level": "Instance", "Query": {}, "Expand": True}
    )
    return {i["MainDicomTags"]["SOPInstanceUID"] for i in found}


def wait_for_sent(journal: Path, sender: subprocess.Popen[bytes], at_least: int) -> None:
    deadline = time.monotonic() + 60  # a safety net against a hung test, not an assertion
    while time.monotonic() < deadline:
        assert sender.poll() is None, "the sender finished before it could be killed"
        if journal.exists():
            try:
                with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as db:
                    (sent,) = db.execute(
                        "SELECT COUNT(*) FROM items WHERE state = 'sent'"
                    ).fetchone()
            except sqlite3.OperationalError:  # schema not created yet
                sent = 0
            if sent >= at_least:
                return
        time.sleep(0.01)
    pytest.fail(f"fewer than {at_least} items were sent within the safety net")


@pytest.mark.peer
def test_kill_9_mid_send_to_orthanc_then_retry_failed_completes_without_resending_confirmed(
    orthanc, dvdexit_home: Path, tmp_path: Path
):
    files = make_small_instances(tmp_path / "study", 500, seed="kill-9-orthanc")
    peer = orthanc()
    add_peer(dvdexit_home, "orthanc", peer.dicom_port, peer.aet)
    journal_file = dvdexit_home / "journal.sqlite"

    sender = subprocess.Popen(
        [sys.executable, "-m", "dvdexit_cli", "send", str(tmp_path / "study"), "--to", "orthanc"],
        env=dvdexit_env(dvdexit_home),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_sent(journal_file, sender, at_least=20)
        os.kill(sender.pid, signal.SIGKILL)
        assert sender.wait(timeout=30) == -signal.SIGKILL
    finally:
        stop_process(sender)
    with Journal(journal_file) as journal:
        confirmed = {i.id for i in journal.items(1, states=("sent",))}
        left = journal.items(1, states=("pending", "sending"))
    assert confirmed and left, "the kill must land mid-send for this story"

    code, retry = run_json(dvdexit_home, "send", "--retry-failed", "--to", "orthanc")

    assert code == 0, retry
    assert retry["claimed"] == len(left) == retry["sent"]
    assert orthanc_sop_uids(peer) == {uid_of(f) for f in files}
    with Journal(journal_file) as journal:
        items = journal.items(1)
    assert {i.state for i in items} == {"sent"}
    assert {i.attempts for i in items if i.id in confirmed} == {1}


def test_two_overlapping_retry_failed_runs_never_send_one_instance_twice(
    scripted_scp, dvdexit_home: Path, tmp_path: Path
):
    files = make_small_instances(tmp_path / "study", 60, seed="overlap")
    scp = scripted_scp(delay=0.01)
    scp.busy = {uid_of(f) for f in files}
    add_peer(dvdexit_home, "pacs", scp.port, scp.ae_title)
    code, first = run_json(
        dvdexit_home, "send", tmp_path / "study", "--to", "pacs", "--retries", "0"
    )
    assert code == 6 and first["failed"] == 60, first
    scp.failing = False
    before = len(scp.stores)

    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "dvdexit_cli", "send", "--retry-failed", "--json"],
            env=dvdexit_env(dvdexit_home),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    documents = []
    try:
        for run in runs:
            stdout, stderr = run.communicate(timeout=120)
            assert run.returncode == 0, stderr
            documents.append(json.loads(stdout))
    finally:
        for run in runs:
            stop_process(run)

    resent = Counter(scp.stores[before:])
    assert set(resent) == scp.busy
    assert set(resent.values()) == {1}, {u: n for u, n in resent.items() if n > 1}
    assert sum(d["sent"] for d in documents) == 60


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def is_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_kill_9_of_a_parallel_send_stops_its_workers_and_the_replay_resends_only_the_rest(
    scripted_scp, dvdexit_home: Path, tmp_path: Path
):
    files = []
    for n in range(4):
        files += make_small_instances(tmp_path / "in" / f"s{n}", 50, seed=f"kill-workers-{n}")
    scp = scripted_scp(delay=0.01)
    add_peer(dvdexit_home, "pacs", scp.port, scp.ae_title)
    journal_file = dvdexit_home / "journal.sqlite"

    sender = subprocess.Popen(
        [sys.executable, "-m", "dvdexit_cli", "send", str(tmp_path / "in"), "--to", "pacs",
         "--workers", "2"],
        env=dvdexit_env(dvdexit_home),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_sent(journal_file, sender, at_least=20)
        workers = children_of(sender.pid)
        os.kill(sender.pid, signal.SIGKILL)
        assert sender.wait(timeout=30) == -signal.SIGKILL
    finally:
        stop_process(sender)
    assert len(workers) >= 2
    deadline = time.monotonic() + 10  # a safety net, not a timing assertion
    while any(is_running(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(is_running(w) for w in workers), "a worker outlived the killed sender"
    with Journal(journal_file) as journal:
        unknown = {i.sop_instance_uid for i in journal.items(1, states=("sending",))}
    before = Counter(scp.stores)

    code, retry = run_json(dvdexit_home, "send", "--retry-failed")

    assert code == 0, retry
    after = Counter(scp.stores)
    assert set(after) == {uid_of(f) for f in files}
    twice = {uid for uid, n in after.items() if n > 1}
    assert twice <= unknown  # only an instance in flight at the kill may arrive twice
    assert all(n == 1 for uid, n in before.items())
