"""`dvdexit receive --from PEER` when the peer misbehaves: C-GET refused, peer lost mid-pull.

Orthanc plays the peer that refuses C-GET to our AE title (``AllowGet: false``) but
allows C-FIND and C-MOVE. A pynetdicom Query/Retrieve SCP plays the peer that is lost
mid-pull: it lists the whole study, sends half of it over C-GET, then aborts the
association, as a PACS that crashes would. What arrived must be stored and journaled,
every other listed instance named missing, and the exit code 7, never 0.
"""

from __future__ import annotations

import http.server
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from peers import LOOPBACK, free_port, run_dvdexit
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from dvdexit_cli.config import resolve_paths
from dvdexit_cli.dicom.scan import scan
from dvdexit_cli.samples import make_sample_dvd
from dvdexit_cli.transport.dicomweb import DicomwebTransport


@dataclass
class HalfGetPeer:
    """Lists every file by C-FIND; C-GET (or C-MOVE to ``move_to``) sends the first
    ``send`` of them, then aborts the association, or, with ``end_with``, ends the
    retrieval with that final status (pynetdicom counts the unsent ones as failed)."""

    port: int
    files: list[Path]
    send: int
    move_to: int | None = None
    end_with: int | None = None
    unlisted: int = 0
    """Sub-operations announced beyond the files (instances it holds but never lists)."""
    send_in_all: bool = False
    """``send`` counts over every C-GET, not per C-GET."""
    sent: list[str] = field(default_factory=list)

    def find(self, event: Any) -> Iterator[tuple[int, Any]]:
        level = str(event.identifier.QueryRetrieveLevel)
        seen: set[str] = set()
        for path in self.files:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            if ds.StudyInstanceUID != event.identifier.StudyInstanceUID:
                continue
            answer = pydicom.Dataset()
            answer.QueryRetrieveLevel = level
            answer.StudyInstanceUID = ds.StudyInstanceUID
            answer.SeriesInstanceUID = ds.SeriesInstanceUID
            if level == "IMAGE":
                if ds.SeriesInstanceUID != event.identifier.SeriesInstanceUID:
                    continue
                answer.SOPInstanceUID = ds.SOPInstanceUID
                answer.SOPClassUID = ds.SOPClassUID
            elif ds.SeriesInstanceUID in seen:
                continue
            seen.add(str(ds.SeriesInstanceUID))
            yield 0xFF00, answer

    def get(self, event: Any) -> Iterator[Any]:
        wanted = str(event.identifier.StudyInstanceUID)
        files = [p for p in self.files if _study_of(p) == wanted]
        yield len(files) + self.unlisted
        budget = self.send - len(self.sent) if self.send_in_all else self.send
        for path in files[: max(0, budget)]:
            ds = pydicom.dcmread(path)
            self.sent.append(str(ds.SOPInstanceUID))
            yield 0xFF00, ds
        if self.end_with is not None:
            yield self.end_with, None  # a final status mid-way: the rest is not sent
            return
        event.assoc.abort()  # the peer is gone mid-C-GET

    def move(self, event: Any) -> Iterator[Any]:
        yield LOOPBACK, self.move_to  # wherever the move destination is asked to be
        yield len(self.files)
        for path in self.files[: self.send]:
            ds = pydicom.dcmread(path)
            self.sent.append(str(ds.SOPInstanceUID))
            yield 0xFF00, ds
        if self.end_with is not None:
            yield self.end_with, None
            return
        event.assoc.abort()  # the peer is gone mid-C-MOVE


