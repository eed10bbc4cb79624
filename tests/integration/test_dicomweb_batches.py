"""STOW-RS batches through the engine and the CLI: every instance's fate in the journal.

A small STOW-RS server of the test's own (it reads each multipart body, answers per
instance as scripted) stands in for a misbehaving archive; Orthanc for a real one.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pydicom
import pytest
from peers import run_dvdexit

from dvdexit_cli.config import resolve_paths
from dvdexit_cli.dicom.scan import scan
from dvdexit_cli.engine import SendSettings, batches, send
from dvdexit_cli.journal import Journal
from dvdexit_cli.samples import make_sample_dvd, write_study
from dvdexit_cli.transport.dicomweb import DicomwebTransport
from dvdexit_cli.transport.multipart import boundary_of, split_parts


@dataclass
class Archive:
    """What the scripted STOW-RS server does and what it saw."""

    url: str
    reject: set[str] = field(default_factory=set)
    """SOP Instance UIDs answered in the Failed SOP Sequence (C000)."""
    forget: set[str] = field(default_factory=set)
    """SOP Instance UIDs left out of the answer altogether."""
    busy: set[str] = field(default_factory=set)
    """SOP Instance UIDs answered in the Failed SOP Sequence with A700 (out of resources)."""
    failure_status: int = 202
    """The HTTP status of an answer that names a failed instance (202, or 409)."""
    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    """Answers (status, headers) for the next requests, before the per-instance policy;
    status 0 hangs up mid-body."""
    requests: list[list[str]] = field(default_factory=list)
    """The SOP Instance UIDs of every request that arrived whole."""
    sizes: list[int] = field(default_factory=list)
    status: int = 200


def _uids(body: bytes, content_type: str) -> list[str]:
    parts: list[io.BytesIO] = []

    class _Part(io.BytesIO):
        def close(self) -> None:  # keep the bytes readable after split_parts closes it
            return None

    def open_part(_index: int) -> Any:
        parts.append(_Part())
        return parts[-1]

    split_parts([body], boundary_of(content_type), open_part)
    return [
        str(pydicom.dcmread(io.BytesIO(p.getvalue()), stop_before_pixels=True).SOPInstanceUID)
        for p in parts
    ]


def _item(uid: str, reason: int | None = None) -> dict[str, object]:
    item: dict[str, object] = {"00081155": {"vr": "UI", "Value": [uid]}}
    if reason is not None:
        item["00081197"] = {"vr": "US", "Value": [reason]}
    return item


@pytest.fixture
def archive() -> Iterator[Archive]:
    state = Archive(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            if state.script:
                status, headers = state.script.pop(0)
                if status == 0:
                    self.rfile.read(length // 2)
                    self.connection.close()
                    return
                self.rfile.read(length)
                self._answer(status, headers, b"")
                return
            body = self.rfile.read(length)
            uids = _uids(body, self.headers["Content-Type"])
            state.requests.append(uids)
            state.sizes.append(length)
            sent = [_item(u) for u in uids if u not in state.reject | state.forget | state.busy]
            failed = [_item(u, 0xC000) for u in uids if u in state.reject]
            failed += [_item(u, 0xA700) for u in uids if u in state.busy]
            document: dict[str, object] = {"00081199": {"vr": "SQ", "Value": sent}}
            if failed:
                document["00081198"] = {"vr": "SQ", "Value": failed}
            status = state.failure_status if failed else state.status
            self._answer(status, {}, json.dumps(document).encode())

        def _answer(self, status: int, headers: dict[str, str], data: bytes) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _send(
    tmp_path: Path, archive: Archive, study: Path, **options: Any
) -> tuple[Any, Journal, list[float]]:
    delays: list[float] = []
    journal = Journal(tmp_path / "journal.sqlite")
    settings = SendSettings(
        inputs=(study,), peer_name="web", peer_address=archive.url, retry_delay=0.01, **options
    )
    result = send(
        settings,
        journal=journal,
        transport=DicomwebTransport(archive.url, name="web"),
        sleep=delays.append,
    )
    return result, journal, delays


def test_batches_respect_the_count_and_the_byte_limits(tmp_path: Path, archive: Archive) -> None:
    write_study(tmp_path / "study", n_instances=10, seed="batches")
    instances = scan([tmp_path / "study"]).instances
    size_of = {i.sop_instance_uid: i.size for i in instances}
    limit = 3 * max(size_of.values())

    by_count, _, _ = _send(tmp_path, archive, tmp_path / "study", batch_size=4)
    counts = [len(r) for r in archive.requests]
    archive.requests.clear()
    by_bytes, _, _ = _send(tmp_path, archive, tmp_path / "study", batch_size=50, batch_bytes=limit)

    assert (by_count.sent, by_bytes.sent) == (10, 10)
    assert counts == [4, 4, 2]
    assert sum(len(r) for r in archive.requests) == 10
    assert len(archive.requests) > 1
    assert all(sum(size_of[u] for u in r) <= limit for r in archive.requests)
    # A single instance larger than the byte limit still goes, alone.
    assert [len(b) for b in batches([(n, i) for n, i in enumerate(instances)], 50, 1)] == [1] * 10


def test_a_failed_sop_sequence_fails_exactly_those_instances_and_only_they_are_retried(
    tmp_path: Path, archive: Archive
) -> None:
    write_study(tmp_path / "study", n_instances=6, seed="partial")
    instances = scan([tmp_path / "study"]).instances
    rejected = {instances[1].sop_instance_uid, instances[4].sop_instance_uid}
    archive.reject = set(rejected)

    result, journal, delays = _send(tmp_path, archive, tmp_path / "study", batch_size=3)

    assert (result.sent, result.failed, int(result.exit_code)) == (4, 2, 6)
    items = journal.items(result.transfer_id)
    assert {i.sop_instance_uid for i in items if i.state == "failed"} == rejected
    assert all(i.status == 0xC000 and not i.retryable for i in items if i.state == "failed")
    # C000 is final: one request per batch, no retry round.
    assert len(archive.requests) == 2
    assert delays == []


def test_retry_after_is_honoured_and_a_hang_up_is_retried_not_believed(
    tmp_path: Path, archive: Archive
) -> None:
    write_study(tmp_path / "study", n_instances=4, seed="busy")
    archive.script = [(503, {"Retry-After": "30"}), (0, {}), (429, {"Retry-After": "2"})]

    result, journal, delays = _send(tmp_path, archive, tmp_path / "study", batch_size=2, retries=3)

    assert (result.sent, result.failed) == (4, 0)
    # Round 1: batch 1 -> 503 (Retry-After 30), batch 2 -> hang-up; round 2: 429
    # (Retry-After 2) for the first batch, the second goes through; round 3: the rest.
    assert delays == [30.0, 2.0]
    assert sorted(len(r) for r in archive.requests) == [2, 2]
    assert all(i.state == "sent" for i in journal.items(result.transfer_id))


def test_a_4xx_other_than_408_409_429_is_not_retried(tmp_path: Path, archive: Archive) -> None:
    write_study(tmp_path / "study", n_instances=2, seed="refused")
    archive.script = [(413, {})]

    result, journal, delays = _send(tmp_path, archive, tmp_path / "study")

    assert (result.sent, result.failed, int(result.exit_code)) == (0, 2, 6)
    assert delays == []
    assert archive.requests == []
    assert all(not i.retryable for i in journal.items(result.transfer_id))


def test_cli_partial_failure_exits_6_and_retry_failed_resends_only_the_failed(
    tmp_path: Path, dvdexit_home: Path, archive: Archive
) -> None:
    write_study(tmp_path / "study", n_instances=5, seed="cli-partial")
    instances = scan([tmp_path / "study"]).instances
    forgotten = instances[2].sop_instance_uid
    archive.forget = {forgotten}  # never mentioned: unknown, so retryable
    run_dvdexit("peers", "add", "web", "--dicomweb", archive.url, home=dvdexit_home)

    first = run_dvdexit(
        "send", tmp_path / "study", "--to", "web", "--retries", "0", "--batch-size", "2",
        "--json", home=dvdexit_home,
    )  # fmt: skip
    archive.forget.clear()  # the archive is fixed
    archive.requests.clear()
    again = run_dvdexit("send", "--retry-failed", "--json", home=dvdexit_home)

    assert first.returncode == 6, first.stderr
    assert (json.loads(first.stdout)["sent"], json.loads(first.stdout)["failed"]) == (4, 1)
    with Journal(resolve_paths({"DVDEXIT_HOME": str(dvdexit_home)}).journal_file) as journal:
        transfer = json.loads(first.stdout)["transfer_id"]
        states = {i.sop_instance_uid: i.state for i in journal.items(transfer)}
    assert again.returncode == 0, again.stderr
    assert archive.requests == [[forgotten]]
    assert states == {i.sop_instance_uid: "sent" for i in instances}


@pytest.mark.parametrize("http_status", [202, 409])
def test_cli_failed_sop_sequence_with_202_or_409_fails_exactly_those_and_retry_resends_only_them(
    tmp_path: Path, dvdexit_home: Path, archive: Archive, http_status: int
) -> None:
    write_study(tmp_path / "study", n_instances=5, seed=f"cli-busy-{http_status}")
    instances = scan([tmp_path / "study"]).instances
    busy = {instances[0].sop_instance_uid, instances[3].sop_instance_uid}
    archive.busy, archive.failure_status = set(busy), http_status
    run_dvdexit("peers", "add", "web", "--dicomweb", archive.url, home=dvdexit_home)

    first = run_dvdexit(
        "send", tmp_path / "study", "--to", "web", "--retries", "0", "--batch-size", "5",
        "--json", home=dvdexit_home,
    )  # fmt: skip
    archive.busy.clear()  # the archive is fixed
    archive.requests.clear()
    again = run_dvdexit("send", "--retry-failed", "--json", home=dvdexit_home)
    nothing = run_dvdexit("send", "--retry-failed", "--json", home=dvdexit_home)

    assert first.returncode == 6, first.stderr
    report = json.loads(first.stdout)
    assert {f["sop_instance_uid"] for f in report["failures"]} == busy
    assert {f["status"] for f in report["failures"]} == {"A700"}
    assert report["sent"] == len(instances) - 2
    assert again.returncode == 0, again.stderr
    assert [sorted(r) for r in archive.requests] == [sorted(busy)]
    assert json.loads(again.stdout)["sent"] == 2
    assert nothing.returncode == 0 and json.loads(nothing.stdout)["outcome"] == "nothing to do"


def test_cli_rejects_a_batch_bytes_that_is_not_a_size(
    tmp_path: Path, dvdexit_home: Path, archive: Archive
) -> None:
    write_study(tmp_path / "study", n_instances=1, seed="bad-size")
    run_dvdexit("peers", "add", "web", "--dicomweb", archive.url, home=dvdexit_home)

    done = run_dvdexit(
        "send", tmp_path / "study", "--to", "web", "--batch-bytes", "lots", home=dvdexit_home
    )

    assert done.returncode == 2
    assert "--batch-bytes" in done.stderr
    assert archive.requests == []


def test_batched_send_to_orthanc_stores_every_instance(
    tmp_path: Path, dvdexit_home: Path, orthanc: object
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=5, sc_images=2)
    pacs = orthanc()  # type: ignore[operator]
    run_dvdexit("peers", "add", "web", "--dicomweb", pacs.dicomweb_url, home=dvdexit_home)

    done = run_dvdexit(
        "send", media.root, "--to", "web", "--batch-size", "3", "--batch-bytes", "1M",
        "--json", home=dvdexit_home,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["sent"] == media.instance_count
    assert set(pacs.instance_uids()) == set(media.path_by_sop_uid)
