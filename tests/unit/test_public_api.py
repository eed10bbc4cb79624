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
