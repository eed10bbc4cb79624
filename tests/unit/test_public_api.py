"""The library's public API: everything in __all__ exists, is documented, and prints nothing."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import dvdexit_cli
from dvdexit_cli.samples import write_study


def test_every_exported_name_exists_and_has_a_docstring() -> None:
    for name in dvdexit_cli.__all__:
        member = getattr(dvdexit_cli, name)
        if name.startswith("__") or name == "AnyPeer":
            continue
        assert (member.__doc__ or "").strip(), f"{name} has no docstring"


def test_the_library_prints_nothing_and_adds_only_a_null_handler(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    handlers = logging.getLogger("dvdexit_cli").handlers
    assert handlers and all(isinstance(h, logging.NullHandler) for h in handlers)
    write_study(tmp_path / "study", n_instances=3, seed="quiet")
    capfd.readouterr()

    with dvdexit_cli.Journal(tmp_path / "journal.sqlite") as journal:
        result = dvdexit_cli.send(
            dvdexit_cli.SendSettings(inputs=(tmp_path / "study",), peer_name="m", peer_address="m"),
            journal=journal,
            transport=dvdexit_cli.MemoryTransport(dvdexit_cli.MemoryPeer()),
        )

    assert result.sent == 3
    assert capfd.readouterr() == ("", "")


def test_code_written_against_the_old_module_paths_still_imports() -> None:
    """``dvdexit_cli.engine`` and ``dvdexit_cli.verify_remote`` stay one release as
    re-exports of ``dvdexit_cli.sending`` and ``dvdexit_cli.verify``."""
    from dvdexit_cli import engine, sending, verify, verify_remote

    old_engine = [
        "DEFAULT_BATCH_BYTES",
        "DEFAULT_BATCH_SIZE",
        "VERDICTS",
        "AbandonResult",
        "FileProblem",
        "RetryResult",
        "RetrySettings",
        "SendPlan",
        "SendResult",
        "SendSettings",
        "SeriesPlan",
        "VerifiedFile",
        "VerifyResult",
        "abandon",
        "batches",
        "plan_send",
        "retry_failed",
        "send",
        "verify_paths",
    ]
    old_remote = [
        "REMOTE_VERDICTS",
        "Expected",
        "RemoteVerdict",
        "RemoteVerifyResult",
        "expected_from_journal",
        "expected_from_paths",
        "verify_remote",
        "verify_remote_dicomweb",
        "verify_remote_memory",
    ]
    for name in old_engine:
        assert name in engine.__all__
        assert getattr(engine, name) is getattr(sending if hasattr(sending, name) else verify, name)
    for name in old_remote:
        assert name in verify_remote.__all__
        assert getattr(verify_remote, name) is getattr(verify, name)
