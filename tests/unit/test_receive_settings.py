"""Receiver settings, the [receive] table, reconciliation mappings, completeness bookkeeping."""

from __future__ import annotations

import io
import ipaddress
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

from dvdexit_cli.config import DimsePeer, PeerBook
from dvdexit_cli.errors import ConfigError, UsageError
from dvdexit_cli.journal import Journal
from dvdexit_cli.receive.completeness import CompletenessTracker
from dvdexit_cli.receive.reconcile import load_mapping, reconcile_dataset
from dvdexit_cli.receive.settings import (
    load_receive_table,
    parse_commit_reply,
    parse_networks,
    parse_size,
)
from dvdexit_cli.receive.store import (
    IMPLEMENTATION_VERSION,
    InstanceStore,
    file_meta_bytes,
    validate_layout,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2G", 2 * 1024**3), ("500M", 500 * 1024**2), ("1.5k", 1536), ("1048576", 1048576), (7, 7)],
)
def test_sizes_accept_units(text: str | int, expected: int) -> None:
    assert parse_size(text, what="--min-free") == expected


@pytest.mark.parametrize("bad", ["lots", "-1G", "1X", ""])
def test_a_size_that_is_not_one_is_a_usage_error_naming_the_option(bad: str) -> None:
    with pytest.raises(UsageError, match="--min-free"):
        parse_size(bad, what="--min-free")


def test_networks_and_single_addresses_parse_and_bad_ones_are_named() -> None:
    nets = parse_networks(["10.0.0.0/8", "192.0.2.7", "::1"])
    assert ipaddress.ip_address("10.1.2.3") in nets[0]
    assert nets[1].num_addresses == 1
    with pytest.raises(UsageError, match=r"10\.0\.0\.300"):
        parse_networks(["10.0.0.300/8"])


def test_commit_reply_entries_parse_and_bad_ones_are_usage_errors() -> None:
    assert parse_commit_reply(["HOSP_A=gw.example:11112"]) == {"HOSP_A": ("gw.example", 11112)}
    for bad in ["HOSP_A", "HOSP_A=gw.example", "THIS_AE_TITLE_IS_TOO_LONG=h:1"]:
        with pytest.raises(UsageError, match="--commit-reply"):
            parse_commit_reply([bad])


def test_the_example_receiver_config_is_valid(tmp_path: Path) -> None:
    table = load_receive_table(EXAMPLES / "receiver-peers.toml")
    assert table["allow_ae"] == ["HOSP_A_GW", "HOSP_B_GW"]
    assert parse_size(str(table["min_free"]), what="min-free") == 20 * 1024**3
    assert parse_networks(table["allow_from"])  # type: ignore[arg-type]
    assert parse_commit_reply(table["commit_reply"])  # type: ignore[arg-type]
    assert isinstance(PeerBook(EXAMPLES / "receiver-peers.toml").get("pacs"), DimsePeer)


def test_an_unknown_key_in_the_receive_table_is_a_config_error(tmp_path: Path) -> None:
    peers = tmp_path / "peers.toml"
    peers.write_text('[receive]\nport = 104\nallow_aes = ["X"]\n')
    with pytest.raises(ConfigError, match="allow_aes"):
        load_receive_table(peers)
    assert load_receive_table(tmp_path / "absent.toml") == {}


def test_adding_a_peer_keeps_the_receive_table(tmp_path: Path) -> None:
    peers = tmp_path / "peers.toml"
    peers.write_text('[receive]\nport = 104\nallow-ae = ["HOSP_A"]\n')
    PeerBook(peers).add(DimsePeer(name="pacs", host="127.0.0.1", port=104, called_ae="PACS"))
    assert load_receive_table(peers) == {"port": 104, "allow_ae": ["HOSP_A"]}


def test_mapping_from_csv_prefers_the_issuer_specific_row(tmp_path: Path) -> None:
    csv = tmp_path / "map.csv"
    csv.write_text(
        "sender_id,sender_issuer,local_id,local_issuer\n123,HOSP_A,L-1,OURS\n123,,L-2,OURS\n"
    )
    mapping = load_mapping(csv)
    assert mapping.lookup("123", "HOSP_A").patient_id == "L-1"  # type: ignore[union-attr]
    assert mapping.lookup("123", "HOSP_B").patient_id == "L-2"  # type: ignore[union-attr]
    assert mapping.lookup("999", "HOSP_A") is None


