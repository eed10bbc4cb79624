"""dvdexit and Orthanc, the open-source PACS many hospitals run, on loopback."""

from __future__ import annotations

import json
from pathlib import Path

from peers import run_dvdexit

from dvdexit_cli.samples import make_sample_dvd


def test_a_dvd_sent_to_orthanc_is_all_there_by_its_rest_api(
    tmp_path: Path, dvdexit_home: Path, orthanc: object
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=5, sc_images=2)
    pacs = orthanc()  # type: ignore[operator]
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

    done = run_dvdexit("send", media.root, "--to", "pacs", "--json", home=dvdexit_home)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["sent"] == media.instance_count
    assert set(pacs.instance_uids()) == set(media.path_by_sop_uid)


def test_orthanc_rejects_a_wrong_called_ae_and_send_exits_5_with_the_ae_hint(
    tmp_path: Path, dvdexit_home: Path, orthanc: object
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=2, sc_images=1)
    pacs = orthanc()  # type: ignore[operator]
    run_dvdexit(
        "peers",
        "add",
        "pacs",
        "--dimse",
        f"127.0.0.1:{pacs.dicom_port}",
        "--ae",
        "NOT_ORTHANC",
        home=dvdexit_home,
    )

    done = run_dvdexit("send", media.root, "--to", "pacs", "--retries", "0", home=dvdexit_home)

    assert done.returncode == 5
    assert "Called AE title not recognised" in done.stderr
    assert "NOT_ORTHANC" in done.stderr
    assert pacs.instance_uids() == {}