@pytest.fixture
def half_get_peer() -> Iterator[Callable[..., HalfGetPeer]]:
    servers: list[Any] = []

    def start(
        files: list[Path],
        send: int,
        *,
        get: bool = True,
        move_to: int | None = None,
        end_with: int | None = None,
        unlisted: int = 0,
        send_in_all: bool = False,
    ) -> HalfGetPeer:
        ae = AE(ae_title="HALFPACS")
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        if get:
            ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, scu_role=True, scp_role=True)
        for sop_class in sorted({_class_of(p) for p in files}):  # for the C-MOVE's stores
            ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
        error: Exception | None = None
        for _ in range(3):
            peer = HalfGetPeer(free_port(), files, send, move_to, end_with, unlisted, send_in_all)
            try:
                server = ae.start_server(
                    (LOOPBACK, peer.port),
                    block=False,
                    evt_handlers=[
                        (evt.EVT_C_FIND, peer.find),
                        (evt.EVT_C_GET, peer.get),
                        (evt.EVT_C_MOVE, peer.move),
                    ],
                )
            except OSError as exc:  # lost the race for the port
                error = exc
                continue
            servers.append(server)
            return peer
        raise RuntimeError("the Query/Retrieve SCP could not bind a port") from error

    yield start
    for server in servers:
        server.shutdown()


def _received(home: Path) -> dict[str, str]:
    journal = resolve_paths({"DVDEXIT_HOME": str(home)}).journal_file
    with sqlite3.connect(journal) as db:
        return dict(db.execute("SELECT sop_instance_uid, outcome FROM received"))


