"""A peer that accepts images only uncompressed (implicit VR little endian).

Many older PACS take every SOP class but only in implicit VR little endian. A DVD of
lossless JPEG, JPEG-LS, JPEG 2000 and RLE images must still arrive there, decompressed,
with the same pixels, and the journal must say it was re-encoded; a lossy JPEG must not
be silently re-encoded as if it were the original.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from peers import LOOPBACK, free_port, run_dvdexit
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, evt

from dvdexit_cli.journal import Journal

LOSSLESS = {
    "MR_small_RLE.dcm": "RLE Lossless",
    "SC_rgb_jpeg_gdcm.dcm": "JPEG Lossless",
    "examples_jpeg2k.dcm": "JPEG 2000",
}
LOSSY = "SC_rgb_jpeg_dcmtk.dcm"  # JPEG baseline
SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.4",  # MR
    "1.2.840.10008.5.1.4.1.1.7",  # secondary capture
    "1.2.840.10008.5.1.4.1.1.6.1",  # US
)


@pytest.fixture
def implicit_only_scp() -> Iterator[Callable[[], tuple[int, dict[str, Any]]]]:
    """A pynetdicom SCP that accepts these SOP classes in implicit VR LE only."""
    servers: list[Any] = []

    def start() -> tuple[int, dict[str, Any]]:
        received: dict[str, Any] = {}
        lock = threading.Lock()

        def on_store(event: Any) -> int:
            ds = event.dataset
            ds.file_meta = event.file_meta
            with lock:
                received[str(ds.SOPInstanceUID)] = ds
            return 0x0000

        ae = AE(ae_title="IMPLICIT")
        for sop_class in SOP_CLASSES:
            ae.add_supported_context(sop_class, [ImplicitVRLittleEndian])
        port = free_port()
        servers.append(
            ae.start_server(
                (LOOPBACK, port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
            )
        )
        return port, received

    yield start
    for server in servers:
        server.shutdown()


def test_lossless_files_arrive_decompressed_with_the_same_pixels_and_lossy_ones_are_refused(
    implicit_only_scp, dvdexit_home: Path, tmp_path: Path
):
    folder = tmp_path / "dvd"
    folder.mkdir()
    for name in [*LOSSLESS, LOSSY]:
        shutil.copy(get_testdata_file(name), folder / name)  # type: ignore[arg-type]
    port, received = implicit_only_scp()
    added = run_dvdexit(
        "peers", "add", "old-pacs", "--dimse", f"{LOOPBACK}:{port}", "--ae", "IMPLICIT",
        home=dvdexit_home,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr

    result = run_dvdexit("send", folder, "--to", "old-pacs", "--json", home=dvdexit_home)

    document = json.loads(result.stdout)
    assert result.returncode == 6, result.stderr
    assert (document["sent"], document["failed"]) == (3, 1)
    (failure,) = document["failures"]
    assert Path(failure["path"]).name == LOSSY
    assert "lossy" in failure["reason"] and "--allow-lossy-transcode" in failure["reason"]
    assert not failure["retryable"]
    warned = {Path(w["path"]).name: w["reason"] for w in document["warnings"]}
    assert set(warned) == set(LOSSLESS)
    assert all("decompressed from" in reason for reason in warned.values())
    for name in LOSSLESS:
        original = dcmread(folder / name)
        assert str(original.SOPInstanceUID) in received, name  # under its own UID
        arrived = received[str(original.SOPInstanceUID)]
        assert arrived.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
        assert np.array_equal(arrived.pixel_array, original.pixel_array), name
    with Journal(dvdexit_home / "journal.sqlite") as journal:
        items = {Path(i.path).name: i for i in journal.items(document["transfer_id"])}
    assert all("decompressed" in (items[name].reason or "") for name in LOSSLESS)

    allowed = run_dvdexit(
        "send", folder / LOSSY, "--to", "old-pacs", "--allow-lossy-transcode", "--json",
        home=dvdexit_home,
    )  # fmt: skip

    assert allowed.returncode == 0, allowed.stdout
    (warning,) = json.loads(allowed.stdout)["warnings"]
    assert "lossy" in warning["reason"]
    assert str(dcmread(folder / LOSSY).SOPInstanceUID) in received