def test_mapping_from_toml(tmp_path: Path) -> None:
    toml = tmp_path / "map.toml"
    toml.write_text('[[patient]]\nsender_id = "123"\nlocal_id = "L-1"\nlocal_issuer = "OURS"\n')
    assert load_mapping(toml).lookup("123", "ANY").issuer == "OURS"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("id,local\n1,2\n", "header"),
        ("sender_id,sender_issuer,local_id,local_issuer\n1,,,\n", "entry 1"),
        ("sender_id,sender_issuer,local_id,local_issuer\n1,,2,\n1,,3,\n", "twice"),
    ],
)
def test_a_bad_mapping_is_a_config_error_naming_the_problem(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "map.csv"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_mapping(path)


def test_reconciliation_keeps_the_original_id_and_issuer() -> None:
    ds = Dataset()
    ds.PatientID = "123"
    ds.IssuerOfPatientID = "HOSP_A"
    ds.SOPInstanceUID = "1.2.3"
    mapping_row = type("L", (), {"patient_id": "L-1", "issuer": "OURS"})()
    reconcile_dataset(ds, mapping_row)  # type: ignore[arg-type]
    assert (ds.PatientID, ds.IssuerOfPatientID, ds.SOPInstanceUID) == ("L-1", "OURS", "1.2.3")
    assert ds.OtherPatientIDsSequence[0].PatientID == "123"
    assert ds.OtherPatientIDsSequence[0].IssuerOfPatientID == "HOSP_A"
    modified = ds.OriginalAttributesSequence[0].ModifiedAttributesSequence[0]
    assert (modified.PatientID, modified.IssuerOfPatientID) == ("123", "HOSP_A")


def _receive(journal: Journal, study: str, sop: str) -> None:
    journal.record_received(
        calling_ae="HOSP_A",
        peer_address="127.0.0.1:1",
        sop_class_uid="1.2",
        sop_instance_uid=sop,
        study_uid=study,
        series_uid="1.3",
        transfer_syntax="1.2.840.10008.1.2.1",
        size=1,
        digest="d",
        path="/x",
        outcome="stored",
        status=0,
        reason=None,
    )
    journal.note_study_activity(
        study_uid=study, calling_ae="HOSP_A", peer_address="127.0.0.1:1", folder="/x", new=True
    )


def test_idle_studies_complete_once_and_committed_ones_wait_for_commitment(tmp_path: Path) -> None:
    completed: list[str] = []
    with Journal(tmp_path / "j.sqlite") as journal:
        tracker = CompletenessTracker(
            journal=journal,
            idle_timeout=60,
            observer=lambda e: completed.append(e.study_uid),  # type: ignore[union-attr]
        )
        _receive(journal, "1.1", "1.1.1")
        _receive(journal, "2.2", "2.2.1")
        journal.mark_commit_requested(["2.2"])
        tracker.check_idle(datetime.now(UTC))
        assert completed == [], "not idle yet"
        later = datetime.now(UTC) + timedelta(seconds=61)
        tracker.check_idle(later)
        tracker.check_idle(later)
        assert completed == ["1.1"]
        study = journal.study("1.1")
        assert study is not None and (study.instances, study.completed_by) == (1, "idle")
        # A new instance re-opens it; it completes again.
        _receive(journal, "1.1", "1.1.2")
        assert journal.study("1.1").state == "receiving"  # type: ignore[union-attr]
        tracker.check_idle(later + timedelta(seconds=61))
        assert completed == ["1.1", "1.1"]
        assert journal.study("1.1").instances == 2  # type: ignore[union-attr]


def test_a_forward_queued_when_the_receiver_stopped_is_found_again(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite") as journal:
        _receive(journal, "1.1", "1.1.1")
        forward_id = journal.start_forward("1.1", peer="pacs")
        ((found_id, study),) = journal.pending_forwards("pacs")
        assert (found_id, study.study_uid) == (forward_id, "1.1")
        assert journal.pending_forwards("other") == []
        journal.finish_forward(forward_id, outcome="held", transfer_id=None, reason="no mapping")
        assert journal.pending_forwards("pacs") == []
        assert [f["outcome"] for f in journal.forwards("1.1")] == ["held"]


CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


@pytest.mark.parametrize("calling_ae", ["HOSP_A", "ODD", ""])
def test_the_hand_encoded_file_meta_is_what_pydicom_reads_and_writes(
    tmp_path: Path, calling_ae: str
) -> None:

    raw = file_meta_bytes(
        "1.2.840.10008.5.1.4.1.1.2", "1.2.3.45", "1.2.840.10008.1.2.1", calling_ae
    )
    fh = io.BytesIO(raw)
    read_preamble(fh, False)
    meta = _read_file_meta_info(fh)
    assert meta.MediaStorageSOPInstanceUID == "1.2.3.45"
    assert meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert meta.get("SourceApplicationEntityTitle", "") == calling_ae
    assert fh.tell() == len(raw), "the group length covers exactly the meta"

    expected = FileMetaDataset()
    expected.MediaStorageSOPClassUID = UID(CT_IMAGE)
    expected.MediaStorageSOPInstanceUID = UID("1.2.3.45")
    expected.TransferSyntaxUID = UID("1.2.840.10008.1.2.1")
    expected.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    expected.ImplementationVersionName = IMPLEMENTATION_VERSION
    if calling_ae:
        expected.SourceApplicationEntityTitle = calling_ae
    out = io.BytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, expected, enforce_standard=True)
    assert raw == out.getvalue(), "byte for byte what pydicom writes"


@pytest.mark.parametrize(
    "layout",
    ["{study}/{series}/{sop}.dcm", "{received_date}/{study_date}/{study}/{sop}.dcm", "{sop}"],
)
def test_layouts_of_uid_and_date_fields_are_accepted(layout: str) -> None:
    assert validate_layout(layout) == layout


@pytest.mark.parametrize(
    ("layout", "why"),
    [
        ("{PatientName}/{sop}.dcm", "not allowed"),
        ("{study}/{series}.dcm", "{sop}"),
        ("../{study}/{sop}.dcm", "'..'"),
        ("/abs/{sop}.dcm", "relative"),
        ("{study}//{sop}.dcm", "empty"),
        ("{study!r}/{sop}.dcm", "not allowed"),
        ("{study:>70}/{sop}.dcm", "not allowed"),
        ("a b/{sop}.dcm", "literal"),
        (".hidden/{sop}.dcm", "first folder"),
        ("{study/{sop}.dcm", "malformed"),
    ],
)
def test_layouts_with_free_text_or_escapes_are_refused(layout: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        validate_layout(layout)


def test_a_layout_places_files_by_uid_and_date_and_finds_the_study_folder(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path, layout="{received_date}/{study_date}/{study}/{sop}.dcm")
    path = store.path_for("1.2", "1.3", "1.4", study_date="20240131", received_date="20261125")
    assert path == tmp_path / "20261125" / "20240131" / "1.2" / "1.4.dcm"
    assert store.study_folder(path, "1.2") == tmp_path / "20261125" / "20240131" / "1.2"
    odd = store.path_for("1.2", "1.3", "1.5", study_date="2024-01-31", received_date="20261125")
    assert odd.parent.parent.name == "nodate"


def test_a_version_3_journal_keeps_its_forwards_and_learns_pending(tmp_path: Path) -> None:
    import sqlite3

    from dvdexit_cli.journal.store import _MIGRATIONS

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    for migration in _MIGRATIONS[:3]:
        for statement in migration.split(";"):
            if statement.strip():
                db.execute(statement)
    db.execute(
        "INSERT INTO forwards (study_uid, peer, at, outcome) VALUES ('1.1', 'pacs', 'x', 'held')"
    )
    db.execute("PRAGMA user_version = 3")
    db.commit()
    db.close()
    with Journal(path) as journal:
        assert [f["outcome"] for f in journal.forwards("1.1")] == ["held"]
        journal.start_forward("1.1", peer="pacs")
        assert [f["outcome"] for f in journal.forwards("1.1")] == ["held", "pending"]
