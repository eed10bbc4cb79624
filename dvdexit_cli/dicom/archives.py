"""Zip files and ISO 9660 images (DVD images) as inputs: unpacked member by member, safely.

An archive is untrusted. Each member is streamed to a file under a folder dvdexit owns
(never read whole into memory); a member whose name is absolute or climbs out with
``..`` is refused on its own, with a reason, and the other members are unpacked. ISO
images are read with pycdlib (no mounting, no root), preferring Rock Ridge, then Joliet
names, then plain ISO 9660 names (without their ``;1`` version suffix).
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pycdlib.pycdlib import PyCdlib
from pycdlib.pycdlibexception import PyCdlibException

from dvdexit_cli.dicom.digest import CHUNK_SIZE
from dvdexit_cli.fsmode import PRIVATE

__all__ = ["ArchiveProblem", "archive_kind", "safe_member_parts", "unpack", "unpack_folder"]

ArchiveKind = Literal["zip", "iso"]


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


def _write(target: Path, parts: list[str], source: Any) -> None:
    dest = target.joinpath(*parts)
    PRIVATE.make_dir(dest.parent)
    with PRIVATE.open_new(dest) as out:
        shutil.copyfileobj(source, out, CHUNK_SIZE)


def unpack(archive: Path, kind: ArchiveKind, target: Path) -> list[ArchiveProblem]:
    """Unpack ``archive`` into ``target``; return the members (or archive) refused."""
    PRIVATE.make_dir(target)
    if kind == "zip":
        return _unpack_zip(archive, target)
    return _unpack_iso(archive, target)


def _refused(archive: Path, name: str) -> ArchiveProblem:
    return ArchiveProblem(
        _member_path(archive, name),
        f"archive member name {name!r} is absolute or leaves the archive ('..'); not unpacked",
    )


def _unpack_zip(archive: Path, target: Path) -> list[ArchiveProblem]:
    problems: list[ArchiveProblem] = []
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
                    with zf.open(info) as src:
                        _write(target, parts, src)
                except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError) as exc:
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
    return problems


def _iso_name(name: str) -> str:
    """An ISO 9660 file name without its version (``;1``) and an empty extension's dot."""
    base = name.split(";", 1)[0]
    return base[:-1] if base.endswith(".") else base


def _unpack_iso(archive: Path, target: Path) -> list[ArchiveProblem]:
    problems: list[ArchiveProblem] = []
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
                    dest = target.joinpath(*parts)
                    try:
                        PRIVATE.make_dir(dest.parent)
                        with PRIVATE.open_new(dest) as out:
                            facade.get_file_from_iso_fp(out, iso_path)
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
    return problems
