"""Small pieces of verify and status: commitment in the journal, rejection texts, durations."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from dvdexit_cli.cli.status import parse_duration, plain_reason
from dvdexit_cli.config import DimsePeer
from dvdexit_cli.diagnose import explain_rejection
from dvdexit_cli.dicom.scan import scan
from dvdexit_cli.errors import UsageError
from dvdexit_cli.journal import Journal
from dvdexit_cli.samples import make_sample_dvd


def test_commitment_marks_only_sent_items_of_the_named_transfer(tmp_path: Path) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=2, sc_images=1)
    found = scan([media.root])
    uids = [i.sop_instance_uid for i in found.instances]
    with Journal(tmp_path / "journal.sqlite") as journal:
        first, first_ids = journal.create_transfer(
            peer="pacs",
            peer_address="h:1",
            inputs=[media.root],
            instances=found.instances,
            rejected=[],
        )
        second, second_ids = journal.create_transfer(
            peer="pacs",
            peer_address="h:1",
            inputs=[media.root],
            instances=found.instances,
            rejected=[],
        )
        for item in [*first_ids, *second_ids[1:]]:
            journal.record_outcome(item, state="sent", status=0, reason=None)

        changed = journal.mark_committed(uids, transfer_id=second)

        assert changed == len(uids) - 1  # the second transfer's first item was never sent
        states = {i.id: i.state for i in journal.items(second)}
        assert states[second_ids[0]] == "pending"
        assert {states[i] for i in second_ids[1:]} == {"committed"}
        assert {i.state for i in journal.items(first)} == {"sent"}
        rows = journal.sent_instances(transfer_id=second)
        assert {r["sop_instance_uid"] for r in rows} == set(uids[1:])
        assert all(r["digest"] and r["sop_class_uid"] for r in rows)


def test_association_rejections_are_translated_with_the_ae_titles() -> None:
    peer = DimsePeer(name="pacs", host="h", port=104, called_ae="THEIRS", calling_ae="OURS")
    called, hint = explain_rejection(1, 7, peer)
    calling, calling_hint = explain_rejection(1, 3, peer)
    busy, _ = explain_rejection(3, 1, peer)
    odd, _ = explain_rejection(1, 99, peer)
    assert called == "called AE title not recognised: the peer does not know THEIRS"
    assert "THEIRS" in hint and "pacs" in hint
    assert "OURS" in calling and "OURS" in calling_hint
    assert "congestion" in busy
    assert "reason 99" in odd


def test_durations_and_plain_reasons() -> None:
    assert parse_duration("12h") == timedelta(hours=12)
    assert parse_duration("2w") == timedelta(weeks=2)
    with pytest.raises(UsageError):
        parse_duration("12 hours")
    assert plain_reason(0xA701, None) == "A701 out of resources at the peer: retry later"
    assert plain_reason(0xC123, None).startswith("C123 the peer cannot understand")
    assert plain_reason(None, "no answer from the peer") == "no answer from the peer"
