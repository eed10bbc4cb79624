"""`dvdexit verify --peer`: bad combinations are usage errors, before any network traffic."""

from __future__ import annotations

import json
from pathlib import Path

from peers import run_dvdexit


def test_peer_needs_exactly_one_selection_and_selections_need_peer(
    tmp_path: Path, dvdexit_home: Path
) -> None:
    run_dvdexit(
        "peers",
        "add",
        "pacs",
        "--dimse",
        "pacs.example.invalid:104",
        "--ae",
        "PACS",
        home=dvdexit_home,
    )

    both = run_dvdexit(
        "verify", "--peer", "pacs", "--transfer", "1", "--study", "1.2.3", home=dvdexit_home
    )
    neither = run_dvdexit("verify", "--peer", "pacs", home=dvdexit_home)
    no_peer = run_dvdexit("verify", "--study", "1.2.3", "--json", home=dvdexit_home)
    nothing_sent = run_dvdexit(
        "verify", "--peer", "pacs", "--transfer", "99", "--json", home=dvdexit_home
    )

    assert both.returncode == neither.returncode == no_peer.returncode == 2
    assert "exactly one of --transfer ID, --study UID or PATH" in both.stderr
    assert json.loads(no_peer.stdout)["error"]["type"] == "UsageError"
    assert nothing_sent.returncode == 4  # nothing matches: no connection attempted
    assert "nothing to verify" in json.loads(nothing_sent.stdout)["error"]["message"]
