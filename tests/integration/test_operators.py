"""Operators and cron: giving up on items deliberately, and sends that stop early.

A cron replay must be able to end: after a peer is decommissioned, its unsent items are
given up on with ``send --abandon`` (kept visible, audited, never resent). A send that
stops early (Ctrl-C, SIGTERM, a peer that is down) says what happened in counts, with the
command that resumes it.
"""

from __future__ import annotations

import getpass
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from peers import LOOPBACK, RecordingListener, dvdexit_env, free_port, run_dvdexit
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt

from dvdexit_cli.journal import Journal
from dvdexit_cli.journal.store import new_claim
from dvdexit_cli.samples import SampleMedia, make_small_instances


def add_peer(home: Path, name: str, port: int, ae: str, *extra: str) -> None:
    done = run_dvdexit(
        "peers", "add", name, "--dimse", f"{LOOPBACK}:{port}", "--ae", ae, *extra, home=home
    )
    assert done.returncode == 0, done.stderr


def json_of(done: subprocess.CompletedProcess[str]) -> Any:
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"no JSON (exit {done.returncode}): {done.stdout!r} / {done.stderr}")


def send_to_a_closed_port(home: Path, media: Path, peer: str = "gone") -> dict[str, Any]:
    """A send to ``peer`` (added on a port where nothing listens): exit 5."""
    add_peer(home, peer, free_port(), "NOBODY")
    done = run_dvdexit("send", media, "--to", peer, "--retries", "0", "--json", home=home)
    assert done.returncode == 5, done.stderr
    result: dict[str, Any] = json_of(done)
    return result


def journal_states(home: Path, transfer_id: int) -> Counter[str]:
    with Journal(home / "journal.sqlite") as journal:
        return Counter(i.state for i in journal.items(transfer_id))


def audit_records(home: Path) -> list[dict[str, Any]]:
    path = home / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# -- item 15: giving up on items deliberately -----------------------------------------


def test_a_decommissioned_peer_s_items_are_abandoned_and_the_cron_replay_ends(
    dvdexit_home: Path, sample_dvd: SampleMedia
) -> None:
    sent = send_to_a_closed_port(dvdexit_home, sample_dvd.root)
    count = sample_dvd.instance_count

    refused = run_dvdexit("peers", "remove", "gone", home=dvdexit_home)
    assert refused.returncode == 2, refused.stderr
    assert f"{count} item(s)" in refused.stderr
    assert "dvdexit send --abandon --to gone --reason" in refused.stderr
    assert "--force" in refused.stderr
    assert run_dvdexit("peers", "show", "gone", home=dvdexit_home).returncode == 0  # kept

    forced = run_dvdexit("peers", "remove", "gone", "--force", home=dvdexit_home)
    assert forced.returncode == 0, forced.stderr
    stuck = run_dvdexit("send", "--retry-failed", home=dvdexit_home)
    assert stuck.returncode == 6
    assert "unknown peer" in stuck.stderr

    given_up = run_dvdexit(
        "send", "--abandon", "--to", "gone", "--reason", "peer decommissioned", "--json",
        home=dvdexit_home,
    )  # fmt: skip
    assert given_up.returncode == 0, given_up.stderr
    report = json_of(given_up)
    assert report["abandoned"] == count
    assert report["by"] == getpass.getuser()

    ended = run_dvdexit("send", "--retry-failed", "--json", home=dvdexit_home)
    assert ended.returncode == 0, ended.stderr
    assert json_of(ended)["claimed"] == 0

    (transfer,) = json_of(run_dvdexit("status", "--json", home=dvdexit_home))["transfers"]
    assert transfer["transfer_id"] == sent["transfer_id"]
    assert transfer["outcome"] == "abandoned"
    assert transfer["counts"]["abandoned"] == count
    (who,) = transfer["abandoned"]
    assert (who["by"], who["reason"], who["items"]) == (
        getpass.getuser(),
        "peer decommissioned",
        count,
    )
    human = run_dvdexit("status", home=dvdexit_home)
    assert f"{count} abandoned by {getpass.getuser()}" in human.stdout
    assert "peer decommissioned" in human.stdout

    abandons = [r for r in audit_records(dvdexit_home) if r["type"] == "abandon"]
    assert {r["study"]["uid"] for r in abandons} == set(sample_dvd.study_uids)
    assert all(r["outcome"] == 8 and r["counts"]["abandoned"] for r in abandons)
    assert sum(r["counts"]["abandoned"] for r in abandons) == count
    assert all("peer decommissioned" in r["detail"] for r in abandons)
    assert all(r["who"]["user"] == getpass.getuser() for r in abandons)


