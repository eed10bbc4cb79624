"""The three ways an instance reaches the store journal it alike (issue 12: one ingest).

The same instances go in by listening (a sender's C-STORE), by a package in the drop
folder (``receive --watch --once``) and by a pull (``receive --from``, C-GET from
Orthanc); the journal must then say the same thing about each: outcome, status and
digest of every instance, the study's activity (folder, receiver) and the sender's
transfer note. A conflicting instance (same SOP Instance UID, other content) is C001 on
every path, a truncated one C000. The truncated one is served by a scripted WADO-RS peer
(Orthanc refuses to store a truncated file) and sent by pynetdicom (which sends a file's
dataset bytes as they are).
"""

from __future__ import annotations

import http.server
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from peers import LOOPBACK, free_port, run_dvdexit
from pynetdicom import AE

from dvdexit_cli.config import resolve_paths
from dvdexit_cli.dicom.reports import transfer_note_sr
from dvdexit_cli.dicom.scan import scan
from dvdexit_cli.package import Manifest, write_package
from dvdexit_cli.samples import write_study
from dvdexit_cli.transport.dicomweb import DicomwebTransport


def _study_with_note(folder: Path, seed: str) -> list[Path]:
    files = write_study(folder, n_instances=2, seed=seed)
    note = transfer_note_sr(
        reference=pydicom.dcmread(files[0], stop_before_pixels=True),
        note="compare with the prior",
        reason="second opinion",
        recipient="Dr. B",
    )
    note_path = folder / "note.dcm"
    note.save_as(note_path, enforce_file_format=True)
    return [*files, note_path]


def _other_content(path: Path, target: Path) -> Path:
    """The same SOP Instance UID with other content: a conflict."""
    ds = pydicom.dcmread(path)
    ds.StudyDescription = "changed after it was sent"
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target, enforce_file_format=True)
    return target


def _journal(home: Path) -> sqlite3.Connection:
    db = sqlite3.connect(resolve_paths({"DVDEXIT_HOME": str(home)}).journal_file)
    db.row_factory = sqlite3.Row
    return db


def _instances(home: Path) -> dict[tuple[str, str], tuple[int, str | None]]:
    """(SOP Instance UID, outcome) -> (status, digest) of every journaled instance."""
    with _journal(home) as db:
        rows = db.execute(
            "SELECT sop_instance_uid, outcome, status, digest FROM received"
            " WHERE COALESCE(peer_address, '') NOT LIKE 'dvdexit%'"
        ).fetchall()
    return {(r["sop_instance_uid"], r["outcome"]): (r["status"], r["digest"]) for r in rows}


def _study(home: Path, store: Path, study: str) -> dict[str, Any]:
    with _journal(home) as db:
        row = db.execute("SELECT * FROM studies WHERE study_uid = ?", (study,)).fetchone()
        note = db.execute(
            "SELECT note, reason, recipient FROM study_notes WHERE study_uid = ?", (study,)
        ).fetchone()
    assert row is not None, f"no study activity journaled under {home.name}"
    return {
        "folder": str(Path(row["folder"]).relative_to(store)),
        "has_receiver": row["receiver"] is not None,
        "note": tuple(note) if note else None,
    }


def _send(port: int, files: list[Path]) -> list[int]:
    """C-STORE each file as it is on disk (pynetdicom keeps its dataset bytes)."""
    ae = AE(ae_title="HOSP_A")
    for path in files:
        meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
        ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    assoc = ae.associate(LOOPBACK, port, ae_title="DVDEXIT")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(path).Status) for path in files]
    finally:
        assoc.release()


def _drop(tmp_path: Path, home: Path, store: Path, name: str, files: list[Path]) -> None:
    drop = tmp_path / "drop"
    drop.mkdir(exist_ok=True)
    manifest = Manifest(created_at="2026-12-07T10:00:00Z", sender_ae="HOSP_A")
    write_package(scan(files).instances, drop / name, manifest=manifest)
    run_dvdexit(
        "receive", "--watch", drop, "--once", "--settle", "0", "--store", store, home=home
    )  # fmt: skip


def _pull(home: Path, store: Path, study: str) -> dict[str, Any]:
    done = run_dvdexit(
        "receive", "--from", "pacs", "--study", study, "--store", store, "--json", home=home
    )
    assert done.stdout, done.stderr
    return dict(json.loads(done.stdout))


def _upload(pacs: Any, files: list[Path]) -> None:
    transport = DicomwebTransport(pacs.dicomweb_url, name="orthanc")
    result = transport.store_batch(scan(files).instances)
    transport.close()
    assert all(o.state == "sent" for o in result.outcomes.values())


