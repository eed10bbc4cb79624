"""The send engine over the in-memory peer: journaling, retries, partial failure, honesty."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from dvdexit_cli.dicom.scan import Instance
from dvdexit_cli.engine import SendSettings, send, verify_paths
from dvdexit_cli.errors import Interrupted, NoDicomFoundError
from dvdexit_cli.exitcodes import ExitCode
from dvdexit_cli.journal import Journal
from dvdexit_cli.samples import write_study
from dvdexit_cli.transport.base import StoreOutcome
from dvdexit_cli.transport.memory import MemoryPeer, MemoryTransport


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "journal.sqlite")


def settings(*inputs: Path, retries: int = 2) -> SendSettings:
    return SendSettings(inputs=inputs, peer_name="memory", peer_address="memory", retries=retries)


def test_everything_sent_is_held_by_the_peer_with_the_same_digest(
    tmp_path: Path, journal: Journal
) -> None:
    files = write_study(tmp_path / "in", n_instances=5, seed="engine")
    peer = MemoryPeer()

    result = send(settings(tmp_path / "in"), journal=journal, transport=MemoryTransport(peer))

    assert (result.sent, result.failed, result.exit_code) == (5, 0, ExitCode.OK)
    assert result.outcome == "complete"
    items = journal.items(result.transfer_id)
    assert len(items) == len(files)
    for item in items:
        assert item.sop_instance_uid is not None
        assert peer.digest(item.sop_instance_uid) == item.digest


def test_out_of_resources_is_retried_and_then_succeeds(tmp_path: Path, journal: Journal) -> None:
    write_study(tmp_path / "in", n_instances=3, seed="retry")
    peer = MemoryPeer()
    first = _uids(tmp_path / "in")[0]
    delays: list[float] = []

    result = send(
        settings(tmp_path / "in"),
        journal=journal,
        transport=MemoryTransport(peer, fail_with={first: [0xA700, 0xA701]}),
        sleep=delays.append,
    )

    assert (result.sent, result.failed) == (3, 0)
    assert delays == [2.0, 4.0]  # exponential backoff between rounds
    (item,) = [i for i in journal.items(result.transfer_id) if i.sop_instance_uid == first]
    assert item.attempts == 3


def test_a_refused_instance_fails_for_good_and_the_rest_arrives(
    tmp_path: Path, journal: Journal
) -> None:
    write_study(tmp_path / "in", n_instances=4, seed="refuse")
    peer = MemoryPeer()
    bad = _uids(tmp_path / "in")[2]

    result = send(
        settings(tmp_path / "in"),
        journal=journal,
        transport=MemoryTransport(peer, fail_with={bad: [0xC000]}),
        sleep=lambda _: None,
    )

    assert (result.sent, result.failed, result.exit_code) == (3, 1, ExitCode.PARTIAL_FAILURE)
    assert result.outcome == "partial"
    (failure,) = result.failures
    assert failure.sop_instance_uid == bad
    assert failure.status == 0xC000
    assert not failure.retryable
    assert bad not in peer.stored
    assert journal.transfers()[0].outcome == "partial"


def test_retryable_failures_left_after_retries_stay_retryable_in_the_journal(
    tmp_path: Path, journal: Journal
) -> None:
    write_study(tmp_path / "in", n_instances=2, seed="exhaust")
    uid = _uids(tmp_path / "in")[0]

    result = send(
        settings(tmp_path / "in", retries=1),
        journal=journal,
        transport=MemoryTransport(MemoryPeer(), fail_with={uid: [0xA700] * 5}),
        sleep=lambda _: None,
    )

    assert (result.sent, result.failed) == (1, 1)
    assert result.failures[0].retryable


def test_unreachable_peer_is_exit_5_and_every_item_is_kept_not_sent_for_a_retry(
    tmp_path: Path, journal: Journal
) -> None:
    write_study(tmp_path / "in", n_instances=3, seed="down")

    result = send(
        settings(tmp_path / "in"),
        journal=journal,
        transport=MemoryTransport(MemoryPeer(reachable=False)),
    )

    assert result.exit_code == ExitCode.PEER_UNREACHABLE
    assert result.outcome == "unreachable"
    assert result.error is not None and "unreachable" in result.error
    # Not failed: the peer said nothing about them. Not sent, and a replay resends them.
    assert (result.failed, result.pending, result.total) == (0, 3, 3)
    items = journal.items(result.transfer_id)
    assert {i.state for i in items} == {"pending"}
    assert all(i.reason == result.error for i in items)


def test_nothing_to_send_is_an_input_error_and_no_transfer_is_made(
    tmp_path: Path, journal: Journal
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "letter.txt").write_text("not an image")

    with pytest.raises(NoDicomFoundError, match="1 file\\(s\\) skipped"):
        send(settings(tmp_path / "in"), journal=journal, transport=MemoryTransport(MemoryPeer()))
    assert journal.transfers() == []


class _InterruptedOnThird:
    """A transport that is interrupted (Ctrl-C) in the middle of its third instance."""

    def __init__(self) -> None:
        self.inner = MemoryTransport(MemoryPeer())
        self.calls = 0

    @property
    def description(self) -> str:
        return "interrupted"

    def open(self, instances: Sequence[Instance]) -> None:
        self.inner.open(instances)

    def store(self, instance: Instance) -> StoreOutcome:
        self.calls += 1
        if self.calls == 3:
            raise KeyboardInterrupt
        return self.inner.store(instance)

    def close(self) -> None:
        self.inner.close()


def test_interrupt_leaves_a_consistent_journal_that_says_what_is_not_sent(
    tmp_path: Path, journal: Journal
) -> None:
    write_study(tmp_path / "in", n_instances=5, seed="ctrl-c")

    with pytest.raises(Interrupted) as stopped:
        send(settings(tmp_path / "in"), journal=journal, transport=_InterruptedOnThird())

    (summary,) = journal.transfers()
    assert summary.outcome == "interrupted"
    assert summary.counts == {"sent": 2, "pending": 3}
    assert stopped.value.counts == {
        "sent": 2,
        "failed": 0,
        "not_sent": 3,
        "skipped": 0,
        "total": 5,
    }
    assert stopped.value.transfer_id == summary.id
    assert stopped.value.message == "interrupted after 2 of 5 sent"
    assert stopped.value.hint == f"resume with: dvdexit send --retry-failed --to {summary.peer}"


def test_verify_tells_identical_from_changed_and_unknown_files(
    tmp_path: Path, journal: Journal
) -> None:
    files = write_study(tmp_path / "in", n_instances=3, seed="verify")
    send(settings(tmp_path / "in"), journal=journal, transport=MemoryTransport(MemoryPeer()))
    data = bytearray(files[1].read_bytes())
    data[-1] ^= 0xFF  # one pixel changed
    files[1].write_bytes(bytes(data))
    stranger = write_study(tmp_path / "other", n_instances=1, seed="stranger")[0]

    result = verify_paths([tmp_path / "in", stranger], journal=journal)

    verdicts = {Path(f.path).name: f.verdict for f in result.files}
    assert verdicts == {
        files[0].name: "identical",
        files[1].name: "different",
        files[2].name: "identical",
        stranger.name: "unknown",
    }
    assert result.exit_code == ExitCode.VERIFY_FAILED
    assert verify_paths([files[0]], journal=journal).exit_code == ExitCode.OK


def _uids(folder: Path) -> list[str]:
    from dvdexit_cli.dicom.scan import scan

    return [i.sop_instance_uid for i in scan([folder]).instances]


def test_workers_get_whole_studies_in_scan_order_and_about_equal_bytes(tmp_path: Path) -> None:
    from dvdexit_cli.dicom.scan import scan
    from dvdexit_cli.sending.workers import partition as _partition

    for n, count in enumerate((6, 5, 3, 2)):
        write_study(tmp_path / f"s{n}", n_instances=count, seed=f"partition-{n}")
    found = scan([tmp_path])
    work = list(enumerate(found.instances))

    shares = _partition(work, 2)
    single = _partition(work, 8)

    assert len(shares) == 2
    assert sorted(e for share in shares for e in share) == sorted(work)
    for share in shares:
        studies = [inst.study_uid for _, inst in share]
        for study in set(studies):
            positions = [pos for pos, _ in share if found.instances[pos].study_uid == study]
            assert positions == sorted(positions)  # scan order within the study
            assert positions == list(range(positions[0], positions[0] + len(positions)))
    assert sorted(len(share) for share in shares) == [8, 8]  # 6+2 and 5+3
    assert len(single) == 4  # never more workers than studies


def test_verify_names_an_instance_the_journal_recorded_but_the_folder_lost(
    tmp_path: Path, journal: Journal
) -> None:
    files = write_study(tmp_path / "in", n_instances=3, seed="verify-missing")
    send(settings(tmp_path / "in"), journal=journal, transport=MemoryTransport(MemoryPeer()))
    lost = files[1]
    lost.unlink()

    result = verify_paths([tmp_path / "in"], journal=journal)

    (missing,) = [f for f in result.files if f.verdict == "missing"]
    assert missing.path == str(lost)
    assert list(result.study_status().values()) == ["incomplete"]
    assert result.exit_code == ExitCode.VERIFY_FAILED
    assert result.to_json()["missing"] == 1


class _BrokenOnSecond(_InterruptedOnThird):
    """A transport with a bug: its second store raises an unexpected exception."""

    def store(self, instance: Instance) -> StoreOutcome:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("bug in a transport")
        return self.inner.store(instance)


def test_a_bug_in_a_transport_ends_the_transfer_failed_and_keeps_the_rest_pending(
    tmp_path: Path, journal: Journal
) -> None:
    write_study(tmp_path / "in", n_instances=4, seed="bug")

    with pytest.raises(RuntimeError):
        send(settings(tmp_path / "in"), journal=journal, transport=_BrokenOnSecond())

    (summary,) = journal.transfers()
    assert summary.outcome == "failed"
    assert summary.error is not None and "RuntimeError" in summary.error
    assert summary.counts == {"sent": 1, "pending": 3}
    reasons = {i.reason for i in journal.items(summary.id) if i.state == "pending"}
    assert any(r and "internal error while sending" in r for r in reasons)
