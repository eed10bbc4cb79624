"""`dvdexit status`: what failed last night and why, filtered by peer, age and failure."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from peers import run_dvdexit

from dvdexit_cli.dicom.scan import scan
from dvdexit_cli.journal import Journal
from dvdexit_cli.samples import make_sample_dvd


def _journal_with_two_transfers(home: Path, tmp_path: Path) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=3, sc_images=1)
    found = scan([media.root])
    with Journal(home / "journal.sqlite") as journal:
        good, ids = journal.create_transfer(
            peer="pacs",
            peer_address="10.0.0.5:104",
            inputs=[media.root],
            instances=found.instances,
            rejected=[],
            note="referral to cardiology",
            recipient="Dr. Demo",
        )
        for item in ids:
            journal.record_outcome(item, state="sent", status=0, reason=None)
        journal.finish_transfer(good, outcome="complete", error=None)
        bad, ids = journal.create_transfer(
            peer="archive",
            peer_address="10.0.0.9:104",
            inputs=[media.root],
            instances=found.instances,
            rejected=[],
        )
        journal.record_outcome(
            ids[0],
            state="failed",
            status=0xA700,
            reason="out of resources at the peer",
            retryable=True,
        )
        journal.record_outcome(
            ids[1], state="failed", status=0x0122, reason="SOP class not supported by the peer"
        )
        for item in ids[2:]:
            journal.record_outcome(item, state="sent", status=0, reason=None)
        journal.finish_transfer(bad, outcome="partial", error=None)
    # The first transfer ran two days ago.
    db = sqlite3.connect(home / "journal.sqlite")
    with db:
        db.execute(
            "UPDATE transfers SET created_at = '2000-01-01T00:00:00.000Z',"
            " finished_at = '2000-01-01T00:00:04.000Z' WHERE id = ?",
            (good,),
        )
    db.close()


def test_failed_lists_only_failing_transfers_with_plain_reasons(
    tmp_path: Path, dvdexit_home: Path
) -> None:
    _journal_with_two_transfers(dvdexit_home, tmp_path)

    done = run_dvdexit("status", "--failed", "--json", home=dvdexit_home)
    human = run_dvdexit("status", "--failed", home=dvdexit_home)

    assert done.returncode == 0, done.stderr
    transfers = json.loads(done.stdout)["transfers"]
    assert [t["peer"] for t in transfers] == ["archive"]
    reasons = sorted(f["plain_reason"] for f in transfers[0]["failures"])
    assert reasons == [
        "0122 SOP class not supported by the peer: ask the peer to accept this kind of object",
        "A700 out of resources at the peer: retry later",
    ]
    assert "A700 out of resources at the peer: retry later" in human.stdout


def test_since_and_peer_filter_and_duration_and_throughput_are_reported(
    tmp_path: Path, dvdexit_home: Path
) -> None:
    _journal_with_two_transfers(dvdexit_home, tmp_path)

    recent = json.loads(run_dvdexit("status", "--since", "1d", "--json", home=dvdexit_home).stdout)
    pacs = json.loads(
        run_dvdexit(
            "status", "--peer", "pacs", "--since", "52w", "--json", home=dvdexit_home
        ).stdout
    )
    everything = json.loads(run_dvdexit("status", "--json", home=dvdexit_home).stdout)
    bad = run_dvdexit("status", "--since", "yesterday", home=dvdexit_home)

    assert [t["peer"] for t in recent["transfers"]] == ["archive"]
    assert pacs["transfers"] == []  # pacs's transfer is older than 52 weeks
    old = next(t for t in everything["transfers"] if t["peer"] == "pacs")
    assert old["seconds"] == 4.0
    assert old["bytes_sent"] > 0
    assert old["bytes_per_second"] == round(old["bytes_sent"] / 4)
    assert old["note"] == "referral to cardiology"
    assert old["recipient"] == "Dr. Demo"
    assert bad.returncode == 2
    assert "--since: 'yesterday' is not a duration" in bad.stderr
