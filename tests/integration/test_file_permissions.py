"""Patient data on disk is owner-only whatever the umask, unless a group is configured.

Real commands under umask 022 (the usual default, which makes new files 0644): a send
from a zip with a note as SR to a peer that is down (so the unpacked copies and the
generated SR stay for the replay), a send to a folder peer (a package), ``receive
--watch`` importing that package, and ``dvdexit receive`` receiving from DCMTK storescu
(including a conflict). Then every file and folder dvdexit made is checked.
"""

from __future__ import annotations

import grp
import os
import stat
import subprocess
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import tomli_w
from conftest import StartReceiver
from peers import LOOPBACK, dcmtk_env, free_port, run_dvdexit

from dvdexit_cli.journal import Journal
from dvdexit_cli.samples import make_sample_dvd

STORESCU = "/usr/bin/storescu"


@pytest.fixture
def umask_022() -> Iterator[None]:
    """Every process the test starts inherits umask 022, like a login shell."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _made_below(root: Path) -> list[Path]:
    """Every file and folder below ``root`` (not ``root`` itself), links not followed."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        found.extend(Path(dirpath, name) for name in dirnames + filenames)
    return found


def _modes(paths: list[Path]) -> dict[str, str]:
    return {str(p): oct(stat.S_IMODE(p.lstat().st_mode)) for p in paths}


def _exercise(
    tmp_path: Path, home: Path, receiver: StartReceiver, *, group: str | None = None
) -> tuple[Path, Path]:
    """Run every command that writes patient data; return (store, outbox).

    With ``group``, the folder peer's table and ``[receive]`` name it (peers.toml edited
    by hand, as the docs say).

    The receiver is still running when this returns (its journal's -wal and -shm exist).
    """
    store = home / "received"
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    dvd = make_sample_dvd(tmp_path / "dvd", seed="perm", ct_slices=2, sc_images=1)
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in dvd.root.rglob("*"):
            if path.is_file():
                zf.write(path, path.relative_to(dvd.root).as_posix())
    down = free_port()
    for args in (
        ("down", "--dimse", f"{LOOPBACK}:{down}", "--ae", "NOBODY"),
        ("out", "--folder", str(outbox)),
    ):
        added = run_dvdexit("peers", "add", *args, home=home)
        assert added.returncode == 0, added.stderr
    if group is not None:
        peers_file = home / "peers.toml"
        with peers_file.open("rb") as fh:
            document = tomllib.load(fh)
        document["peers"]["out"]["group"] = group
        document["receive"] = {"group": group}
        peers_file.write_bytes(tomli_w.dumps(document).encode())
        peers_file.chmod(0o600)  # a hand edit keeps the mode the editor gives

    # Unpacked copies and the generated SR are kept for --retry-failed.
    sent = run_dvdexit(
        "send", archive, "--to", "down", "--note", "for Dr. B", "--note-as-sr", home=home
    )
    assert sent.returncode == 5, sent.stderr
    unpacked = home / "unpacked"
    assert any(p.suffix == ".dcm" for p in unpacked.rglob("*")), "no copies kept"
    assert list(unpacked.glob("attached-*/*.dcm")), "no generated SR kept"

    other = make_sample_dvd(tmp_path / "dvd2", seed="perm-out", ct_slices=2, sc_images=1)
    packaged = run_dvdexit("send", other.root, "--to", "out", home=home)
    assert packaged.returncode == 0, packaged.stderr

    running = receiver(store)
    pushed = subprocess.run(
        [STORESCU, "-aec", running.ae, LOOPBACK, str(running.port), *map(str, dvd.instances)],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert pushed.returncode == 0, pushed.stderr
    # Same SOP Instance UID, other content: kept aside under conflicts/.
    changed = pydicom.dcmread(dvd.instances[0])
    changed.StudyDescription = "changed"
    twin = tmp_path / "twin.dcm"
    changed.save_as(twin, enforce_file_format=True)
    subprocess.run(
        [STORESCU, "-aec", running.ae, LOOPBACK, str(running.port), str(twin)],
        env=dcmtk_env(),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert list((store / "conflicts").iterdir()), "no conflict kept"

    watched = run_dvdexit("receive", "--watch", outbox, "--once", "--settle", "0", home=home)
    assert watched.returncode == 0, watched.stderr
    assert list((outbox / "done").iterdir()), "package not imported"
    assert (home / "journal.sqlite-wal").exists()
    return store, outbox


def test_everything_send_and_receive_write_is_owner_only_under_umask_022(
    tmp_path: Path, dvdexit_home: Path, dvdexit_receiver: StartReceiver, umask_022: None
) -> None:
    store, outbox = _exercise(tmp_path, dvdexit_home, dvdexit_receiver)
    made = _made_below(dvdexit_home) + _made_below(outbox)
    assert any(p.suffix == ".dcm" and p.is_relative_to(store) for p in made)
    loose = {path: mode for path, mode in _modes(made).items() if int(mode, 8) & 0o077}
    assert loose == {}, f"readable by others: {loose}"
    for path in made:
        expected = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(path.lstat().st_mode) == expected, path


def _other_group() -> grp.struct_group:
    """A group this account may give files to, other than its own primary group."""
    mine = os.getegid()
    for group in grp.getgrall():
        if group.gr_gid != mine and (os.geteuid() == 0 or group.gr_gid in os.getgroups()):
            return group
    pytest.skip("this account belongs to no second group")


def test_a_configured_group_can_read_the_store_and_the_packages_and_nothing_else(
    tmp_path: Path, dvdexit_home: Path, dvdexit_receiver: StartReceiver, umask_022: None
) -> None:
    group = _other_group()
    store, outbox = _exercise(tmp_path, dvdexit_home, dvdexit_receiver, group=group.gr_name)
    shared = [store, *_made_below(store), *_made_below(outbox)]
    for path in shared:
        st = path.lstat()
        expected = 0o2750 if path.is_dir() else 0o640
        assert (oct(stat.S_IMODE(st.st_mode)), st.st_gid) == (oct(expected), group.gr_gid), path
    private = [p for p in _made_below(dvdexit_home) if not (p == store or p.is_relative_to(store))]
    assert private
    for path in private:
        expected = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(path.lstat().st_mode) == expected, path


def test_a_group_that_does_not_exist_is_refused_by_name(dvdexit_home: Path) -> None:
    (dvdexit_home / "peers.toml").write_text('[receive]\ngroup = "no-such-group-x"\n')
    result = run_dvdexit("receive", "--port", str(free_port()), home=dvdexit_home, timeout=30)
    assert result.returncode == 3
    assert "group 'no-such-group-x' does not exist" in result.stderr


def test_a_journal_left_world_readable_by_an_older_version_is_closed_on_open(
    dvdexit_home: Path, umask_022: None
) -> None:
    journal = dvdexit_home / "journal.sqlite"
    Journal(journal).close()
    journal.chmod(0o644)  # what an older version left under umask 022
    status = run_dvdexit("status", home=dvdexit_home)
    assert status.returncode == 0, status.stderr
    assert oct(stat.S_IMODE(journal.stat().st_mode)) == oct(0o600)
