"""A drop folder as a peer: each send becomes one verifiable package, or nothing."""

from __future__ import annotations

from pathlib import Path

from dvdexit_cli.config import FolderPeer
from dvdexit_cli.dicom.scan import scan
from dvdexit_cli.engine import SendSettings, send
from dvdexit_cli.exitcodes import ExitCode
from dvdexit_cli.journal import Journal
from dvdexit_cli.package import verify_package
from dvdexit_cli.samples import make_sample_dvd
from dvdexit_cli.transport.folder import FolderTransport


def test_a_send_to_a_folder_writes_one_intact_package(tmp_path: Path) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=3, sc_images=1)
    drop = tmp_path / "drop"
    drop.mkdir()
    transport = FolderTransport(FolderPeer(name="drop", path=str(drop)), note="for dr. demo")

    with Journal(tmp_path / "journal.sqlite") as journal:
        result = send(
            SendSettings(inputs=(media.root,), peer_name="drop", peer_address=str(drop)),
            journal=journal,
            transport=transport,
        )

    assert result.exit_code == ExitCode.OK
    assert result.sent == media.instance_count
    (package,) = list(drop.iterdir())
    check = verify_package(package)
    assert check.verdict == "intact"
    assert check.manifest is not None and check.manifest.note == "for dr. demo"
    packaged = {i.sop_instance_uid for i in scan([package]).instances}
    assert packaged == set(media.path_by_sop_uid)


def test_a_missing_folder_is_unreachable_and_nothing_counts_as_sent(tmp_path: Path) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=2, sc_images=1)
    transport = FolderTransport(FolderPeer(name="drop", path=str(tmp_path / "not-mounted")))

    with Journal(tmp_path / "journal.sqlite") as journal:
        result = send(
            SendSettings(inputs=(media.root,), peer_name="drop", peer_address="x", retries=0),
            journal=journal,
            transport=transport,
        )

    assert result.exit_code == ExitCode.PEER_UNREACHABLE
    assert result.sent == 0
    assert not (tmp_path / "not-mounted").exists()
