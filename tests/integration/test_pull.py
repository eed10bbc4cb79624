"""`dvdexit receive --from PEER`: pull whole studies from Orthanc (WADO-RS, C-GET, C-MOVE).

Every stored file must hold exactly the dataset Orthanc serves (GET /instances/ID/file),
and what the peer lists but did not arrive makes the pull exit 7.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx
from peers import free_port, run_dvdexit

from dvdexit_cli.config import resolve_paths
from dvdexit_cli.dicom.digest import dataset_digest
from dvdexit_cli.dicom.scan import scan
from dvdexit_cli.samples import SampleMedia, make_sample_dvd
from dvdexit_cli.transport.dicomweb import DicomwebTransport


def _upload(pacs: Any, media: SampleMedia) -> None:
    transport = DicomwebTransport(pacs.dicomweb_url, name="orthanc")
    result = transport.store_batch(scan([media.root]).instances)
    transport.close()
    assert all(o.state == "sent" for o in result.outcomes.values())


def _served_digests(pacs: Any, tmp_path: Path) -> dict[str, str]:
    """SOP Instance UID -> dataset digest of the file Orthanc serves."""
    digests = {}
    for sop, orthanc_id in pacs.instance_uids().items():
        copy = tmp_path / "served.dcm"
        copy.write_bytes(pacs.rest("GET", f"/instances/{orthanc_id}/file"))
        digests[sop] = dataset_digest(copy)[1]
    return digests


def _stored_digests(store: Path, study: str) -> dict[str, str]:
    return {p.stem: dataset_digest(p)[1] for p in (store / study).glob("*/*.dcm")}


def _received_rows(home: Path) -> list[tuple[str, str]]:
    journal = resolve_paths({"DVDEXIT_HOME": str(home)}).journal_file
    with sqlite3.connect(journal) as db:
        return list(db.execute("SELECT sop_instance_uid, outcome FROM received"))


def _add_dimse(home: Path, pacs: Any) -> None:
    added = run_dvdexit(
        "peers", "add", "pacs", "--dimse", f"127.0.0.1:{pacs.dicom_port}", "--ae", pacs.aet,
        home=home,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr


def test_pull_over_wado_rs_stores_what_orthanc_serves_and_journals_it(
    tmp_path: Path, dvdexit_home: Path, orthanc: Any
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=4, sc_images=2)
    pacs = orthanc()
    _upload(pacs, media)
    run_dvdexit("peers", "add", "web", "--dicomweb", pacs.dicomweb_url, home=dvdexit_home)
    store = tmp_path / "store"
    args = ["receive", "--from", "web", "--store", store, "--json"]
    studies = [a for s in media.study_uids for a in ("--study", s)]

    first = run_dvdexit(*args, *studies, home=dvdexit_home)
    again = run_dvdexit(*args, *studies, home=dvdexit_home)

    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["method"] == "wado-rs" and report["outcome"] == "complete"
    assert sum(s["stored"] for s in report["studies"]) == media.instance_count
    served = _served_digests(pacs, tmp_path)
    stored = {}
    for study in media.study_uids:
        stored.update(_stored_digests(store, study))
    assert stored == served
    assert sorted(_received_rows(dvdexit_home)) == sorted(
        [(sop, "stored") for sop in served] + [(sop, "duplicate") for sop in served]
    )
    # Pulling again stores nothing twice.
    assert again.returncode == 0, again.stderr
    assert sum(s["duplicate"] for s in json.loads(again.stdout)["studies"]) == len(served)


def test_pull_of_a_study_the_peer_does_not_have_exits_7_and_keeps_the_rest(
    tmp_path: Path, dvdexit_home: Path, orthanc: Any
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=2, sc_images=1)
    pacs = orthanc()
    _upload(pacs, media)
    run_dvdexit("peers", "add", "web", "--dicomweb", pacs.dicomweb_url, home=dvdexit_home)
    store = tmp_path / "store"

    done = run_dvdexit(
        "receive", "--from", "web", "--store", store, "--json",
        "--study", media.study_uids[0], "--study", "1.2.826.0.1.3680043.8.498.999",
        home=dvdexit_home,
    )  # fmt: skip

    assert done.returncode == 7, done.stderr
    report = json.loads(done.stdout)
    assert report["outcome"] == "incomplete"
    unknown = report["studies"][1]
    assert (unknown["listed"], unknown["stored"]) == (0, 0)
    assert report["studies"][0]["stored"] == report["studies"][0]["listed"] > 0
    assert _stored_digests(store, media.study_uids[0])


def test_pull_rejects_a_bad_study_uid_before_asking_the_peer(
    tmp_path: Path, dvdexit_home: Path
) -> None:
    run_dvdexit(
        "peers", "add", "web", "--dicomweb", f"http://127.0.0.1:{free_port()}/dicom-web",
        home=dvdexit_home,
    )  # fmt: skip

    done = run_dvdexit(
        "receive", "--from", "web", "--study", "../../etc", "--store", tmp_path / "s",
        home=dvdexit_home,
    )  # fmt: skip

    assert done.returncode == 2
    assert "not a valid UID" in done.stderr
    assert not (tmp_path / "s").exists()


def test_pull_over_c_get_stores_what_orthanc_serves(
    tmp_path: Path, dvdexit_home: Path, orthanc: Any
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=3, sc_images=2)
    pacs = orthanc(modalities={"DVDEXIT": ("DVDEXIT", "127.0.0.1", free_port())})
    _upload(pacs, media)
    _add_dimse(dvdexit_home, pacs)
    store = tmp_path / "store"

    done = run_dvdexit(
        "receive", "--from", "pacs", "--study", media.study_uids[0],
        "--study", media.study_uids[1], "--store", store, "--json", home=dvdexit_home,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["method"] == "c-get"
    stored = {}
    for study in media.study_uids:
        stored.update(_stored_digests(store, study))
    assert stored == _served_digests(pacs, tmp_path)
    assert len(stored) == media.instance_count
    assert not list(store.glob(".pull-*"))  # scratch copies removed


def test_pull_over_c_move_to_a_running_receiver(
    tmp_path: Path, dvdexit_home: Path, orthanc: Any, dvdexit_receiver: Any
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=3, sc_images=1)
    store = tmp_path / "store"
    receiver = dvdexit_receiver(store, ae="DVDEXIT")
    pacs = orthanc(modalities={"DVDEXIT": ("DVDEXIT", "127.0.0.1", receiver.port)})
    _upload(pacs, media)
    _add_dimse(dvdexit_home, pacs)

    done = run_dvdexit(
        "receive", "--from", "pacs", "--study", media.study_uids[0], "--move-dest", "DVDEXIT",
        "--store", store, "--json", home=dvdexit_home,
    )  # fmt: skip
    unknown = run_dvdexit(
        "receive", "--from", "pacs", "--study", media.study_uids[0], "--move-dest", "NOBODY",
        "--store", store, home=dvdexit_home,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["method"] == "c-move" and report["outcome"] == "complete"
    study = media.study_uids[0]
    served = _served_digests(pacs, tmp_path)
    stored = _stored_digests(store, study)
    assert stored and all(served[sop] == digest for sop, digest in stored.items())
    assert len(stored) == report["studies"][0]["listed"]
    assert unknown.returncode == 5
    assert "NOBODY" in unknown.stderr


def test_list_finds_the_study_by_patient_id_and_by_date_range(
    tmp_path: Path, dvdexit_home: Path, orthanc: Any
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=2, sc_images=1)
    pacs = orthanc(modalities={"DVDEXIT": ("DVDEXIT", "127.0.0.1", free_port())})
    _upload(pacs, media)
    run_dvdexit("peers", "add", "web", "--dicomweb", pacs.dicomweb_url, home=dvdexit_home)
    _add_dimse(dvdexit_home, pacs)

    def listed(peer: str, *keys: str) -> set[str]:
        done = run_dvdexit("receive", "--from", peer, "--list", *keys, "--json", home=dvdexit_home)
        assert done.returncode == 0, done.stderr
        return {s["study_uid"] for s in json.loads(done.stdout)["studies"]}

    everything = set(media.study_uids)
    for peer in ("web", "pacs"):
        assert listed(peer, "--patient-id", "DEMO0001") == everything
        assert listed(peer, "--study-date", "20240101-20240131") == everything
        assert listed(peer, "--study-date", "20230101-20231231") == set()
        assert listed(peer, "--patient-id", "DEMO9999") == set()


def test_list_refuses_a_bad_date_and_a_query_without_keys(
    tmp_path: Path, dvdexit_home: Path
) -> None:
    run_dvdexit(
        "peers", "add", "web", "--dicomweb", f"http://127.0.0.1:{free_port()}/dicom-web",
        home=dvdexit_home,
    )  # fmt: skip

    bad_date = run_dvdexit(
        "receive", "--from", "web", "--list", "--study-date", "last week", home=dvdexit_home
    )
    no_key = run_dvdexit("receive", "--from", "web", "--list", "--json", home=dvdexit_home)

    assert bad_date.returncode == 2 and "--study-date" in bad_date.stderr
    assert no_key.returncode == 2
    assert json.loads(no_key.stdout)["error"]["type"] == "UsageError"


def test_pull_with_basic_auth_uses_the_secret_and_never_shows_it(
    tmp_path: Path, dvdexit_home: Path, orthanc: Any
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=2, sc_images=1)
    secret = "pull-Pa55-w0rd-for-test"
    pacs = orthanc(users={"reader": secret})
    transport = DicomwebTransport(pacs.dicomweb_url, auth=httpx.BasicAuth("reader", secret))
    assert all(
        o.state == "sent"
        for o in transport.store_batch(scan([media.root]).instances).outcomes.values()
    )
    transport.close()
    run_dvdexit(
        "peers", "add", "web", "--dicomweb", pacs.dicomweb_url, "--auth", "basic",
        "--user", "reader", home=dvdexit_home,
    )  # fmt: skip
    store = tmp_path / "store"
    args = ("receive", "--from", "web", "--study", media.study_uids[0], "--store", store)

    done = run_dvdexit(
        "-vv", *args, "--json", home=dvdexit_home, env={"DVDEXIT_SECRET_WEB": secret}
    )
    without = run_dvdexit(*args, home=dvdexit_home)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["outcome"] == "complete"
    assert without.returncode == 3
    assert secret not in done.stdout + done.stderr + without.stdout + without.stderr
    for path in [*dvdexit_home.rglob("*"), *store.rglob("*")]:
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_pull_from_an_unreachable_peer_exits_5_and_stores_nothing(
    tmp_path: Path, dvdexit_home: Path
) -> None:
    run_dvdexit(
        "peers", "add", "web", "--dicomweb", f"http://127.0.0.1:{free_port()}/dicom-web",
        home=dvdexit_home,
    )  # fmt: skip
    store = tmp_path / "store"

    done = run_dvdexit(
        "receive", "--from", "web", "--study", "1.2.826.0.1.3680043.8.498.1", "--store", store,
        "--json", home=dvdexit_home,
    )  # fmt: skip

    assert done.returncode == 5, done.stderr
    assert json.loads(done.stdout)["error"]["type"] == "PeerUnreachableError"
    assert not list(store.rglob("*.dcm"))


def test_pull_from_a_folder_peer_is_a_usage_error(tmp_path: Path, dvdexit_home: Path) -> None:
    run_dvdexit("peers", "add", "outbox", "--folder", tmp_path / "outbox", home=dvdexit_home)

    done = run_dvdexit(
        "receive", "--from", "outbox", "--study", "1.2.826.0.1.3680043.8.498.1",
        "--store", tmp_path / "store", home=dvdexit_home,
    )  # fmt: skip

    assert done.returncode == 2, done.stderr
    assert "DICOMweb and DIMSE" in done.stderr


def test_pull_over_c_move_finds_every_instance_under_a_non_default_layout(
    tmp_path: Path, dvdexit_home: Path, orthanc: Any, dvdexit_receiver: Any
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=3, sc_images=1)
    store = tmp_path / "store"
    layout = "{received_date}/{study}/{series}/{sop}.dcm"
    receiver = dvdexit_receiver(store, ae="DVDEXIT", extra=["--layout", layout])
    pacs = orthanc(modalities={"DVDEXIT": ("DVDEXIT", "127.0.0.1", receiver.port)})
    _upload(pacs, media)
    _add_dimse(dvdexit_home, pacs)
    study = media.study_uids[0]

    done = run_dvdexit(
        "receive", "--from", "pacs", "--study", study, "--move-dest", "DVDEXIT",
        "--store", store, "--json", home=dvdexit_home,
    )  # fmt: skip

    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["outcome"] == "complete"
    counts = report["studies"][0]
    assert counts["stored"] == counts["listed"] == 3 and counts["missing"] == 0
    stored = {p.stem: dataset_digest(p)[1] for p in store.glob(f"*/{study}/*/*.dcm")}
    served = _served_digests(pacs, tmp_path)
    assert len(stored) == 3 and all(served[sop] == digest for sop, digest in stored.items())
    assert {sop for sop, outcome in _received_rows(dvdexit_home)} == set(stored)


def test_pull_stores_under_the_receivers_layout_and_renders_srs_as_pdf_like_listening(
    tmp_path: Path, dvdexit_home: Path, orthanc: Any
) -> None:
    import pydicom

    from dvdexit_cli.dicom.reports import ENCAPSULATED_PDF, transfer_note_sr

    media = make_sample_dvd(tmp_path / "dvd", ct_slices=2, sc_images=1)
    study = media.study_uids[0]
    first = next(p for p in media.path_by_sop_uid.values() if _study(p) == study)
    sr = transfer_note_sr(reference=pydicom.dcmread(first), note="compare with the prior")
    (tmp_path / "note").mkdir()
    sr.save_as(tmp_path / "note" / "NOTE.dcm", enforce_file_format=True)
    pacs = orthanc(modalities={"DVDEXIT": ("DVDEXIT", "127.0.0.1", free_port())})
    _upload(pacs, media)
    transport = DicomwebTransport(pacs.dicomweb_url, name="orthanc")
    transport.store_batch(scan([tmp_path / "note"]).instances)
    transport.close()
    _add_dimse(dvdexit_home, pacs)
    store = tmp_path / "store"

    done = run_dvdexit(
        "receive", "--from", "pacs", "--study", study, "--store", store, "--json",
        "--layout", "{received_date}/{study}/{series}/{sop}.dcm", "--sr-to-pdf",
        home=dvdexit_home,
    )  # fmt: skip

    assert done.returncode == 0, done.stdout + done.stderr
    stored = list(store.glob(f"*/{study}/*/*.dcm"))
    assert not list((store / study).glob("*/*.dcm"))  # not the default layout
    classes = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID) for p in stored]
    assert classes.count(ENCAPSULATED_PDF) == 1  # the SR, also as a PDF
    assert len(stored) == json.loads(done.stdout)["studies"][0]["listed"] + 1


def _study(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
