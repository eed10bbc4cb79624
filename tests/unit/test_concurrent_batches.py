"""Batches in flight at once (STOW-RS ``--workers N``): every instance's fate still journaled.

A batch transport of the test's own waits until the wanted number of requests is in
flight (or gives up waiting), so concurrency is proven by what it saw, not by a clock.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from dvdexit_cli.dicom.scan import Instance
from dvdexit_cli.engine import RetrySettings, SendSettings, retry_failed, send
from dvdexit_cli.errors import PeerUnreachableError
from dvdexit_cli.journal import Journal
from dvdexit_cli.samples import write_study
from dvdexit_cli.transport.base import BatchResult, BatchTransport, StoreOutcome


class Gathering:
    """Answers each batch once ``want`` requests have been in flight together."""

    def __init__(self, want: int, *, unreachable_at: int | None = None) -> None:
        self.want = want
        self.unreachable_at = unreachable_at
        self.active = 0
        self.peak = 0
        self.calls = 0
        self.stored: list[str] = []
        self._cond = threading.Condition()

    @property
    def description(self) -> str:
        return "gathering"

    def open(self, instances: Sequence[Instance]) -> None:
        return None

    def close(self) -> None:
        return None

    def store(self, instance: Instance) -> StoreOutcome:
        return self.store_batch([instance]).outcomes[instance.sop_instance_uid]

    def store_batch(self, instances: Sequence[Instance]) -> BatchResult:
        with self._cond:
            self.calls += 1
            call = self.calls
            self.active += 1
            self.peak = max(self.peak, self.active)
            self._cond.notify_all()
            self._cond.wait_for(lambda: self.peak >= self.want, timeout=10)
            self.active -= 1
            if call == self.unreachable_at:
                raise PeerUnreachableError("peer gathering unreachable (test)")
            self.stored.extend(i.sop_instance_uid for i in instances)
        return BatchResult({i.sop_instance_uid: StoreOutcome("sent", 0) for i in instances})


def _send(tmp_path: Path, transport: BatchTransport, **options: object) -> tuple[object, Journal]:
    write_study(tmp_path / "study", n_instances=6, seed="concurrent")
    journal = Journal(tmp_path / "journal.sqlite")
    settings = SendSettings(
        inputs=(tmp_path / "study",),
        peer_name="web",
        peer_address="gathering",
        batch_size=1,
        retry_delay=0.0,
        **options,  # type: ignore[arg-type]
    )
    result = send(settings, journal=journal, transport=transport, sleep=lambda _s: None)
    return result, journal


def test_workers_put_that_many_batches_of_one_study_in_flight(tmp_path: Path) -> None:
    peer = Gathering(3)

    result, journal = _send(tmp_path, peer, workers=3)

    assert peer.peak == 3
    assert (result.sent, result.failed) == (6, 0)  # type: ignore[attr-defined]
    items = journal.items(result.transfer_id)  # type: ignore[attr-defined]
    assert sorted(peer.stored) == sorted(i.sop_instance_uid for i in items)
    assert {i.state for i in items} == {"sent"}


def test_one_worker_sends_one_batch_at_a_time(tmp_path: Path) -> None:
    peer = Gathering(1)

    result, _ = _send(tmp_path, peer, workers=1)

    assert peer.peak == 1
    assert result.sent == 6  # type: ignore[attr-defined]


@pytest.mark.parametrize("retries", [0, 1])
def test_an_unreachable_peer_stops_new_batches_and_every_item_is_accounted_for(
    tmp_path: Path, retries: int
) -> None:
    peer = Gathering(2, unreachable_at=2)

    result, journal = _send(tmp_path, peer, workers=2, retries=retries)

    items = journal.items(result.transfer_id)  # type: ignore[attr-defined]
    sent = {i.sop_instance_uid for i in items if i.state == "sent"}
    assert sent == set(peer.stored)
    if retries:
        # The next round resends what the unreachable peer left: everything arrives once.
        assert len(sent) == 6 and len(peer.stored) == 6
        assert int(result.exit_code) == 0  # type: ignore[attr-defined]
    else:
        # Two in flight: one answered, one met the unreachable peer; no third started.
        assert len(sent) == 1 and peer.calls == 2
        # Not failed (the peer refused nothing): not sent, for the replay.
        assert all(i.state == "pending" for i in items if i.state != "sent")
        assert int(result.exit_code) == 6  # type: ignore[attr-defined]


@pytest.mark.parametrize("workers", [None, 3])
def test_retry_failed_puts_the_peers_workers_in_flight_and_resends_everything_once(
    tmp_path: Path, workers: int | None
) -> None:
    down = Gathering(1, unreachable_at=1)
    first, journal = _send(tmp_path, down, workers=1, retries=0)
    items = journal.items(first.transfer_id)  # type: ignore[attr-defined]
    assert {i.state for i in items} == {"pending"}  # not sent: the peer was down
    back = Gathering(workers or 1)
    asked: list[str] = []

    def workers_for(name: str) -> int:
        asked.append(name)
        return workers or 1

    result = retry_failed(
        RetrySettings(peer_name="web", retry_delay=0.0, batch_size=1),
        journal=journal,
        transport_for=lambda _name: back,
        sleep=lambda _s: None,
        workers_for=workers_for if workers else None,
    )

    assert back.peak == (workers or 1)
    assert asked == (["web"] if workers else [])
    assert (result.sent, result.failed, int(result.exit_code)) == (6, 0, 0)
    again = journal.items(first.transfer_id)  # type: ignore[attr-defined]
    assert {i.state for i in again} == {"sent"}
    assert sorted(back.stored) == sorted(i.sop_instance_uid for i in again)  # each once
