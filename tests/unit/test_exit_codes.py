"""The exit codes in docs/exit-codes.md are exactly the enum's; errors map to them."""

from __future__ import annotations

import re
from pathlib import Path

from dvdexit_cli import errors
from dvdexit_cli.exitcodes import ExitCode

DOC = Path(__file__).resolve().parents[2] / "docs" / "exit-codes.md"


def test_docs_table_matches_the_enum() -> None:
    rows = re.findall(r"^\| (\d+) \| `(\w+)` \| (.+?) \|$", DOC.read_text(), flags=re.MULTILINE)
    documented = {int(code): (name, meaning) for code, name, meaning in rows}
    expected = {int(c): (c.name, c.description) for c in ExitCode}
    assert documented == expected


def test_each_error_class_carries_its_documented_exit_code() -> None:
    assert errors.UsageError("x").exit_code == ExitCode.USAGE
    assert errors.UnknownPeerError("x").exit_code == ExitCode.CONFIG
    assert errors.NoDicomFoundError("x").exit_code == ExitCode.INPUT
    assert errors.AssociationRejectedError("x").exit_code == ExitCode.PEER_UNREACHABLE
    assert errors.AssociationRejectedError("x").retryable
    assert errors.VerificationError("x").exit_code == ExitCode.VERIFY_FAILED
    assert errors.JournalBusyError("x").exit_code == ExitCode.JOURNAL
    assert errors.DvdexitError("x").exit_code == ExitCode.INTERNAL
