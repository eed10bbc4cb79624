"""A drop folder of packages: intact ones are imported into the receive store, others refused."""

from __future__ import annotations

from pathlib import Path

from dvdexit_cli.dicom.digest import dataset_digest
from dvdexit_cli.dicom.scan import scan
from dvdexit_cli.journal import Journal
from dvdexit_cli.package import Manifest, write_package
from dvdexit_cli.package.watch import process_drop_folder
from dvdexit_cli.receive.store import InstanceStore
from dvdexit_cli.samples import make_sample_dvd


def _package(tmp_path: Path, drop: Path, name: str, seed: str, **kw: bool) -> Path:
    media = make_sample_dvd(tmp_path / f"dvd-{name}", seed=seed, ct_slices=2, sc_images=1)
    manifest = Manifest(created_at="2026-11-25T10:00:00Z", sender_ae="SENDER")
    return write_package(scan([media.root]).instances, drop / name, manifest=manifest, **kw).path


def test_intact_packages_are_imported_and_filed_done_tampered_ones_rejected_with_a_reason(
    tmp_path: Path,
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    good = _package(tmp_path, drop, "GOOD", "watch-good")
    zipped = _package(tmp_path, drop, "ZIPPED.zip", "watch-zip", as_zip=True)
    bad = _package(tmp_path, drop, "BAD", "watch-bad")
    victim = next(p for p in sorted(bad.rglob("IM*")))
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    (drop / ".LATER.partial-0001").mkdir()  # a package still being written
    expected = {dataset_digest(p)[1] for pkg in (good,) for p in pkg.rglob("IM*")} | {
        i.digest for i in scan([zipped], unpack_dir=tmp_path / "u").instances
    }
    store = InstanceStore(tmp_path / "store")
    filed: list[tuple[str, str]] = []

    with Journal(tmp_path / "journal.sqlite") as journal:
        result = process_drop_folder(
            drop, store=store, journal=journal, on_package=lambda n, w, _: filed.append((n, w))
        )
        again = process_drop_folder(drop, store=store, journal=journal)

    assert sorted(result.done) == ["GOOD", "ZIPPED.zip"]
    ((name, reason),) = result.rejected
    assert name == "BAD" and reason.startswith("tampered:")
    assert victim.relative_to(bad).as_posix() in reason
    assert (drop / "rejected" / "BAD").is_dir()
    assert "tampered" in (drop / "rejected" / "BAD.reason.txt").read_text()
    assert sorted(p.name for p in (drop / "done").iterdir()) == ["GOOD", "ZIPPED.zip"]
    assert (drop / ".LATER.partial-0001").is_dir()
    stored = {dataset_digest(p)[1] for p in (tmp_path / "store").rglob("*.dcm")}
    assert stored == expected  # nothing of the tampered package
    assert result.stored == 6
    assert sorted(filed) == [("BAD", "rejected"), ("GOOD", "done"), ("ZIPPED.zip", "done")]
    assert again.done == [] and again.rejected == []