def test_listening_drop_folder_and_pull_journal_the_same_instances_alike(
    tmp_path: Path, dvdexit_receiver: Any, orthanc: Any
) -> None:
    files = _study_with_note(tmp_path / "study", "three-paths")
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    changed = _other_content(files[0], tmp_path / "changed" / "IM1.dcm")
    homes = {name: tmp_path / f"home-{name}" for name in ("listen", "drop", "pull")}
    stores = {name: tmp_path / f"store-{name}" for name in homes}
    for home in homes.values():
        home.mkdir()

    receiver = dvdexit_receiver(stores["listen"], home=homes["listen"])
    first = _send(receiver.port, files)
    conflict = _send(receiver.port, [changed])
    receiver.stop()

    _drop(tmp_path, homes["drop"], stores["drop"], "FIRST", files)
    _drop(tmp_path, homes["drop"], stores["drop"], "CHANGED", [changed])

    pacs = orthanc(modalities={"DVDEXIT": ("DVDEXIT", "127.0.0.1", free_port())})
    _upload(pacs, files)
    run_dvdexit(
        "peers", "add", "pacs", "--dimse", f"127.0.0.1:{pacs.dicom_port}", "--ae", pacs.aet,
        home=homes["pull"],
    )  # fmt: skip
    _pull(homes["pull"], stores["pull"], study)
    for orthanc_id in pacs.instance_uids().values():
        pacs.rest("DELETE", f"/instances/{orthanc_id}")
    _upload(pacs, [changed])
    _pull(homes["pull"], stores["pull"], study)

    assert first == [0, 0, 0] and conflict == [0xC001]
    listened = _instances(homes["listen"])
    assert len(listened) == 4  # three stored, one conflict
    assert {outcome for _, outcome in listened} == {"stored", "conflict"}
    assert _instances(homes["drop"]) == listened
    assert _instances(homes["pull"]) == listened
    activity = _study(homes["listen"], stores["listen"], study)
    assert activity["note"] == ("compare with the prior", "second opinion", "Dr. B")
    assert activity["has_receiver"]
    assert _study(homes["drop"], stores["drop"], study) == activity
    assert _study(homes["pull"], stores["pull"], study) == activity


class _WadoServer(http.server.ThreadingHTTPServer):
    """QIDO-RS lists the files, WADO-RS serves each file's bytes as they are."""

    daemon_threads = True

    def __init__(self, files: dict[str, tuple[Path, str, str]]) -> None:
        self.files = files  # SOP Instance UID -> (file, SOP class, series)
        super().__init__((LOOPBACK, 0), _WadoHandler)


class _WadoHandler(http.server.BaseHTTPRequestHandler):
    server: _WadoServer

    def log_message(self, *args: object) -> None:
        return None

    def do_GET(self) -> None:
        files = self.server.files
        if self.path.split("?")[0].endswith("/instances"):  # QIDO-RS
            listed = [
                {
                    "00080016": {"vr": "UI", "Value": [sop_class]},
                    "00080018": {"vr": "UI", "Value": [sop]},
                    "0020000E": {"vr": "UI", "Value": [series]},
                }
                for sop, (_, sop_class, series) in files.items()
            ]
            body = json.dumps(listed).encode()
            content_type = "application/dicom+json"
        else:
            sop = self.path.split("?")[0].rsplit("/", 1)[-1]
            data = files[sop][0].read_bytes()
            body = b"--b\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n--b--\r\n"
            content_type = 'multipart/related; type="application/dicom"; boundary=b'
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def truncated_peer(tmp_path: Path) -> Iterator[tuple[str, Path, str]]:
    """A WADO-RS peer serving one truncated instance: (its URL, the file, its study)."""
    (whole,) = write_study(tmp_path / "cut-study", n_instances=1, seed="truncated-paths")
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(whole.read_bytes()[:-300])  # the pixel data's declared length runs past
    ds = pydicom.dcmread(whole, stop_before_pixels=True)
    server = _WadoServer(
        {str(ds.SOPInstanceUID): (cut, str(ds.SOPClassUID), str(ds.SeriesInstanceUID))}
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://{LOOPBACK}:{server.server_address[1]}/dicom-web"
        yield url, cut, str(ds.StudyInstanceUID)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_a_truncated_instance_is_refused_c000_by_listening_and_by_pull(
    tmp_path: Path, dvdexit_receiver: Any, truncated_peer: tuple[str, Path, str]
) -> None:
    url, cut, study = truncated_peer
    listen_home, pull_home = tmp_path / "home-listen", tmp_path / "home-pull"
    listen_home.mkdir()
    pull_home.mkdir()

    receiver = dvdexit_receiver(tmp_path / "store-listen", home=listen_home)
    answered = _send(receiver.port, [cut])
    receiver.stop()
    run_dvdexit("peers", "add", "web", "--dicomweb", url, home=pull_home)
    pulled = run_dvdexit(
        "receive", "--from", "web", "--study", study, "--store", tmp_path / "store-pull",
        home=pull_home,
    )  # fmt: skip

    assert answered == [0xC000]
    assert pulled.returncode == 7, pulled.stderr
    listened = _instances(listen_home)
    assert [(outcome, status) for (_, outcome), (status, _) in listened.items()] == [
        ("refused", 0xC000)
    ]
    assert _instances(pull_home) == listened
