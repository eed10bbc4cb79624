"""`dvdexit verify --peer`: prove what a peer holds, and say how it was proven."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydicom
from peers import free_port, run_dvdexit

from dvdexit_cli.samples import make_sample_dvd


def _orthanc_with_us(orthanc: Any) -> tuple[Any, int]:
    """Orthanc that knows our AE (C-GET, commitment reports go to registered AEs only)."""
    listen = free_port()
    pacs = orthanc(modalities={"DVDEXIT": ("DVDEXIT", "127.0.0.1", listen)})
    return pacs, listen


def _send(home: Path, pacs: Any, media_root: Path) -> int:
    added = run_dvdexit(
        "peers",
        "add",
        "pacs",
        "--dimse",
        f"127.0.0.1:{pacs.dicom_port}",
        "--ae",
        pacs.aet,
        home=home,
    )
    assert added.returncode == 0, added.stderr
    done = run_dvdexit("send", media_root, "--to", "pacs", "--json", home=home)
    assert done.returncode == 0, done.stderr
    return int(json.loads(done.stdout)["transfer_id"])


def _verify(home: Path, listen: int, *args: str) -> tuple[int, dict[str, Any], str]:
    done = run_dvdexit(
        "verify",
        "--peer",
        "pacs",
        *args,
        "--listen-port",
        str(listen),
        "--commit-timeout",
        "15",
        "--json",
        home=home,
    )
    return done.returncode, json.loads(done.stdout), done.stderr


def test_a_study_sent_to_orthanc_verifies_identical_and_committed(
    tmp_path: Path, dvdexit_home: Path, orthanc: Any
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=4, sc_images=1)
    pacs, listen = _orthanc_with_us(orthanc)
    transfer = _send(dvdexit_home, pacs, media.root)

    code, report, stderr = _verify(dvdexit_home, listen, "--transfer", str(transfer))

    assert code == 0, (report, stderr)
    assert report["checks_used"] == ["c-find", "storage-commitment", "c-get"]
    assert report["identical"] == media.instance_count
    assert report["committed"] == media.instance_count
    assert report["missing"] == report["different"] == report["extra"] == 0
    status = json.loads(run_dvdexit("status", "--json", home=dvdexit_home).stdout)
    assert status["transfers"][0]["counts"]["committed"] == media.instance_count


def test_an_instance_deleted_at_the_peer_is_named_missing_and_exits_7(
    tmp_path: Path, dvdexit_home: Path, orthanc: Any
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=4, sc_images=1)
    pacs, listen = _orthanc_with_us(orthanc)
    transfer = _send(dvdexit_home, pacs, media.root)
    held = pacs.instance_uids()
    victim = sorted(held)[1]
    pacs.rest("DELETE", f"/instances/{held[victim]}")

    code, report, _ = _verify(dvdexit_home, listen, "--transfer", str(transfer))

    assert code == 7
    assert report["missing"] == 1
    assert report["identical"] == media.instance_count - 1
    missing = [
        i["sop_instance_uid"]
        for study in report["studies"].values()
        for i in study["instances"]
        if i["verdict"] == "missing"
    ]
    assert missing == [victim]


def test_an_instance_modified_at_the_peer_is_reported_different(
    tmp_path: Path, dvdexit_home: Path, orthanc: Any
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=3, sc_images=1)
    pacs, listen = _orthanc_with_us(orthanc)
    transfer = _send(dvdexit_home, pacs, media.root)
    held = pacs.instance_uids()
    victim = sorted(held)[0]
    modified = pacs.rest(
        "POST",
        f"/instances/{held[victim]}/modify",
        json={
            "Replace": {"SeriesDescription": "changed at the peer"},
            "Keep": ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"],
            "Force": True,
        },
    )
    pacs.rest("DELETE", f"/instances/{held[victim]}")
    pacs.rest("POST", "/instances", content=modified)
    assert pydicom.dcmread(__import__("io").BytesIO(modified)).SOPInstanceUID == victim

    code, report, _ = _verify(dvdexit_home, listen, "--transfer", str(transfer))

    assert code == 7
    assert report["different"] == 1
    assert report["missing"] == 0
    different = [
        i
        for study in report["studies"].values()
        for i in study["instances"]
        if i["verdict"] == "different"
    ]
    assert [i["sop_instance_uid"] for i in different] == [victim]
    assert "SeriesDescription" in different[0]["reason"]
    assert "changed at the peer" not in json.dumps(report)  # names elements, never values


def test_dcmtk_storescp_cannot_be_verified_remotely_and_exits_7(
    tmp_path: Path, dvdexit_home: Path, storescp: Any
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=2, sc_images=1)
    scp = storescp(tmp_path / "out")
    run_dvdexit(
        "peers",
        "add",
        "pacs",
        "--dimse",
        f"127.0.0.1:{scp.port}",
        "--ae",
        scp.ae,
        home=dvdexit_home,
    )
    sent = run_dvdexit("send", media.root, "--to", "pacs", home=dvdexit_home)
    assert sent.returncode == 0, sent.stderr

    done = run_dvdexit("verify", "--peer", "pacs", media.root, home=dvdexit_home)
    as_json = run_dvdexit("verify", "--peer", "pacs", media.root, "--json", home=dvdexit_home)

    assert done.returncode == 7
    assert "cannot verify remotely" in done.stdout
    for check in ("c-find", "storage-commitment", "c-get"):
        assert f"check {check}: unavailable" in done.stdout
    report = json.loads(as_json.stdout)
    assert as_json.returncode == 7
    assert report["verifiable"] is False
    assert report["checks_used"] == []
    assert report["identical"] == 0


def test_an_instance_the_peer_holds_in_another_encoding_is_never_different(
    tmp_path: Path, dvdexit_home: Path, orthanc: Any
) -> None:
    import io

    from pydicom.uid import ImplicitVRLittleEndian

    media = make_sample_dvd(tmp_path / "dvd", ct_slices=2, sc_images=1)
    pacs, listen = _orthanc_with_us(orthanc)
    transfer = _send(dvdexit_home, pacs, media.root)
    held = pacs.instance_uids()
    victim = sorted(held)[0]
    original = pydicom.dcmread(media.path_by_sop_uid[victim])
    assert original.file_meta.TransferSyntaxUID != ImplicitVRLittleEndian
    # The same content in another encoding, as a PACS that transcodes would keep it.
    buffer = io.BytesIO()
    original.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    original.save_as(buffer, enforce_file_format=True)
    pacs.rest("DELETE", f"/instances/{held[victim]}")
    pacs.rest("POST", "/instances", content=buffer.getvalue())

    code, report, _ = _verify(dvdexit_home, listen, "--transfer", str(transfer))

    # Orthanc transcodes back to the syntax we offer first (the one we sent), which may
    # give the very bytes we sent; either way the copy is not "different".
    assert code == 0, report
    assert report["identical"] + report["equivalent"] == media.instance_count
    assert report["different"] == report["missing"] == 0


def test_an_orthanc_that_does_not_know_our_ae_cannot_verify_and_says_why(
    tmp_path: Path, dvdexit_home: Path, orthanc: Any
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=2, sc_images=1)
    pacs = orthanc()  # no DicomModalities: it stores from anyone, answers queries to no one
    transfer = _send(dvdexit_home, pacs, media.root)

    code, report, _ = _verify(dvdexit_home, free_port(), "--transfer", str(transfer))

    assert code == 7
    assert report["verifiable"] is False
    assert set(report["checks_unavailable"]) == {"c-find", "storage-commitment", "c-get"}
    assert all(
        "refused in use" in why and "DVDEXIT" in why
        for why in report["checks_unavailable"].values()
    )


def test_a_dicomweb_peer_is_verified_with_qido_and_wado_and_names_a_deleted_instance(
    tmp_path: Path, dvdexit_home: Path, orthanc: Any
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=3, sc_images=1)
    pacs = orthanc()
    transfer = _send(dvdexit_home, pacs, media.root)
    added = run_dvdexit("peers", "add", "web", "--dicomweb", pacs.dicomweb_url, home=dvdexit_home)
    assert added.returncode == 0, added.stderr

    def verify() -> tuple[int, dict[str, Any]]:
        done = run_dvdexit(
            "verify", "--peer", "web", "--transfer", str(transfer), "--json", home=dvdexit_home
        )
        return done.returncode, json.loads(done.stdout)

    code, report = verify()
    held = pacs.instance_uids()
    victim = sorted(held)[2]
    pacs.rest("DELETE", f"/instances/{held[victim]}")
    after_code, after = verify()

    assert code == 0, report
    assert report["checks_used"] == ["qido-rs", "wado-rs"]
    assert report["identical"] == media.instance_count
    assert after_code == 7
    assert after["missing"] == 1
    missing = [
        i["sop_instance_uid"]
        for study in after["studies"].values()
        for i in study["instances"]
        if i["verdict"] == "missing"
    ]
    assert missing == [victim]


def test_send_verify_proves_what_orthanc_holds_right_after_the_send(
    tmp_path: Path, dvdexit_home: Path, orthanc: Any
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=3, sc_images=1)
    pacs, listen = _orthanc_with_us(orthanc)
    run_dvdexit("peers", "local", "--port", str(listen), home=dvdexit_home)
    run_dvdexit(
        "peers",
        "add",
        "pacs",
        "--dimse",
        f"127.0.0.1:{pacs.dicom_port}",
        "--ae",
        pacs.aet,
        home=dvdexit_home,
    )

    done = run_dvdexit("send", media.root, "--to", "pacs", "--verify", "--json", home=dvdexit_home)

    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["sent"] == media.instance_count
    assert document["verify"]["identical"] == media.instance_count
    assert document["verify"]["committed"] == media.instance_count


def test_send_verify_to_a_peer_that_cannot_be_verified_exits_7_though_all_was_sent(
    tmp_path: Path, dvdexit_home: Path, storescp: Any
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=2, sc_images=1)
    scp = storescp(tmp_path / "scp")
    run_dvdexit(
        "peers",
        "add",
        "scp",
        "--dimse",
        f"127.0.0.1:{scp.port}",
        "--ae",
        scp.ae,
        home=dvdexit_home,
    )

    done = run_dvdexit("send", media.root, "--to", "scp", "--verify", "--json", home=dvdexit_home)

    document = json.loads(done.stdout)
    assert document["sent"] == media.instance_count
    assert document["verify"]["verifiable"] is False
    assert done.returncode == 7