def test_a_peer_lost_mid_c_get_keeps_what_arrived_names_the_rest_and_exits_7(
    tmp_path: Path, dvdexit_home: Path, half_get_peer: Any
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=5, sc_images=1)
    study = media.study_uids[0]
    files = sorted(p for p in media.path_by_sop_uid.values() if _study_of(p) == study)
    peer = half_get_peer(files, 2)
    added = run_dvdexit(
        "peers", "add", "pacs", "--dimse", f"{LOOPBACK}:{peer.port}", "--ae", "HALFPACS",
        home=dvdexit_home,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    store = tmp_path / "store"
    args = ("receive", "--from", "pacs", "--study", study, "--study", media.study_uids[1])

    done = run_dvdexit(*args, "--store", store, "--json", home=dvdexit_home)
    human = run_dvdexit(*args, "--store", tmp_path / "store2", home=dvdexit_home)

    assert done.returncode == 7, done.stderr
    report = json.loads(done.stdout)
    assert report["outcome"] == "incomplete" and report["interrupted"]
    assert report["not_attempted"] == [media.study_uids[1]]
    assert [s["attempted"] for s in report["studies"]] == [True, False]
    counts = report["studies"][0]
    assert (counts["listed"], counts["stored"], counts["missing"]) == (
        len(files),
        2,
        len(files) - 2,
    )
    stored = {p.stem: p for p in (store / study).glob("*/*.dcm")}
    assert set(stored) == set(peer.sent[:2]) and len(stored) == 2
    # pydicom re-encodes what the scripted peer sends: compare elements, not bytes.
    for uid, path in stored.items():
        assert pydicom.dcmread(path) == pydicom.dcmread(media.path_by_sop_uid[uid]), uid
    missing = {p["sop_instance_uid"] for p in report["problems"] if p["outcome"] == "missing"}
    assert missing == {str(_sop_of(p)) for p in files} - set(stored)
    assert all("lost" in p["reason"] for p in report["problems"]), report["problems"]
    assert {uid: o for uid, o in _received(dvdexit_home).items() if uid in stored} == dict.fromkeys(
        stored, "stored"
    )
    assert not list(store.glob(".pull-*"))
    assert human.returncode == 7
    assert "INTERRUPTED" in human.stderr and "not attempted" in human.stderr
    assert "lists no instance" not in human.stdout  # not asked is not "none there"


def test_a_peer_lost_mid_c_move_leaves_what_reached_our_receiver_and_exits_7(
    tmp_path: Path, dvdexit_home: Path, half_get_peer: Any, dvdexit_receiver: Any
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=4, sc_images=1)
    study = media.study_uids[0]
    files = sorted(p for p in media.path_by_sop_uid.values() if _study_of(p) == study)
    store = tmp_path / "store"
    receiver = dvdexit_receiver(store, ae="DVDEXIT")
    peer = half_get_peer(files, 2, move_to=receiver.port)
    run_dvdexit(
        "peers", "add", "pacs", "--dimse", f"{LOOPBACK}:{peer.port}", "--ae", "HALFPACS",
        home=dvdexit_home,
    )  # fmt: skip

    done = run_dvdexit(
        "receive", "--from", "pacs", "--study", study, "--move-dest", "DVDEXIT",
        "--store", store, "--json", home=dvdexit_home,
    )  # fmt: skip

    assert done.returncode == 7, done.stderr
    report = json.loads(done.stdout)
    assert report["method"] == "c-move" and report["interrupted"]
    stored = {p.stem for p in (store / study).glob("*/*.dcm")}
    assert stored == set(peer.sent) and len(stored) == 2
    counts = report["studies"][0]
    assert (counts["listed"], counts["stored"], counts["missing"]) == (
        len(files),
        2,
        len(files) - 2,
    )
    missing = {p["sop_instance_uid"] for p in report["problems"]}
    assert missing == {_sop_of(p) for p in files} - stored
    assert all("lost" in p["reason"] for p in report["problems"])


def test_a_peer_without_c_get_is_named_so_with_the_move_dest_hint_and_nothing_stored(
    tmp_path: Path, dvdexit_home: Path, half_get_peer: Any
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=2, sc_images=1)
    study = media.study_uids[0]
    files = sorted(p for p in media.path_by_sop_uid.values() if _study_of(p) == study)
    peer = half_get_peer(files, len(files), get=False)
    run_dvdexit(
        "peers", "add", "pacs", "--dimse", f"{LOOPBACK}:{peer.port}", "--ae", "HALFPACS",
        home=dvdexit_home,
    )  # fmt: skip
    store = tmp_path / "store"

    done = run_dvdexit(
        "receive", "--from", "pacs", "--study", study, "--store", store, "--json",
        home=dvdexit_home,
    )  # fmt: skip

    assert done.returncode == 5, done.stderr
    error = json.loads(done.stdout)["error"]
    assert "does not support C-GET" in error["message"]
    assert "--move-dest" in error["hint"]
    assert not list(store.rglob("*.dcm"))
    assert peer.sent == []


def test_a_peer_that_refuses_c_get_gets_a_hint_to_move_dest_and_c_move_then_works(
    tmp_path: Path, dvdexit_home: Path, orthanc: Any, dvdexit_receiver: Any
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=2, sc_images=1)
    store = tmp_path / "store"
    receiver = dvdexit_receiver(store, ae="DVDEXIT")
    us = {"AET": "DVDEXIT", "Host": LOOPBACK, "Port": receiver.port, "AllowGet": False}
    pacs = orthanc(extra_config={"DicomModalities": {"dvdexit": us}})
    uploader = DicomwebTransport(pacs.dicomweb_url)
    assert all(
        o.state == "sent"
        for o in uploader.store_batch(scan([media.root]).instances).outcomes.values()
    )
    uploader.close()
    added = run_dvdexit(
        "peers", "add", "pacs", "--dimse", f"{LOOPBACK}:{pacs.dicom_port}", "--ae", pacs.aet,
        home=dvdexit_home,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    study = media.study_uids[0]

    refused = run_dvdexit(
        "receive", "--from", "pacs", "--study", study, "--store", store, home=dvdexit_home
    )
    after_refusal = list(store.rglob("*.dcm"))
    moved = run_dvdexit(
        "receive", "--from", "pacs", "--study", study, "--move-dest", "DVDEXIT",
        "--store", store, "--json", home=dvdexit_home,
    )  # fmt: skip

    assert refused.returncode == 5, refused.stderr
    assert "C-GET" in refused.stderr and "--move-dest" in refused.stderr
    assert after_refusal == []
    assert moved.returncode == 0, moved.stderr
    report = json.loads(moved.stdout)
    assert report["outcome"] == "complete" and report["studies"][0]["stored"] > 0


_MULTIPART = 'multipart/related; type="application/dicom"; boundary=b'


class _LostWadoServer(http.server.ThreadingHTTPServer):
    """QIDO-RS lists every file; WADO-RS serves ``serve`` of them, then the server dies."""

    daemon_threads = True

    def __init__(self, files: list[Path], serve: int) -> None:
        self.files = {_sop_of(p): p for p in files}
        self.serve = serve
        self.served: list[str] = []
        super().__init__((LOOPBACK, 0), _LostWadoHandler)


class _LostWadoHandler(http.server.BaseHTTPRequestHandler):
    server: _LostWadoServer

    def log_message(self, *args: object) -> None:
        return None

    def do_GET(self) -> None:
        files = self.server.files
        if self.path.split("?")[0].endswith("/instances"):  # QIDO-RS
            listed = []
            for sop, path in files.items():
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                listed.append(
                    {
                        "00080016": {"vr": "UI", "Value": [str(ds.SOPClassUID)]},
                        "00080018": {"vr": "UI", "Value": [sop]},
                        "0020000E": {"vr": "UI", "Value": [str(ds.SeriesInstanceUID)]},
                    }
                )
            body = json.dumps(listed).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        sop = self.path.split("?")[0].rsplit("/", 1)[-1]
        if len(self.server.served) >= self.server.serve:
            # The peer dies: this answer is cut short, and nobody listens any more.
            self.send_response(200)
            self.send_header(
                "Content-Type", 'multipart/related; type="application/dicom"; boundary=b'
            )
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"--b\r\nContent-Type: application/dicom\r\n\r\nDICM")
            self.wfile.flush()
            self.close_connection = True
            threading.Thread(target=self.server.shutdown, daemon=True).start()
            return
        self.server.served.append(sop)
        data = files[sop].read_bytes()
        body = b"--b\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n--b--\r\n"
        self.send_response(200)
        self.send_header("Content-Type", 'multipart/related; type="application/dicom"; boundary=b')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_a_dicomweb_peer_lost_mid_pull_keeps_what_arrived_and_exits_7(
    tmp_path: Path, dvdexit_home: Path
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=5, sc_images=1)
    study = media.study_uids[0]
    files = sorted(p for p in media.path_by_sop_uid.values() if _study_of(p) == study)
    server = _LostWadoServer(files, serve=2)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://{LOOPBACK}:{server.server_address[1]}/dicom-web"
        run_dvdexit("peers", "add", "web", "--dicomweb", url, home=dvdexit_home)
        store = tmp_path / "store"
        done = run_dvdexit(
            "receive", "--from", "web", "--study", study, "--study", media.study_uids[1],
            "--store", store, "--json", home=dvdexit_home,
        )  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)

    assert done.returncode == 7, done.stderr
    report = json.loads(done.stdout)
    assert report["interrupted"] and report["not_attempted"] == [media.study_uids[1]]
    stored = {p.stem for p in (store / study).glob("*/*.dcm")}
    assert stored == set(server.served) and len(stored) == 2
    counts = report["studies"][0]
    assert (counts["stored"], counts["failed"] + counts["missing"]) == (2, len(files) - 2)
    problems = {p["sop_instance_uid"] for p in report["problems"]}
    assert problems == {_sop_of(p) for p in files} - stored
    assert set(_received(dvdexit_home)) == stored


