"""``dvdexit receive`` refuses a bad configuration before it listens or touches the store."""

from __future__ import annotations

from pathlib import Path

import pytest
from peers import run_dvdexit


@pytest.mark.parametrize(
    ("options", "code", "words"),
    [
        (["--durability", "sometimes"], 2, "sometimes"),
        (["--require-tls"], 2, "--tls-cert"),
        (["--min-free", "plenty"], 2, "--min-free"),
        (["--allow-ae", "AN_AE_TITLE_FAR_TOO_LONG"], 3, "--allow-ae"),
        (["--commit-reply", "HOSP_A"], 2, "--commit-reply"),
        (["--forward-to", "nowhere"], 3, "nowhere"),
        (["--on-complete", "sh -c 'unbalanced"], 2, "quoting"),
        (["--tls-cert", "/nonexistent/cert.pem"], 3, "TLS"),
        (["--layout", "{PatientName}/{sop}.dcm"], 2, "--layout"),
    ],
)
def test_bad_receive_options_exit_before_listening(
    tmp_path: Path, dvdexit_home: Path, options: list[str], code: int, words: str
) -> None:
    store = tmp_path / "STORE"
    result = run_dvdexit(
        "receive", "--port", "11112", "--store", store, *options, home=dvdexit_home
    )
    assert result.returncode == code, result.stderr
    assert words in result.stderr
    assert not store.exists()


def test_reconcile_without_forwarding_is_a_usage_error(tmp_path: Path, dvdexit_home: Path) -> None:
    mapping = tmp_path / "map.csv"
    mapping.write_text("sender_id,sender_issuer,local_id,local_issuer\n1,,2,\n")
    result = run_dvdexit("receive", "--port", "11112", "--reconcile", mapping, home=dvdexit_home)
    assert result.returncode == 2, result.stderr
    assert "--forward-to" in result.stderr


def test_rerun_hooks_needs_a_command_and_with_nothing_failed_does_nothing(
    tmp_path: Path, dvdexit_home: Path
) -> None:
    missing = run_dvdexit("receive", "--rerun-hooks", home=dvdexit_home)
    assert missing.returncode == 2 and "--on-complete" in missing.stderr
    marker = tmp_path / "ran"
    none_failed = run_dvdexit(
        "receive", "--rerun-hooks", "--on-complete", f"touch {marker}", home=dvdexit_home
    )
    assert none_failed.returncode == 0, none_failed.stderr
    assert "0 stud(ies)" in none_failed.stderr
    assert not marker.exists()
