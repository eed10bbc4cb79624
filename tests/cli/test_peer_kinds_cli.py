"""`dvdexit send` reaches every kind of peer: DICOMweb archives and drop folders too."""

from __future__ import annotations

import json
from pathlib import Path

from peers import run_dvdexit

from dvdexit_cli.dicom.scan import scan
from dvdexit_cli.samples import make_sample_dvd


def test_send_to_a_dicomweb_peer_stores_every_instance_in_orthanc(
    tmp_path: Path, dvdexit_home: Path, orthanc: object
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=3, sc_images=1)
    pacs = orthanc()  # type: ignore[operator]
    added = run_dvdexit("peers", "add", "web", "--dicomweb", pacs.dicomweb_url, home=dvdexit_home)
    assert added.returncode == 0, added.stderr

    done = run_dvdexit("send", media.root, "--to", "web", "--json", home=dvdexit_home)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["sent"] == media.instance_count
    assert set(pacs.instance_uids()) == set(media.path_by_sop_uid)


def test_send_to_a_dicomweb_peer_with_basic_auth_uses_the_secret_and_never_shows_it(
    tmp_path: Path, dvdexit_home: Path, orthanc: object
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=2, sc_images=1)
    secret = "s3cret-Pa55-for-test"
    pacs = orthanc(users={"sender": secret})  # type: ignore[operator]
    run_dvdexit(
        "peers",
        "add",
        "web",
        "--dicomweb",
        pacs.dicomweb_url,
        "--auth",
        "basic",
        "--user",
        "sender",
        home=dvdexit_home,
    )
    env = {"DVDEXIT_SECRET_WEB": secret}

    done = run_dvdexit(
        "-vv", "send", media.root, "--to", "web", "--json", home=dvdexit_home, env=env
    )
    without = run_dvdexit("send", media.root, "--to", "web", home=dvdexit_home)

    assert done.returncode == 0, done.stderr
    assert set(pacs.instance_uids()) == set(media.path_by_sop_uid)
    assert secret not in done.stdout + done.stderr
    for path in dvdexit_home.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert without.returncode == 3
    assert "DVDEXIT_SECRET_WEB" in without.stderr


def test_send_to_a_folder_peer_writes_a_package_that_verifies_and_flags_tampering(
    tmp_path: Path, dvdexit_home: Path
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=3, sc_images=1)
    drop = tmp_path / "drop"
    drop.mkdir()
    run_dvdexit("peers", "add", "drop", "--folder", drop, home=dvdexit_home)

    done = run_dvdexit(
        "send",
        media.root,
        "--to",
        "drop",
        "--note",
        "for the MDT",
        "--verify",
        "--json",
        home=dvdexit_home,
    )

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["verify"]["verdict"] == "intact"
    (package,) = list(drop.iterdir())
    assert {i.sop_instance_uid for i in scan([package]).instances} == set(media.path_by_sop_uid)
    intact = run_dvdexit("verify", package, "--json", home=dvdexit_home)
    assert intact.returncode == 0, intact.stdout
    assert json.loads(intact.stdout)["packages"][0]["verdict"] == "intact"
    victim = sorted(p for p in package.rglob("IM*") if p.is_file())[0]
    data = bytearray(victim.read_bytes())
    data[-2] ^= 0xFF
    victim.write_bytes(bytes(data))
    tampered = run_dvdexit("verify", package, home=dvdexit_home)
    assert tampered.returncode == 7
    assert "tampered" in tampered.stdout
    assert victim.name in tampered.stdout