def _add_peer(home: Path, port: int) -> None:
    added = run_dvdexit(
        "peers", "add", "pacs", "--dimse", f"{LOOPBACK}:{port}", "--ae", "HALFPACS", home=home
    )
    assert added.returncode == 0, added.stderr


def _assert_partial(
    report: dict[str, Any], store: Path, study: str, files: list[Path], sent: list[str], code: int
) -> None:
    """Exit-7 partial result: what was sent stored, the rest missing with the status."""
    assert report["outcome"] == "incomplete" and report["exit_code"] == 7
    assert report["interrupted"] is None  # the peer answered: not a lost peer
    stored = {p.stem for p in (store / study).glob("*/*.dcm")}
    assert stored == set(sent) and len(stored) == 2
    counts = report["studies"][0]
    assert (counts["listed"], counts["stored"], counts["missing"]) == (
        len(files),
        2,
        len(files) - 2,
    )
    retrieval = counts["retrieval"]
    assert retrieval["status"] == f"{code:04X}"
    assert retrieval["category"] == ("warning" if code == 0xB000 else "failure")
    # pynetdicom counts the sub-operations it never started as failed.
    assert (retrieval["completed"], retrieval["failed"], retrieval["warning"]) == (
        2,
        len(files) - 2,
        0,
    )
    missing = {p["sop_instance_uid"] for p in report["problems"] if p["outcome"] == "missing"}
    assert missing == {_sop_of(p) for p in files} - stored
    assert all(f"status {code:04X}" in p["reason"] for p in report["problems"])
    assert not list(store.glob(".pull-*"))


