"""Test helpers that build media: pydicom's DICOMDIR medium, and ISO images of a folder."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

from pycdlib.pycdlib import PyCdlib
from pydicom.data import get_testdata_file


def build_iso(source: Path, iso_file: Path) -> None:
    """An ISO 9660 (level 1) image of ``source``, as a DVD burner would write it."""
    iso = PyCdlib()
    iso.new(interchange_level=1)
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source).as_posix().upper()
        if path.is_dir():
            iso.add_directory(f"/{rel}")
        else:
            data = path.read_bytes()
            name = rel if "." in path.name else rel + "."
            iso.add_fp(io.BytesIO(data), len(data), f"/{name};1")
    iso.write(str(iso_file))
    iso.close()


def medium(root: Path) -> Path:
    """pydicom's dicomdirtests medium (DICOMDIR + three patients), as a clean copy."""
    source = Path(get_testdata_file("DICOMDIR", read=False)).parent  # type: ignore[arg-type]
    root.mkdir(parents=True)
    shutil.copy(source / "DICOMDIR", root / "DICOMDIR")
    for folder in ("77654033", "98892001", "98892003"):
        shutil.copytree(source / folder, root / folder)
    return root
