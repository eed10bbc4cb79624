"""Files and folders that hold patient data, created owner-only whatever the umask.

Everything dvdexit writes (journal, unpacked copies, generated reports, staging copies,
the receiver's store, packages) is created through ``Access``: files 0600 and folders
0700 (``PRIVATE``), or, for the folders other people are meant to read (a receiver's
store, a folder peer's packages), 0640 / 2750 with one configured group
(``group_access``). The modes are set explicitly, never left to the umask: ``os.open``
and ``os.mkdir`` only ever remove bits from the mode they are given, so each creation is
followed by a chmod of its own descriptor or path. Nothing here changes process-wide
state (no ``os.umask``).
"""

from __future__ import annotations

import grp
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from dvdexit_cli.errors import ConfigError

__all__ = ["PRIVATE", "Access", "group_access"]


@dataclass(frozen=True)
class Access:
    """Who may read what dvdexit creates: the owner only, or the owner and one group."""

    group: str | None = None
    gid: int | None = None

    @property
    def file_mode(self) -> int:
        return 0o600 if self.gid is None else 0o640

    @property
    def dir_mode(self) -> int:
        # setgid on a shared folder: what others put in it (a hook, an operator) keeps
        # the group too.
        return 0o700 if self.gid is None else 0o2750

    def mkdir(self, path: Path) -> None:
        """Create the folder ``path`` with ``dir_mode`` (FileExistsError if it exists)."""
        os.mkdir(path, 0o700)
        self._set(path, self.dir_mode)

    def make_dir(self, path: Path) -> None:
        """Create ``path`` and its missing parents with ``dir_mode``; existing ones stay."""
        missing: list[Path] = []
        folder = path
        while not folder.is_dir() and folder != folder.parent:
            missing.append(folder)
            folder = folder.parent
        for folder in reversed(missing):
            try:
                self.mkdir(folder)
            except FileExistsError:
                if not folder.is_dir():
                    raise
                # made meanwhile by another thread or process

    def open_new(self, path: Path, *, exclusive: bool = False) -> BinaryIO:
        """Open ``path`` for writing (truncated, or new with ``exclusive``) with our mode.

        Never through a symbolic link (OSError): patient data goes where it was meant to.
        """
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        flags |= os.O_EXCL if exclusive else os.O_TRUNC
        fd = os.open(path, flags, 0o600)
        try:
            os.fchmod(fd, self.file_mode)
            if self.gid is not None:
                os.fchown(fd, -1, self.gid)
            return os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            raise

    def restrict(self, path: Path) -> None:
        """Give an existing file or folder exactly our mode and group.

        For what another library created (SQLite, zipfile) and for folders and journals
        left group- or world-readable by an older version. A path owned by another
        account is left alone (only its owner may change it).
        """
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode) or st.st_uid != os.geteuid():
            return
        mode = self.dir_mode if stat.S_ISDIR(st.st_mode) else self.file_mode
        if stat.S_IMODE(st.st_mode) != mode or (self.gid is not None and st.st_gid != self.gid):
            self._set(path, mode)

    def restrict_tree(self, root: Path) -> None:
        """``restrict`` ``root`` and everything below it (symbolic links are not followed)."""
        self.restrict(root)
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                self.restrict(Path(dirpath, name))

    def _set(self, path: Path, mode: int) -> None:
        if self.gid is not None:
            os.chown(path, -1, self.gid)
        os.chmod(path, mode)  # after chown: changing the group clears the setgid bit


PRIVATE = Access()
"""Owner-only: files 0600, folders 0700."""


def group_access(name: str, *, where: str) -> Access:
    """Owner plus group ``name`` (files 0640, folders 2750); ConfigError naming ``where``.

    The group must exist and this account must belong to it (else it could not give
    files to it); root may use any group.
    """
    try:
        gid = grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(
            f"{where}: group {name!r} does not exist",
            hint="give an existing group (getent group NAME), or remove the key "
            "to keep the files owner-only",
        ) from None
    if os.geteuid() != 0 and gid != os.getegid() and gid not in os.getgroups():
        raise ConfigError(
            f"{where}: this account is not a member of group {name!r}, "
            "so it cannot give files to it",
            hint=f"add the account to the group (usermod -aG {name} ACCOUNT) and start "
            "dvdexit in a new login session",
        )
    return Access(group=name, gid=gid)
