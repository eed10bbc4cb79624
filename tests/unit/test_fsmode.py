"""fsmode: patient-data files get their mode from dvdexit, never from the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from dvdexit_cli.errors import ConfigError
from dvdexit_cli.fsmode import PRIVATE, group_access


@pytest.fixture(params=[0o000, 0o022, 0o077])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def test_files_and_folders_are_owner_only_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    PRIVATE.make_dir(tmp_path / "a" / "b")
    with PRIVATE.open_new(tmp_path / "a" / "b" / "f.dcm") as out:
        out.write(b"x")
    modes = {
        p.relative_to(tmp_path).as_posix(): oct(stat.S_IMODE(p.stat().st_mode))
        for p in tmp_path.rglob("*")
    }
    assert modes == {"a": "0o700", "a/b": "0o700", "a/b/f.dcm": "0o600"}


def test_a_file_is_never_written_through_a_symbolic_link(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_bytes(b"keep")
    (tmp_path / "link").symlink_to(elsewhere)
    with pytest.raises(OSError):
        PRIVATE.open_new(tmp_path / "link")
    assert elsewhere.read_bytes() == b"keep"


def test_a_group_that_does_not_exist_is_a_configuration_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"\[receive\] group: group 'no-such-grp-9' does not"):
        group_access("no-such-grp-9", where="[receive] group")
