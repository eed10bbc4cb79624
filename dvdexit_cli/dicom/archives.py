"""Zip files and ISO 9660 images (DVD images) as inputs: unpacked member by member, safely.

An archive is untrusted. Each member is streamed to a file under a folder dvdexit owns
(never read whole into memory); a member whose name is absolute or climbs out with
``..`` is refused on its own, with a reason, and the other members are unpacked. ISO
images are read with pycdlib (no mounting, no root), preferring Rock Ridge, then Joliet
names, then plain ISO 9660 names (without their ``;1`` version suffix).

A member may not expand without limit (docs/security.md, "zip bombs"): it is refused
when it would leave less than ``ArchiveLimits.free_space_margin`` free on the unpack
folder's disk, when a zip member declares more than ``max_ratio`` times its compressed
size (above ``ratio_free_size``), and when it turns out larger than it declared. A
refused or failed member leaves no partial file. A member that is a link (zip: unix
mode bits; ISO: Rock Ridge) is made a link in the unpacked folder only when it points
inside the archive; the scan then follows it like any link (docs/sending.md).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import posixpath
import shutil
import stat
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal, Protocol

from pycdlib.pycdlib import PyCdlib
from pycdlib.pycdlibexception import PyCdlibException

from dvdexit_cli.dicom.digest import CHUNK_SIZE
from dvdexit_cli.fsmode import PRIVATE

__all__ = [
    "FREE_SPACE_MARGIN",
    "MAX_EXPANSION_RATIO",
    "RATIO_FREE_SIZE",
    "ArchiveLimits",
    "ArchiveProblem",
    "archive_kind",
    "safe_member_parts",
    "unpack",
    "unpack_folder",
]

ArchiveKind = Literal["zip", "iso"]

#: A zip member may expand to at most this many times its compressed size ...
MAX_EXPANSION_RATIO = 100
#: ... unless it is no larger than this: a small image of zeros compresses that well.
RATIO_FREE_SIZE = 16 << 20
#: Free space a member must leave on the unpack folder's disk (the journal lives there).
FREE_SPACE_MARGIN = 256 << 20
_UNIX = 3  # a zip member's "made by" system whose external attributes hold a mode
#: The longest link target a link member may hold (Linux PATH_MAX).
_MAX_LINK = 4096


@dataclass(frozen=True)
class ArchiveLimits:
    """What an archive member may expand to; the defaults are the documented constants."""

    max_ratio: float = MAX_EXPANSION_RATIO
    ratio_free_size: int = RATIO_FREE_SIZE
    free_space_margin: int = FREE_SPACE_MARGIN


class _Refused(Exception):
    """A member that is not unpacked, with the reason (the archive's other members go on)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ArchiveProblem:
    """A member (or a whole archive) that could not be unpacked, and why."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason


def archive_kind(path: Path) -> ArchiveKind | None:
    """``zip`` or ``iso`` when the file is one (by its content, not its name), else None."""
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
            if head in (b"PK\x03\x04", b"PK\x05\x06"):
                return "zip"
            fh.seek(0x8001)
            if fh.read(5) == b"CD001":
                return "iso"
    except OSError:
        return None
    return None


def safe_member_parts(name: str) -> list[str] | None:
    """The path parts of an archive member name, or None when it would leave its root."""
    if not name or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return None
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        return None
    return parts


def unpack_folder(root: Path, archive: Path) -> Path:
    """Where ``archive`` is unpacked under ``root``: stable for the same archive file."""
    stat = archive.stat()
    key = hashlib.sha256(
        f"{archive.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()
    ).hexdigest()[:16]
    return root / f"{archive.name}-{key}"


def _member_path(archive: Path, name: str) -> Path:
    return Path(f"{archive}!/{name.lstrip('/')}")


class _Writer(Protocol):
    def write(self, data: bytes, /) -> int: ...


class _Bounded:
    """A writer that refuses to take more than ``limit`` bytes."""

    def __init__(self, out: IO[bytes], limit: int) -> None:
        self._out = out
        self._left = limit
        self._limit = limit

    def write(self, data: bytes) -> int:
        self._left -= len(data)
        if self._left < 0:
            raise _Refused(f"expands past its declared size of {self._limit} bytes; not unpacked")
        return self._out.write(data)


def _extract(
    target: Path,
    parts: list[str],
    declared: int,
    copy: Callable[[_Writer], object],
    limits: ArchiveLimits,
    *,
    bounded: bool = True,
) -> None:
    """Write one member (``copy`` writes its bytes) under ``target``; leave nothing on failure.

    Refuses a member that would leave less than the margin free, or (``bounded``) that
    writes more than its ``declared`` size.
    """
    free = shutil.disk_usage(target).free
    if declared + limits.free_space_margin > free:
        raise _Refused(
            f"needs {declared} bytes and {limits.free_space_margin} kept free, but only "
            f"{free} are free where archives are unpacked; not unpacked (free some space, "
            "then send the archive again)"
        )
    dest = target.joinpath(*parts)
    PRIVATE.make_dir(dest.parent)
    if dest.is_symlink():  # left by an earlier unpack: never write through it
        dest.unlink()
    try:
        with PRIVATE.open_new(dest) as out:
            copy(_Bounded(out, declared) if bounded else out)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def _copy(source: IO[bytes], out: _Writer) -> None:
    shutil.copyfileobj(source, out, CHUNK_SIZE)


def _copy_from_iso(facade: Any, iso_path: str, out: _Writer) -> None:
    facade.get_file_from_iso_fp(out, iso_path)


def _check_ratio(info: zipfile.ZipInfo, limits: ArchiveLimits) -> None:
    size, packed = info.file_size, max(info.compress_size, 1)
    if size > limits.ratio_free_size and size > limits.max_ratio * packed:
        raise _Refused(
            f"declares {size} bytes, {size // packed} times its compressed size (the limit "
            f"is {limits.max_ratio:g}: a zip bomb?); not unpacked (if it is genuine, unpack "
            "the archive yourself and send the folder)"
        )


def _make_links(
    archive: Path, target: Path, links: list[tuple[list[str], str]]
) -> list[ArchiveProblem]:
    """Make the archive's link members links in ``target`` when they point inside it.

    Made after every other member, so no member is ever written through a link.
    """
    problems: list[ArchiveProblem] = []
    real_target = target.resolve()
    made: list[tuple[Path, str, str]] = []
    for parts, link in links:
        shown = "/".join(parts)
        outside = _outside(archive, shown, link)
        where = posixpath.normpath(posixpath.join(*parts[:-1], link))
        if link.startswith("/") or where == ".." or where.startswith("../") or "\\" in link:
            problems.append(outside)
            continue
        dest = target.joinpath(*parts)
        try:
            PRIVATE.make_dir(dest.parent)
            if not dest.parent.resolve().is_relative_to(real_target):
                problems.append(outside)
                continue
            if dest.is_symlink():  # made by an earlier unpack of this archive
                dest.unlink()
            dest.symlink_to(link)
        except OSError as exc:
            problems.append(
                ArchiveProblem(
                    _member_path(archive, shown),
                    f"cannot unpack archive member: {exc.strerror or exc}",
                )
            )
            continue
        made.append((dest, shown, link))
    # A link may lead out through another link: look where each one ends.
    for dest, shown, link in made:
        if not Path(os.path.realpath(dest)).is_relative_to(real_target):
            dest.unlink()
            problems.append(_outside(archive, shown, link))
    return problems


def _outside(archive: Path, shown: str, link: str) -> ArchiveProblem:
    return ArchiveProblem(
        _member_path(archive, shown), f"a link to {link}, outside the archive; not followed"
    )


def unpack(
    archive: Path, kind: ArchiveKind, target: Path, *, limits: ArchiveLimits | None = None
) -> list[ArchiveProblem]:
    """Unpack ``archive`` into ``target``; return the members (or archive) refused."""
    PRIVATE.make_dir(target)
    limits = limits or ArchiveLimits()
    if kind == "zip":
        return _unpack_zip(archive, target, limits)
    return _unpack_iso(archive, target, limits)


def _refused(archive: Path, name: str) -> ArchiveProblem:
    return ArchiveProblem(
        _member_path(archive, name),
        f"archive member name {name!r} is absolute or leaves the archive ('..'); not unpacked",
    )


def _unpack_zip(archive: Path, target: Path, limits: ArchiveLimits) -> list[ArchiveProblem]:
    problems: list[ArchiveProblem] = []
    links: list[tuple[list[str], str]] = []
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                # ZipInfo.is_dir() raises IndexError on an empty name (a hostile zip).
                if info.filename.endswith("/"):
                    continue
                parts = safe_member_parts(info.filename)
                if parts is None:
                    problems.append(_refused(archive, info.filename))
                    continue
                try:
                    if info.create_system == _UNIX and stat.S_ISLNK(info.external_attr >> 16):
                        with zf.open(info) as src:
                            links.append((parts, _link_text(src.read(_MAX_LINK + 1))))
                        continue
                    _check_ratio(info, limits)
                    with zf.open(info) as src:
                        _extract(
                            target,
                            parts,
                            info.file_size,
                            functools.partial(_copy, src),
                            limits,
                        )
                except _Refused as exc:
                    problems.append(
                        ArchiveProblem(_member_path(archive, info.filename), exc.reason)
                    )
                except zipfile.BadZipFile as exc:
                    problems.append(
                        ArchiveProblem(
                            _member_path(archive, info.filename), _bad_member(exc, info.file_size)
                        )
                    )
                except (zlib.error, NotImplementedError, RuntimeError) as exc:
                    problems.append(
                        ArchiveProblem(
                            _member_path(archive, info.filename),
                            f"cannot unpack archive member: {exc}",
                        )
                    )
                except OSError as exc:  # e.g. a member named like a folder of another
                    problems.append(
                        ArchiveProblem(
                            _member_path(archive, info.filename),
                            f"cannot unpack archive member: {exc.strerror or exc}",
                        )
                    )
    except (zipfile.BadZipFile, zlib.error) as exc:
        problems.append(ArchiveProblem(archive, f"damaged zip file: {exc}"))
    except OSError as exc:
        problems.append(ArchiveProblem(archive, f"cannot unpack: {exc.strerror or exc}"))
    return problems + _make_links(archive, target, links)


def _link_text(raw: bytes) -> str:
    if len(raw) > _MAX_LINK or b"\0" in raw:
        raise _Refused("a link member whose target is not a path; not unpacked")
    return raw.decode("utf-8", errors="replace")


def _bad_member(exc: zipfile.BadZipFile, declared: int) -> str:
    if "CRC" in str(exc):
        # zipfile stops at the declared size, so a member that expands further fails here.
        return (
            f"does not match its checksum once its declared size of {declared} bytes is "
            "read: damaged, or larger than it declares; not unpacked"
        )
    return f"cannot unpack archive member: {exc}"


def _iso_name(name: str) -> str:
    """An ISO 9660 file name without its version (``;1``) and an empty extension's dot."""
    base = name.split(";", 1)[0]
    return base[:-1] if base.endswith(".") else base


def _unpack_iso(archive: Path, target: Path, limits: ArchiveLimits) -> list[ArchiveProblem]:
    problems: list[ArchiveProblem] = []
    links: list[tuple[list[str], str]] = []
    iso = PyCdlib()
    try:
        iso.open(str(archive))
    except (PyCdlibException, OSError, ValueError) as exc:
        return [ArchiveProblem(archive, f"unreadable ISO 9660 image: {exc}")]
    try:
        if iso.has_rock_ridge():
            facade: Any = iso.get_rock_ridge_facade()
            plain = False
        elif iso.has_joliet():
            facade = iso.get_joliet_facade()
            plain = False
        else:
            facade = iso.get_iso9660_facade()
            plain = True
        try:
            for dirpath, _dirs, files in facade.walk("/"):
                for name in files:
                    iso_path = str(PurePosixPath(dirpath) / name)
                    shown = _iso_name(iso_path) if plain else iso_path
                    parts = safe_member_parts(shown.lstrip("/"))
                    if parts is None:
                        problems.append(_refused(archive, shown))
                        continue
                    try:
                        record = facade.get_record(iso_path)
                        if record.is_symlink():
                            links.append((parts, _link_text(record.rock_ridge.symlink_path())))
                            continue
                        # An image's sizes are real (its extents): no ratio, no lie to catch.
                        _extract(
                            target,
                            parts,
                            record.get_data_length(),
                            functools.partial(_copy_from_iso, facade, iso_path),
                            limits,
                            bounded=False,
                        )
                    except _Refused as exc:
                        problems.append(ArchiveProblem(_member_path(archive, shown), exc.reason))
                    except (PyCdlibException, ValueError, OSError) as exc:
                        problems.append(
                            ArchiveProblem(
                                _member_path(archive, shown), f"cannot read from the image: {exc}"
                            )
                        )
        except (PyCdlibException, ValueError) as exc:
            problems.append(ArchiveProblem(archive, f"damaged ISO 9660 image: {exc}"))
    except OSError as exc:
        problems.append(ArchiveProblem(archive, f"cannot unpack: {exc.strerror or exc}"))
    finally:
        with contextlib.suppress(PyCdlibException):
            iso.close()
    return problems + _make_links(archive, target, links)
