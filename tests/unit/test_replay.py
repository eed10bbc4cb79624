"""`send --retry-failed` over the in-memory peer: claims, leases, idempotence, honesty.

The cron job that replays failed sends runs unattended, sometimes twice at once; it must
resend exactly what did not arrive, never what a peer confirmed, and never one item twice.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from dvdexit_cli.dicom.scan import Instance
from dvdexit_cli.engine import RetryResult, RetrySettings, SendSettings, retry_failed, send
from dvdexit_cli.errors import Interrupted, UnknownPeerError, UsageError
from dvdexit_cli.exitcodes import ExitCode
from dvdexit_cli.journal import Journal
from dvdexit_cli.journal.store import new_claim
from dvdexit_cli.samples import write_study
from dvdexit_cli.transport.base import StoreOutcome
from dvdexit_cli.transport.memory import MemoryPeer, MemoryTransport
from dvdexit_cli.units import parse_duration


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "journal.sqlite")


def first_send(journal: Journal, folder: Path, peer: MemoryPeer, **fail: list[int]) -> int:
    """Send ``folder`` once without in-run retries; return the transfer id."""
    result = send(
        SendSettings(inputs=(folder,), peer_name="pacs", peer_address="memory", retries=0),
        journal=journal,
        transport=MemoryTransport(peer, fail_with=fail),
        sleep=lambda _: None,
    )
    return result.transfer_id


def replay(journal: Journal, peer: MemoryPeer, **options: object) -> RetryResult:
    def transport_for(name: str) -> MemoryTransport:
        assert name == "pacs"
        return MemoryTransport(peer)

    return retry_failed(
        RetrySettings(retries=0, **options),  # type: ignore[arg-type]
        journal=journal,
        transport_for=transport_for,
        sleep=lambda _: None,
    )


def test_replay_resends_exactly_the_out_of_resources_failures_then_nothing(
    tmp_path: Path, journal: Journal
) -> None:
    files = write_study(tmp_path / "in", n_instances=6, seed="replay")
    uids = sorted(_uid(f) for f in files)
    busy = {uids[1]: [0xA700], uids[4]: [0xA702]}
    transfer_id = first_send(journal, tmp_path / "in", MemoryPeer(), **busy)
    assert {i.sop_instance_uid for i in journal.items(transfer_id, states=("failed",))} == set(busy)

    healthy = MemoryPeer()
    result = replay(journal, healthy)
    again = replay(journal, healthy)

    assert result.exit_code == ExitCode.OK
    assert (result.claimed, result.sent, result.failed) == (2, 2, 0)
    assert sorted(healthy.received) == sorted(busy)
    assert again.claimed == 0 and again.outcome == "nothing to do"
    assert again.exit_code == ExitCode.OK
    assert sorted(healthy.received) == sorted(busy)  # the second replay sent nothing
    attempts = {i.sop_instance_uid: i.attempts for i in journal.items(transfer_id)}
    assert {uid: n for uid, n in attempts.items() if n != 1} == dict.fromkeys(busy, 2)
    (summary,) = journal.transfers()
    assert summary.outcome == "complete"


def test_replay_sends_pending_and_unanswered_items_of_a_killed_send(
    tmp_path: Path, journal: Journal
) -> None:
    """A send killed with -9 leaves items pending and one sending; the replay takes both."""
    write_study(tmp_path / "in", n_instances=5, seed="killed")
    dead = _dead_pid_claim()
    from dvdexit_cli.dicom.scan import scan

    found = scan([tmp_path / "in"])
    transfer_id, ids = journal.create_transfer(
        peer="pacs",
        peer_address="memory",
        inputs=(tmp_path / "in",),
        instances=found.instances,
        rejected=found.rejected,
        claim=dead,
    )
    journal.mark_sending(ids[0], claim=dead)
    journal.record_outcome(ids[0], state="sent", status=0, reason=None)
    journal.mark_sending(ids[1], claim=dead)  # killed while this one was on the wire
    peer = MemoryPeer()

    result = replay(journal, peer)

    assert (result.claimed, result.sent) == (4, 4)
    assert found.instances[0].sop_instance_uid not in peer.received
    items = {i.id: i for i in journal.items(transfer_id)}
    assert items[ids[0]].attempts == 1
    assert items[ids[1]].attempts == 2
    assert {i.state for i in items.values()} == {"sent"}


def test_a_live_claim_keeps_a_replay_off_until_its_lease_expires(
    tmp_path: Path, journal: Journal
) -> None:
    write_study(tmp_path / "in", n_instances=3, seed="lease")
    first_send(journal, tmp_path / "in", MemoryPeer(), **{u: [0xA700] for u in _uids(tmp_path)})

    held = journal.claim_replay(new_claim(), lease_seconds=0.2)
    blocked = journal.claim_replay(new_claim())
    time.sleep(0.3)
    after_expiry = journal.claim_replay(new_claim())

    assert len(held) == 3
    assert blocked == []
    assert sorted(i.id for _, i in after_expiry) == sorted(i.id for _, i in held)


def test_a_claim_of_a_process_that_is_gone_is_taken_over_at_once(
    tmp_path: Path, journal: Journal
) -> None:
    write_study(tmp_path / "in", n_instances=2, seed="dead-owner")
    first_send(journal, tmp_path / "in", MemoryPeer(), **{u: [0xA700] for u in _uids(tmp_path)})
    assert len(journal.claim_replay(_dead_pid_claim(), lease_seconds=3600)) == 2

    assert len(journal.claim_replay(new_claim())) == 2


def test_items_tried_max_attempts_times_are_left_failed_and_the_replay_exits_6(
    tmp_path: Path, journal: Journal
) -> None:
    write_study(tmp_path / "in", n_instances=3, seed="max-attempts")
    uids = sorted(_uids(tmp_path))
    first_send(journal, tmp_path / "in", MemoryPeer(), **{uids[0]: [0xA700]})
    peer = MemoryPeer()

    result = replay(journal, peer, max_attempts=1)

    assert result.claimed == 0 and peer.received == []
    assert result.given_up == 1
    assert result.exit_code == ExitCode.PARTIAL_FAILURE
    assert replay(journal, peer, max_attempts=2).sent == 1


def test_a_failure_for_good_is_never_resent(tmp_path: Path, journal: Journal) -> None:
    write_study(tmp_path / "in", n_instances=3, seed="for-good")
    uids = sorted(_uids(tmp_path))
    first_send(journal, tmp_path / "in", MemoryPeer(), **{uids[0]: [0xC000]})
    peer = MemoryPeer()

    result = replay(journal, peer)

    assert peer.received == []
    assert result.claimed == 0 and result.not_retryable == 1


def test_a_file_changed_since_the_send_is_not_resent_and_says_why(
    tmp_path: Path, journal: Journal
) -> None:
    files = write_study(tmp_path / "in", n_instances=2, seed="changed")
    uids = {_uid(f): f for f in files}
    victim = sorted(uids)[0]
    transfer_id = first_send(journal, tmp_path / "in", MemoryPeer(), **{victim: [0xA700]})
    data = bytearray(uids[victim].read_bytes())
    data[-1] ^= 0xFF  # one pixel byte differs: another image under the same UID
    uids[victim].write_bytes(bytes(data))
    peer = MemoryPeer()

    result = replay(journal, peer)

    assert peer.received == []
    assert result.exit_code == ExitCode.PARTIAL_FAILURE
    (item,) = journal.items(transfer_id, states=("failed",))
    assert item.reason is not None and "changed since it was journaled" in item.reason
    assert not item.retryable


def test_only_the_named_peers_items_are_replayed(tmp_path: Path, journal: Journal) -> None:
    write_study(tmp_path / "in", n_instances=2, seed="peer-scope")
    first_send(journal, tmp_path / "in", MemoryPeer(), **{u: [0xA700] for u in _uids(tmp_path)})
    peer = MemoryPeer()

    other = replay(journal, peer, peer_name="elsewhere")

    assert other.claimed == 0 and peer.received == []
    assert replay(journal, peer, peer_name="pacs").sent == 2


def test_an_unknown_peer_leaves_its_items_failed_and_retryable(
    tmp_path: Path, journal: Journal
) -> None:
    write_study(tmp_path / "in", n_instances=2, seed="peer-gone")
    transfer_id = first_send(
        journal, tmp_path / "in", MemoryPeer(), **{u: [0xA700] for u in _uids(tmp_path)}
    )

    def transport_for(name: str) -> MemoryTransport:
        raise UnknownPeerError(f"no peer called {name}")

    result = retry_failed(RetrySettings(), journal=journal, transport_for=transport_for)

    assert result.exit_code == ExitCode.PARTIAL_FAILURE
    assert result.errors and "no peer called pacs" in result.errors[0]
    assert all(i.retryable for i in journal.items(transfer_id, states=("failed",)))
    assert len(journal.claim_replay(new_claim())) == 2  # the claims were released


def test_two_overlapping_replays_never_send_one_instance_twice(tmp_path: Path) -> None:
    write_study(tmp_path / "in", n_instances=40, seed="overlap")
    path = tmp_path / "journal.sqlite"
    with Journal(path) as journal:
        first_send(journal, tmp_path / "in", MemoryPeer(), **{u: [0xA700] for u in _uids(tmp_path)})
    peer = MemoryPeer()
    lock = threading.Lock()

    class Slow(MemoryTransport):
        def store(self, instance: Instance) -> StoreOutcome:
            time.sleep(0.002)
            with lock:
                return super().store(instance)

    results = []

    def run() -> None:
        with Journal(path) as journal:
            results.append(
                retry_failed(
                    RetrySettings(retries=0),
                    journal=journal,
                    transport_for=lambda _: Slow(peer),
                )
            )

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert Counter(Counter(peer.received).values()) == {1: 40}
    assert sum(r.sent for r in results) == 40


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("15m", 900), ("2h", 7200), ("1d", 86400), ("3w", 3 * 604800)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-5m", "1h30m"])
def test_a_bad_duration_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError, match="not a duration"):
        parse_duration(text)


def _dead_pid_claim() -> str:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    host = new_claim().rsplit(":", 2)[0]
    return f"{host}:{int(proc.stdout)}:deadbeef"


def _uid(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _uids(root: Path) -> list[str]:
    return [_uid(p) for p in sorted(root.rglob("*.dcm"))]


def test_an_instance_the_peer_confirmed_in_a_later_transfer_is_not_resent(
    tmp_path: Path, journal: Journal
) -> None:
    write_study(tmp_path / "in", n_instances=2, seed="confirmed-later")
    uids = sorted(_uids(tmp_path))
    failed_first = first_send(journal, tmp_path / "in", MemoryPeer(), **{uids[0]: [0xA700]})
    first_send(journal, tmp_path / "in", MemoryPeer())  # the user sent the DVD again
    peer = MemoryPeer()

    result = replay(journal, peer)

    assert peer.received == []
    assert (result.claimed, result.sent, result.exit_code) == (1, 1, ExitCode.OK)
    (item,) = [i for i in journal.items(failed_first) if i.sop_instance_uid == uids[0]]
    assert item.state == "sent" and "not resent" in (item.reason or "")


def test_an_instance_failed_in_two_transfers_is_resent_once_for_both(
    tmp_path: Path, journal: Journal
) -> None:
    write_study(tmp_path / "in", n_instances=2, seed="failed-twice")
    uids = sorted(_uids(tmp_path))
    one = first_send(journal, tmp_path / "in", MemoryPeer(), **{uids[1]: [0xA700]})
    two = first_send(journal, tmp_path / "in", MemoryPeer(), **{uids[1]: [0xA700]})
    peer = MemoryPeer()

    result = replay(journal, peer)

    assert peer.received == [uids[1]]
    assert (result.claimed, result.sent) == (2, 2)
    for transfer_id in (one, two):
        assert {i.state for i in journal.items(transfer_id)} == {"sent"}


def test_an_unpacked_zip_is_kept_while_its_transfer_is_partial_and_removed_once_complete(
    tmp_path: Path, journal: Journal
) -> None:
    import zipfile

    files = write_study(tmp_path / "study", n_instances=3, seed="zip-replay")
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in files:
            zf.write(f, f.name)
    unpack_dir = tmp_path / "unpacked"
    busy = sorted(_uids(tmp_path / "study"))[0]
    sent = send(
        SendSettings(
            inputs=(archive,), peer_name="pacs", peer_address="memory", retries=0,
            unpack_dir=unpack_dir,
        ),
        journal=journal,
        transport=MemoryTransport(MemoryPeer(), fail_with={busy: [0xA700]}),
        sleep=lambda _: None,
    )  # fmt: skip
    kept = list(unpack_dir.iterdir())

    def transport_for(name: str) -> MemoryTransport:
        return MemoryTransport(peer)

    peer = MemoryPeer()
    result = retry_failed(
        RetrySettings(unpack_dir=unpack_dir), journal=journal, transport_for=transport_for
    )

    assert sent.outcome == "partial" and len(kept) == 1
    assert peer.received == [busy] and result.exit_code == ExitCode.OK
    assert list(unpack_dir.iterdir()) == []


class _StopsOnThird(MemoryTransport):
    """The peer is back, and the replay is stopped (Ctrl-C) during its third instance."""

    def __init__(self, peer: MemoryPeer) -> None:
        super().__init__(peer)
        self.calls = 0

    def store(self, instance: Instance) -> StoreOutcome:
        self.calls += 1
        if self.calls == 3:
            raise KeyboardInterrupt
        return super().store(instance)


def test_a_stopped_replay_says_how_far_it_got_and_leaves_the_rest_for_the_next(
    tmp_path: Path, journal: Journal
) -> None:
    write_study(tmp_path / "in", n_instances=5, seed="stopped-replay")
    transfer_id = first_send(journal, tmp_path / "in", MemoryPeer(reachable=False))

    with pytest.raises(Interrupted) as stopped:
        retry_failed(
            RetrySettings(peer_name="pacs", retries=0),
            journal=journal,
            transport_for=lambda _name: _StopsOnThird(MemoryPeer()),
            sleep=lambda _: None,
        )

    assert stopped.value.counts == {
        "sent": 2,
        "failed": 0,
        "not_sent": 3,
        "skipped": 0,
        "total": 5,
    }
    assert stopped.value.transfers == (transfer_id,)
    assert stopped.value.hint == "resume with: dvdexit send --retry-failed --to pacs"
    assert Counter(i.state for i in journal.items(transfer_id)) == {"sent": 2, "pending": 3}
    assert replay(journal, MemoryPeer()).sent == 3  # the claims were released
