"""One conformance suite, run over every transport: what arrives is what was sent."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dvdexit_cli.config import DimsePeer
from dvdexit_cli.dicom.digest import dataset_digest
from dvdexit_cli.engine import SendSettings, send
from dvdexit_cli.exitcodes import ExitCode
from dvdexit_cli.journal import Journal
from dvdexit_cli.samples import make_sample_dvd
from dvdexit_cli.transport.base import Transport
from dvdexit_cli.transport.dicomweb import DicomwebTransport
from dvdexit_cli.transport.dimse import DimseTransport
from dvdexit_cli.transport.memory import MemoryPeer, MemoryTransport


@dataclass
class Target:
    """A transport, and a way to read back the digest of what the peer holds."""

    transport: Transport
    held: Callable[[], dict[str, str]]  # SOP Instance UID -> dataset digest


def _storescp(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    scp = request.getfixturevalue("storescp")(tmp_path / "scp")
    peer = DimsePeer(name="scp", host="127.0.0.1", port=scp.port, called_ae=scp.ae)

    def held() -> dict[str, str]:
        import pydicom

        return {
            str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): dataset_digest(p)[1]
            for p in scp.stored_files()
        }

    return Target(DimseTransport(peer), held)


def _orthanc_held(pacs: object, tmp_path: Path) -> Callable[[], dict[str, str]]:
    def held() -> dict[str, str]:
        found = {}
        for uid, orthanc_id in pacs.instance_uids().items():  # type: ignore[attr-defined]
            copy = tmp_path / "copy.dcm"
            copy.write_bytes(pacs.rest("GET", f"/instances/{orthanc_id}/file"))  # type: ignore[attr-defined]
            found[uid] = dataset_digest(copy)[1]
        return found

    return held


def _orthanc_dimse(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    pacs = request.getfixturevalue("orthanc")()
    peer = DimsePeer(name="pacs", host="127.0.0.1", port=pacs.dicom_port, called_ae=pacs.aet)
    return Target(DimseTransport(peer), _orthanc_held(pacs, tmp_path))


def _orthanc_dicomweb(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    pacs = request.getfixturevalue("orthanc")()
    return Target(DicomwebTransport(pacs.dicomweb_url), _orthanc_held(pacs, tmp_path))


def _memory(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    peer = MemoryPeer()
    return Target(
        MemoryTransport(peer),
        lambda: {uid: peer.digest(uid) or "" for uid in peer.stored},
    )


TARGETS = {
    "memory": _memory,
    "dimse-storescp": _storescp,
    "dimse-orthanc": _orthanc_dimse,
    "dicomweb-orthanc": _orthanc_dicomweb,
}


@pytest.fixture(params=sorted(TARGETS))
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    yield TARGETS[request.param](request, tmp_path)


def test_every_transport_delivers_a_dvd_with_the_senders_digests(
    tmp_path: Path, target: Target
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=4, sc_images=2)
    with Journal(tmp_path / "journal.sqlite") as journal:
        result = send(
            SendSettings(inputs=(media.root,), peer_name="p", peer_address="p"),
            journal=journal,
            transport=target.transport,
        )
        sent = {
            i.sop_instance_uid: i.digest
            for i in journal.items(result.transfer_id)
            if i.state == "sent"
        }

    assert result.exit_code == ExitCode.OK
    assert set(sent) == set(media.path_by_sop_uid)
    assert target.held() == sent