def test_abandoning_one_transfer_leaves_the_others_to_the_replay(
    dvdexit_home: Path, make_dvd: Any
) -> None:
    first = send_to_a_closed_port(dvdexit_home, make_dvd(seed="one", ct_slices=2).root, "a")
    second = send_to_a_closed_port(dvdexit_home, make_dvd(seed="two", ct_slices=2).root, "b")

    done = run_dvdexit(
        "send", "--abandon", str(first["transfer_id"]), "--reason", "sent on DVD instead",
        home=dvdexit_home,
    )  # fmt: skip
    unknown = run_dvdexit("send", "--abandon", "999", "--reason", "x", home=dvdexit_home)
    no_reason = run_dvdexit("send", "--abandon", str(second["transfer_id"]), home=dvdexit_home)

    assert done.returncode == 0, done.stderr
    assert f"abandoned {first['total']} item(s) of transfer {first['transfer_id']}" in done.stdout
    assert journal_states(dvdexit_home, first["transfer_id"]) == Counter(
        {"abandoned": first["total"], "skipped": first["skipped"]}
    )
    assert journal_states(dvdexit_home, second["transfer_id"])["pending"] == second["total"]
    assert unknown.returncode == 2 and "transfer 999 is not in the journal" in unknown.stderr
    assert no_reason.returncode == 2 and "--reason" in no_reason.stderr
    replay = json_of(run_dvdexit("send", "--retry-failed", "--json", home=dvdexit_home))
    assert replay["claimed"] == second["total"]  # never the abandoned ones
    assert replay["transfers"] == [second["transfer_id"]]


def test_abandoning_leaves_alone_the_items_a_running_replay_holds(
    dvdexit_home: Path, sample_dvd: SampleMedia
) -> None:
    sent = send_to_a_closed_port(dvdexit_home, sample_dvd.root)
    with Journal(dvdexit_home / "journal.sqlite") as journal:
        # As a replay running in this (live) process would hold them.
        claim = new_claim()
        held = journal.claim_replay(claim, peer="gone")
        assert len(held) == sent["total"]

        busy = run_dvdexit(
            "send", "--abandon", "--to", "gone", "--reason", "gone", home=dvdexit_home
        )
        assert journal_states(dvdexit_home, sent["transfer_id"])["pending"] == sent["total"]
        journal.release_claims(claim)

    assert busy.returncode == 6, busy.stderr
    assert f"{sent['total']} item(s) of peer gone are held by a running send" in busy.stderr
    after = run_dvdexit("send", "--abandon", "--to", "gone", "--reason", "gone", home=dvdexit_home)
    assert after.returncode == 0, after.stderr
    assert journal_states(dvdexit_home, sent["transfer_id"])["abandoned"] == sent["total"]


def test_items_and_transfers_show_the_reason_of_their_latest_attempt(
    dvdexit_home: Path, sample_dvd: SampleMedia
) -> None:
    sent = send_to_a_closed_port(dvdexit_home, sample_dvd.root)
    assert "refused" in sent["error"]

    def current_reasons() -> tuple[str, list[str]]:
        (transfer,) = json_of(run_dvdexit("status", "--json", home=dvdexit_home))["transfers"]
        with Journal(dvdexit_home / "journal.sqlite") as journal:
            items = journal.items(sent["transfer_id"], states=("pending", "sending", "failed"))
        assert len(items) == sample_dvd.instance_count
        return transfer["error"], [i.reason or "" for i in items]

    # The peer now answers, and rejects us.
    listener = RecordingListener(reject=True)
    try:
        add_peer(dvdexit_home, "gone", listener.port, "NOBODY", "--replace")
        assert run_dvdexit("send", "--retry-failed", home=dvdexit_home).returncode == 5
    finally:
        listener.close()
    error, reasons = current_reasons()
    assert "rejected" in error, error
    assert all("rejected" in r for r in reasons), reasons

    # The peer is removed: the replay cannot even look it up.
    assert run_dvdexit("peers", "remove", "gone", "--force", home=dvdexit_home).returncode == 0
    assert run_dvdexit("send", "--retry-failed", home=dvdexit_home).returncode == 6
    error, reasons = current_reasons()
    assert "unknown peer" in error, error
    assert all("unknown peer" in r for r in reasons), reasons


