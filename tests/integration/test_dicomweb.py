"""STOW-RS: every instance's fate comes from the response body, never from the HTTP code alone."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from dvdexit_cli.dicom.digest import dataset_digest
from dvdexit_cli.dicom.scan import Instance, scan
from dvdexit_cli.errors import PeerUnreachableError
from dvdexit_cli.samples import make_sample_dvd, write_study
from dvdexit_cli.transport.dicomweb import DicomwebTransport


def test_stow_to_orthanc_stores_every_instance_with_its_bytes(
    tmp_path: Path, orthanc: object
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=4, sc_images=2)
    instances = scan([media.root]).instances
    pacs = orthanc()  # type: ignore[operator]
    transport = DicomwebTransport(pacs.dicomweb_url, name="orthanc")

    result = transport.store_batch(instances)
    transport.close()

    assert {uid: o.state for uid, o in result.outcomes.items()} == {
        i.sop_instance_uid: "sent" for i in instances
    }
    held = pacs.instance_uids()
    assert set(held) == {i.sop_instance_uid for i in instances}
    for inst in instances:
        stored = tmp_path / "back.dcm"
        stored.write_bytes(pacs.rest("GET", f"/instances/{held[inst.sop_instance_uid]}/file"))
        assert dataset_digest(stored)[1] == inst.digest


class _Scripted(BaseHTTPRequestHandler):
    """A STOW-RS endpoint that answers what the test scripted, after reading the body."""

    script: ClassVar[list[tuple[int, dict[str, str], object]]] = []
    bodies: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        status, headers, document = self.script.pop(0)
        if document == "hang-up":
            self.rfile.read(length // 2)
            self.connection.close()
            return
        self.bodies.append(self.rfile.read(length))
        data = json.dumps(document).encode() if document is not None else b""
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def scripted() -> Iterator[tuple[str, type[_Scripted]]]:
    handler = type("Handler", (_Scripted,), {"script": [], "bodies": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _sop(instance: Instance, tag: str, code: int | None = None) -> dict[str, object]:
    item: dict[str, object] = {
        "00081150": {"vr": "UI", "Value": [instance.sop_class_uid]},
        "00081155": {"vr": "UI", "Value": [instance.sop_instance_uid]},
    }
    if code is not None:
        item[tag] = {"vr": "US", "Value": [code]}
    return item


@pytest.fixture
def three(tmp_path: Path) -> list[Instance]:
    write_study(tmp_path / "study", n_instances=3, seed="stow")
    return scan([tmp_path / "study"]).instances


def test_202_with_a_failed_instance_fails_exactly_that_one(
    scripted: tuple[str, type[_Scripted]], three: list[Instance]
) -> None:
    url, handler = scripted
    handler.script.append(
        (
            202,
            {},
            {
                "00081199": {
                    "vr": "SQ",
                    "Value": [_sop(three[0], ""), _sop(three[2], "00081196", 0xB000)],
                },
                "00081198": {"vr": "SQ", "Value": [_sop(three[1], "00081197", 0xC000)]},
            },
        )
    )

    result = DicomwebTransport(url).store_batch(three)

    outcomes = result.outcomes
    assert outcomes[three[0].sop_instance_uid].state == "sent"
    assert outcomes[three[2].sop_instance_uid].state == "sent"
    assert outcomes[three[2].sop_instance_uid].status == 0xB000
    failed = outcomes[three[1].sop_instance_uid]
    assert (failed.state, failed.status, failed.retryable) == ("failed", 0xC000, False)
    # The multipart body carried each file whole.
    body = handler.bodies[0]
    for inst in three:
        assert inst.path.read_bytes() in body


def test_200_that_forgets_an_instance_leaves_it_unknown_and_retryable(
    scripted: tuple[str, type[_Scripted]], three: list[Instance]
) -> None:
    url, handler = scripted
    handler.script.append((200, {}, {"00081199": {"vr": "SQ", "Value": [_sop(three[0], "")]}}))

    outcomes = DicomwebTransport(url).store_batch(three).outcomes

    assert outcomes[three[0].sop_instance_uid].state == "sent"
    for inst in three[1:]:
        assert outcomes[inst.sop_instance_uid].state == "failed"
        assert outcomes[inst.sop_instance_uid].retryable
        assert "unknown" in (outcomes[inst.sop_instance_uid].reason or "")


def test_503_with_retry_after_is_retryable_and_says_when(
    scripted: tuple[str, type[_Scripted]], three: list[Instance]
) -> None:
    url, handler = scripted
    handler.script.append((503, {"Retry-After": "7"}, None))

    result = DicomwebTransport(url).store_batch(three)

    assert result.retry_after == 7.0
    assert all(o.state == "failed" and o.retryable for o in result.outcomes.values())


def test_409_without_details_is_a_failure_not_a_success(
    scripted: tuple[str, type[_Scripted]], three: list[Instance]
) -> None:
    url, handler = scripted
    handler.script.append((409, {}, None))

    result = DicomwebTransport(url).store_batch(three)

    # 409 is a hint only: instances its body does not name are unknown, so retried.
    assert all(o.state == "failed" and o.retryable for o in result.outcomes.values())
    assert all("unknown" in (o.reason or "") for o in result.outcomes.values())


def test_400_without_details_is_not_retried(
    scripted: tuple[str, type[_Scripted]], three: list[Instance]
) -> None:
    url, handler = scripted
    handler.script.append((400, {}, None))

    result = DicomwebTransport(url).store_batch(three)

    assert all(o.state == "failed" and not o.retryable for o in result.outcomes.values())


def test_a_server_that_hangs_up_mid_body_is_retried_not_believed(
    scripted: tuple[str, type[_Scripted]], three: list[Instance]
) -> None:
    url, handler = scripted
    handler.script.append((0, {}, "hang-up"))

    result = DicomwebTransport(url).store_batch(three)

    assert all(o.state == "failed" and o.retryable for o in result.outcomes.values())


def test_nobody_listening_is_unreachable(three: list[Instance]) -> None:
    from peers import free_port

    with pytest.raises(PeerUnreachableError):
        DicomwebTransport(f"http://127.0.0.1:{free_port()}/dicom-web").store_batch(three)


def test_qido_lists_and_wado_returns_every_instance_with_its_bytes(
    tmp_path: Path, orthanc: object
) -> None:
    from dvdexit_cli.transport.dicomweb import retrieve_instance, study_instances

    media = make_sample_dvd(tmp_path / "dvd", ct_slices=3, sc_images=1)
    instances = scan([media.root]).instances
    pacs = orthanc()  # type: ignore[operator]
    transport = DicomwebTransport(pacs.dicomweb_url, name="orthanc")
    transport.store_batch(instances)

    for study in {i.study_uid for i in instances}:
        listed = study_instances(transport, study)
        expected = {
            i.sop_instance_uid: (i.sop_class_uid, i.series_uid)
            for i in instances
            if i.study_uid == study
        }
        assert listed == expected
        for sop, (_sop_class, series) in listed.items():
            back = tmp_path / f"{sop}.dcm"
            assert retrieve_instance(transport, study, series, sop, back)
            digest = next(i.digest for i in instances if i.sop_instance_uid == sop)
            assert dataset_digest(back)[1] == digest
    assert not retrieve_instance(transport, "1.2.3.999", "1.2.3.998", "1.2.3.997", tmp_path / "x")
    transport.close()
