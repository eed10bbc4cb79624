"""Pulls are audited too: one record per study pulled from Orthanc, the peer as source."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from peers import LOOPBACK, free_port, run_dvdexit

from dvdexit_cli.samples import DEFAULT_PATIENT_ID, make_sample_dvd, sample_uid


def test_send_and_pull_from_orthanc_leave_one_audit_record_per_study(
    tmp_path: Path, dvdexit_home: Path, orthanc: Any
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", seed="audit-pull", ct_slices=2, sc_images=1)
    pacs = orthanc(modalities={"DVDEXIT": ("DVDEXIT", LOOPBACK, free_port())})
    added = run_dvdexit(
        "peers", "add", "pacs", "--dimse", f"{LOOPBACK}:{pacs.dicom_port}", "--ae", pacs.aet,
        home=dvdexit_home,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    sent = run_dvdexit("send", media.root, "--to", "pacs", home=dvdexit_home)
    assert sent.returncode == 0, sent.stderr
    absent = str(sample_uid("audit-pull", "no such study"))
    ct = media.study_uids[0]

    pulled = run_dvdexit(
        "receive", "--from", "pacs", "--study", ct, "--study", absent,
        "--store", tmp_path / "store", home=dvdexit_home,
    )  # fmt: skip

    assert pulled.returncode == 7, pulled.stderr  # the absent study
    records = [json.loads(x) for x in (dvdexit_home / "audit.jsonl").read_text().splitlines()]
    sends = [r for r in records if r["type"] == "send"]
    assert sorted(r["study"]["uid"] for r in sends) == sorted(media.study_uids)
    assert all(r["destination"]["ae_title"] == pacs.aet for r in sends)
    pulls = {r["study"]["uid"]: r for r in records if r["type"] == "pull"}
    assert set(pulls) == {ct, absent}
    assert pulls[ct]["outcome"] == 0 and pulls[ct]["action"] == "C"
    assert pulls[ct]["study"]["instances"] == 2
    assert pulls[ct]["source"]["ae_title"] == pacs.aet
    assert pulls[ct]["source"]["role"] == "source"
    assert pulls[ct]["destination"]["requestor"] is True
    assert (pulls[absent]["outcome"], pulls[absent]["outcome_text"]) == (8, "serious failure")
    assert DEFAULT_PATIENT_ID not in (dvdexit_home / "audit.jsonl").read_text()