# -- item 16: a send that stops early says what happened ------------------------------


def test_a_peer_that_is_down_gives_one_line_counts_not_sent_and_the_replay_sends_them(
    dvdexit_home: Path, sample_dvd: SampleMedia, storescp: Any, tmp_path: Path
) -> None:
    count = sample_dvd.instance_count
    add_peer(dvdexit_home, "pacs", free_port(), "NOBODY")

    human = run_dvdexit(
        "send", sample_dvd.root, "--to", "pacs", "--retries", "0", home=dvdexit_home
    )
    as_json = run_dvdexit(
        "send", sample_dvd.root, "--to", "pacs", "--retries", "0", "--json", home=dvdexit_home
    )

    assert human.returncode == 5
    lines = [line for line in human.stderr.splitlines() if "refused" in line]
    assert len(lines) == 1, human.stderr
    assert f"{count} of {count} instance(s) not sent" in lines[0]
    assert "resend with: dvdexit send --retry-failed --to pacs" in lines[0]
    assert "failed (" not in human.stdout  # no list of instances that "failed"
    result = json_of(as_json)
    assert (result["sent"], result["failed"], result["not_sent"], result["total"]) == (
        0,
        0,
        count,
        count,
    )
    assert result["resume"] == "dvdexit send --retry-failed --to pacs"
    assert journal_states(dvdexit_home, result["transfer_id"])["pending"] == count

    scp = storescp(tmp_path / "pacs")
    add_peer(dvdexit_home, "pacs", scp.port, scp.ae, "--replace")
    replay = run_dvdexit("send", "--retry-failed", "--to", "pacs", "--json", home=dvdexit_home)

    assert replay.returncode == 0, replay.stderr
    assert json_of(replay)["sent"] == 2 * count  # both transfers' items
    assert len({p.name for p in scp.stored_files()}) == count


class _SlowSCP:
    """A pynetdicom CT Storage SCP that takes its time over each C-STORE."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.stores = 0
        self.lock = threading.Lock()
        ae = AE(ae_title="SLOW")
        ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.port = free_port()
        self.server = ae.start_server(
            (LOOPBACK, self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self.handle)]
        )

    def handle(self, event: Any) -> int:
        with self.lock:
            self.stores += 1
        time.sleep(self.delay)
        return 0x0000


@pytest.fixture
def slow_scp() -> Iterator[_SlowSCP]:
    scp = _SlowSCP(delay=0.3)
    yield scp
    scp.server.shutdown()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stopped_send_says_how_far_it_got_and_how_to_resume(
    dvdexit_home: Path, tmp_path: Path, slow_scp: _SlowSCP, sig: int
) -> None:
    make_small_instances(tmp_path / "study", 20, seed=f"stop-{sig}")
    add_peer(dvdexit_home, "slow", slow_scp.port, "SLOW")
    command = ["send", str(tmp_path / "study"), "--to", "slow", "--workers", "1", "--json"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "dvdexit_cli", *command],
        env=dvdexit_env(dvdexit_home),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while slow_scp.stores < 4 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert slow_scp.stores >= 4, "the send never got going"
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert proc.returncode == 130, stderr
    stopped = json.loads(stdout)
    counts = stopped["counts"]
    match = re.search(r"interrupted after (\d+) of (\d+) sent", stderr)
    assert match is not None, stderr
    assert "resume with: dvdexit send --retry-failed --to slow" in stderr
    assert (int(match[1]), int(match[2])) == (counts["sent"], counts["total"])
    assert counts["total"] == 20 and 0 < counts["sent"] < 20
    assert counts["sent"] + counts["failed"] + counts["not_sent"] == 20
    states = journal_states(dvdexit_home, stopped["transfer_id"])
    assert states["sent"] == counts["sent"]
    assert states["pending"] + states["sending"] == counts["not_sent"]
    assert stopped["error"]["type"] == "Interrupted"
    assert stopped["error"]["hint"] == "resume with: dvdexit send --retry-failed --to slow"