@pytest.mark.parametrize("code", [0xB000, 0xA702, 0xA900, 0xC000])
def test_a_c_get_ended_with_a_failure_or_warning_mid_study_keeps_what_arrived_and_exits_7(
    tmp_path: Path, dvdexit_home: Path, half_get_peer: Any, code: int
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=4, sc_images=1)
    study = media.study_uids[0]
    files = sorted(p for p in media.path_by_sop_uid.values() if _study_of(p) == study)
    peer = half_get_peer(files, 2, end_with=code)
    _add_peer(dvdexit_home, peer.port)
    store = tmp_path / "store"

    done = run_dvdexit(
        "receive", "--from", "pacs", "--study", study, "--store", store, "--json",
        home=dvdexit_home,
    )  # fmt: skip
    human = run_dvdexit(
        "receive", "--from", "pacs", "--study", study, "--store", tmp_path / "store2",
        home=dvdexit_home,
    )  # fmt: skip

    assert done.returncode == 7, done.stderr
    report = json.loads(done.stdout)
    _assert_partial(report, store, study, files, peer.sent, code)
    received = _received(dvdexit_home)
    assert {uid: received[uid] for uid in peer.sent} == dict.fromkeys(peer.sent, "stored")
    assert set(received) == set(peer.sent)  # nothing journaled that did not arrive
    assert human.returncode == 7
    assert f"status {code:04X}" in human.stdout and "2 completed" in human.stdout
    assert "pull INCOMPLETE" in human.stderr and "INTERRUPTED" not in human.stderr


@pytest.mark.parametrize("code", [0xB000, 0xA702, 0xA801, 0xC000])
def test_a_c_move_ended_with_a_failure_or_warning_mid_study_keeps_what_arrived_and_exits_7(
    tmp_path: Path, dvdexit_home: Path, half_get_peer: Any, dvdexit_receiver: Any, code: int
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=4, sc_images=1)
    study = media.study_uids[0]
    files = sorted(p for p in media.path_by_sop_uid.values() if _study_of(p) == study)
    store = tmp_path / "store"
    receiver = dvdexit_receiver(store, ae="DVDEXIT")
    peer = half_get_peer(files, 2, move_to=receiver.port, end_with=code)
    _add_peer(dvdexit_home, peer.port)

    done = run_dvdexit(
        "receive", "--from", "pacs", "--study", study, "--move-dest", "DVDEXIT",
        "--store", store, "--json", home=dvdexit_home,
    )  # fmt: skip

    assert done.returncode == 7, done.stderr
    report = json.loads(done.stdout)
    assert report["method"] == "c-move"
    _assert_partial(report, store, study, files, peer.sent, code)
    assert set(_received(dvdexit_home)) == set(peer.sent)  # journaled by our receiver


@pytest.mark.parametrize(
    ("method", "code"), [("c-get", 0xA702), ("c-move", 0xA702), ("c-move", 0xA801)]
)
def test_a_failure_status_before_any_sub_operation_is_a_refusal_exit_5_nothing_stored(
    tmp_path: Path,
    dvdexit_home: Path,
    half_get_peer: Any,
    dvdexit_receiver: Any,
    method: str,
    code: int,
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=2, sc_images=1)
    study = media.study_uids[0]
    files = sorted(p for p in media.path_by_sop_uid.values() if _study_of(p) == study)
    store = tmp_path / "store"
    move: tuple[str, ...] = ()
    move_to = None
    if method == "c-move":
        move_to = dvdexit_receiver(store, ae="DVDEXIT").port
        move = ("--move-dest", "DVDEXIT")
    peer = half_get_peer(files, 0, move_to=move_to, end_with=code)
    _add_peer(dvdexit_home, peer.port)

    done = run_dvdexit(
        "receive", "--from", "pacs", "--study", study, *move, "--store", store, "--json",
        home=dvdexit_home,
    )  # fmt: skip

    assert done.returncode == 5, done.stderr
    error = json.loads(done.stdout)["error"]
    assert f"{code:04X}" in error["message"]
    if code == 0xA801:
        assert "does not know the move destination 'DVDEXIT'" in error["message"]
        assert "register AE title DVDEXIT" in error["hint"]
    else:
        assert "refused" in error["message"] and error["hint"]
    assert not list(store.rglob("*.dcm"))
    assert _received(dvdexit_home) == {}


def test_a_c_get_sending_every_listed_instance_then_failing_an_unlisted_one_is_not_complete(
    tmp_path: Path, dvdexit_home: Path, half_get_peer: Any
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=2, sc_images=1)
    study = media.study_uids[0]
    files = sorted(p for p in media.path_by_sop_uid.values() if _study_of(p) == study)
    # It announces one sub-operation more than it lists, and fails that one.
    peer = half_get_peer(files, len(files), end_with=0xA702, unlisted=1)
    _add_peer(dvdexit_home, peer.port)
    store = tmp_path / "store"

    done = run_dvdexit(
        "receive", "--from", "pacs", "--study", study, "--store", store, "--json",
        home=dvdexit_home,
    )  # fmt: skip

    # Every listed instance is stored, but the peer says it failed to send one: never 0.
    assert done.returncode == 7, done.stderr
    report = json.loads(done.stdout)
    assert report["outcome"] == "incomplete" and report["problems"] == []
    assert report["studies"][0]["stored"] == len(files)
    assert {p.stem for p in (store / study).glob("*/*.dcm")} == set(peer.sent)
    retrieval = report["studies"][0]["retrieval"]
    assert (retrieval["status"], retrieval["completed"], retrieval["failed"]) == (
        "A702",
        len(files),
        1,
    )


def test_a_c_get_refused_for_a_later_study_keeps_the_earlier_one_and_names_the_rest_missing(
    tmp_path: Path, dvdexit_home: Path, half_get_peer: Any
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=2, sc_images=2)
    first, second = media.study_uids
    files = sorted(media.path_by_sop_uid.values())
    firsts = [p for p in files if _study_of(p) == first]
    # Sends the whole first study, then answers A702 before sending any of the second.
    peer = half_get_peer(files, len(firsts), end_with=0xA702, send_in_all=True)
    _add_peer(dvdexit_home, peer.port)
    store = tmp_path / "store"

    done = run_dvdexit(
        "receive", "--from", "pacs", "--study", first, "--study", second, "--store", store,
        "--json", home=dvdexit_home,
    )  # fmt: skip

    assert done.returncode == 7, done.stderr
    report = json.loads(done.stdout)
    assert report["outcome"] == "incomplete" and "A702" in report["interrupted"]
    one, two = report["studies"]
    assert (one["listed"], one["stored"], one["missing"]) == (len(firsts), len(firsts), 0)
    seconds = {_sop_of(p) for p in files if _study_of(p) == second}
    assert (two["listed"], two["stored"], two["missing"]) == (len(seconds), 0, len(seconds))
    assert {p["sop_instance_uid"] for p in report["problems"]} == seconds
    assert {p.stem for p in store.rglob("*.dcm")} == set(peer.sent) == {_sop_of(p) for p in firsts}


def _study_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def _class_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID)


def _sop_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
