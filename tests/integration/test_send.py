"""`dvdexit send` to real peers: what a hospital's IT staff see when they push a DVD's studies.

Each test runs the command a user would type (a subprocess of ``python -m dvdexit_cli``
with its own DVDEXIT_HOME) against DCMTK's ``storescp +B +xa``, which writes exactly the
bytes it received, so the dataset digest of what arrived can be compared with what the
sender journaled. Where a peer must misbehave on purpose (answer slowly), it is a
pynetdicom Storage SCP in this process, stopped at the end of the test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from peers import (
    LOOPBACK,
    RecordingListener,
    dvdexit_env,
    free_port,
    run_dvdexit,
    stop_process,
)
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt

from dvdexit_cli.dicom.digest import dataset_digest
from dvdexit_cli.journal import Journal
from dvdexit_cli.samples import SampleMedia, make_small_instances, write_study

# pydicom's own test files, one per transfer syntax, with distinct SOP Instance UIDs.
# rtplan.dcm (implicit VR LE) is not among them: its File Meta SOP Instance UID differs from
# the dataset's, which the scanner refuses; SC_rgb_jpeg_dcmd.dcm is implicit VR LE instead.
# image_dfl.dcm (deflated) has a story of its own: its deflated stream has an odd length.
DEFLATED = "1.2.840.10008.1.2.1.99"
SYNTAX_FILES = {
    "CT_small.dcm": "1.2.840.10008.1.2.1",  # explicit VR little endian
    "SC_rgb_jpeg_dcmd.dcm": "1.2.840.10008.1.2",  # implicit VR little endian
    "ExplVR_BigEnd.dcm": "1.2.840.10008.1.2.2",  # explicit VR big endian
    "693_J2KI.dcm": "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "examples_jpeg2k.dcm": "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "SC_rgb_jpeg_dcmtk.dcm": "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "MR_small_RLE.dcm": "1.2.840.10008.1.2.5",  # RLE lossless
}


# -- helpers -----------------------------------------------------------------------------


def add_peer(home: Path, name: str, port: int, ae: str) -> None:
    result = run_dvdexit(
        "peers", "add", name, "--dimse", f"{LOOPBACK}:{port}", "--ae", ae, home=home
    )
    assert result.returncode == 0, result.stderr


def send_json(home: Path, *paths: Path, to: str) -> tuple[int, Any]:
    """Run ``dvdexit send PATHS --to PEER --json``; return the exit code and the document."""
    result = run_dvdexit("send", *paths, "--to", to, "--json", home=home)
    try:
        document = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(
            f"send --json printed no single JSON document (exit {result.returncode}):\n"
            f"stdout: {result.stdout!r}\nstderr: {result.stderr}"
        )
    return result.returncode, document


def status_of(home: Path, transfer_id: int) -> dict[str, Any]:
    result = run_dvdexit("status", "--json", home=home)
    assert result.returncode == 0, result.stderr
    transfers = {t["transfer_id"]: t for t in json.loads(result.stdout)["transfers"]}
    assert transfer_id in transfers, f"transfer {transfer_id} not in status: {result.stdout}"
    return transfers[transfer_id]


def digests_by_uid(files: list[Path]) -> dict[str, str]:
    """SOP Instance UID -> dataset digest of each file, as the File Meta names it."""
    found: dict[str, str] = {}
    for path in files:
        meta, digest = dataset_digest(path)
        assert meta.sop_instance_uid not in found, f"{meta.sop_instance_uid} arrived twice"
        found[meta.sop_instance_uid] = digest
    return found


def journaled_digests(home: Path, transfer_id: int) -> dict[str, str]:
    """SOP Instance UID -> digest of every item the journal records as sent."""
    with Journal(home / "journal.sqlite") as journal:
        items = journal.items(transfer_id, states=("sent",))
    return {i.sop_instance_uid: i.digest for i in items if i.sop_instance_uid and i.digest}


def copy_testdata(names: list[str], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for name in names:
        source = get_testdata_file(name)
        assert source is not None, f"pydicom test file {name} missing"
        copies.append(Path(shutil.copy(source, folder / name)))
    return copies


def add_un_sequence(source: Path, target: Path) -> Path:
    """Copy ``source`` (explicit VR LE) with a private UN sequence of undefined length added."""
    data = source.read_bytes()
    patient_name = struct.pack("<HH", 0x0010, 0x0010) + b"PN"
    assert data.count(patient_name) == 1
    at = data.index(patient_name)
    creator = struct.pack("<HH", 0x0009, 0x0010) + b"LO" + struct.pack("<H", 8) + b"DVDEXIT "
    sequence = (
        struct.pack("<HH", 0x0009, 0x1010) + b"UN\x00\x00" + struct.pack("<I", 0xFFFFFFFF)
        + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
        + struct.pack("<HHI", 0x0008, 0x0104, 8) + b"DVDEXIT "  # implicit VR: no VR field
        + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
        + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    )  # fmt: skip
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data[:at] + creator + sequence + data[at:])
    return target


def wait_for_sent_items(
    journal: Path, sender: subprocess.Popen[bytes], *, at_least: int, stderr: Path
) -> None:
    """Poll the journal read-only until ``at_least`` items are sent."""
    deadline = time.monotonic() + 60  # a safety net against a hung test, not an assertion
    while time.monotonic() < deadline:
        if sender.poll() is not None:
            pytest.fail(f"the sender exited early ({sender.returncode}):\n{stderr.read_text()}")
        if journal.exists():
            try:
                with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as db:
                    (sent,) = db.execute(
                        "SELECT COUNT(*) FROM items WHERE state = 'sent'"
                    ).fetchone()
            except sqlite3.OperationalError:  # schema not created yet
                sent = 0
            if sent >= at_least:
                return
        time.sleep(0.02)
    pytest.fail(f"fewer than {at_least} items were sent within the safety net")


@pytest.fixture
def slow_scp() -> Iterator[Callable[..., tuple[int, list[str]]]]:
    """Factory: a pynetdicom CT Storage SCP that sleeps ``delay`` s before each answer.

    Returns its port and the list of SOP Instance UIDs it has answered with success.
    """
    servers: list[Any] = []

    def start(*, ae_title: str = "SLOWSCP", delay: float = 0.05) -> tuple[int, list[str]]:
        answered: list[str] = []

        def on_store(event: Any) -> int:
            time.sleep(delay)
            answered.append(str(event.request.AffectedSOPInstanceUID))
            return 0x0000

        ae = AE(ae_title=ae_title)
        ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        error: Exception | None = None
        for _ in range(3):
            port = free_port()
            try:
                server = ae.start_server(
                    (LOOPBACK, port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
                )
            except OSError as exc:  # lost the race for the port
                error = exc
                continue
            servers.append(server)
            return port, answered
        raise RuntimeError("the slow Storage SCP could not bind a port") from error

    yield start
    for server in servers:
        server.shutdown()


# -- the stories -------------------------------------------------------------------------


@pytest.mark.peer
def test_send_dvd_to_storescp_every_instance_arrives_with_the_senders_digest(
    storescp, dvdexit_home: Path, sample_dvd: SampleMedia, tmp_path: Path
):
    scp = storescp(tmp_path / "arrived")
    add_peer(dvdexit_home, "hospital-b", scp.port, scp.ae)

    code, result = send_json(dvdexit_home, sample_dvd.root, to="hospital-b")

    assert code == 0, result
    assert result["outcome"] == "complete"
    assert result["sent"] == sample_dvd.instance_count
    assert (result["failed"], result["pending"]) == (0, 0)
    assert result["failures"] == []
    assert len(scp.stored_files()) == sample_dvd.instance_count
    arrived = digests_by_uid(scp.stored_files())
    assert set(arrived) == set(sample_dvd.path_by_sop_uid)
    on_the_dvd = {uid: dataset_digest(path)[1] for uid, path in sample_dvd.path_by_sop_uid.items()}
    journaled = journaled_digests(dvdexit_home, result["transfer_id"])
    assert journaled == on_the_dvd
    assert arrived == on_the_dvd
    skipped = {Path(s["path"]).name: s["reason"] for s in result["skipped_files"]}
    assert set(skipped) == {"README.TXT", "AUTORUN.INF"}
    assert result["skipped"] == 2
    assert all(reason for reason in skipped.values())


@pytest.mark.peer
def test_send_files_in_every_common_transfer_syntax_arrive_bit_for_bit(
    storescp, dvdexit_home: Path, tmp_path: Path
):
    folder = tmp_path / "mixed-syntaxes"
    files = copy_testdata(sorted(SYNTAX_FILES), folder)
    files += write_study(
        folder / "deflated", n_instances=1, seed="deflated", transfer_syntax=DEFLATED
    )
    scp = storescp(tmp_path / "arrived")
    add_peer(dvdexit_home, "pacs", scp.port, scp.ae)

    code, result = send_json(dvdexit_home, *files, to="pacs")

    assert code == 0, result.get("failures", result)
    assert result["sent"] == len(files)
    assert result["warnings"] == [], "a file was re-encoded instead of sent as it is"
    sent = digests_by_uid(files)
    arrived = digests_by_uid(scp.stored_files())
    assert arrived == sent
    # Each one kept its own transfer syntax on the way.
    kept = {
        dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        for path in scp.stored_files()
    }
    assert kept == {*SYNTAX_FILES.values(), DEFLATED}
    assert journaled_digests(dvdexit_home, result["transfer_id"]) == sent


@pytest.mark.peer
def test_send_deflated_file_with_an_odd_length_stream_arrives_padded_as_ps3_5_requires(
    storescp, dvdexit_home: Path, tmp_path: Path
):
    # pydicom's image_dfl.dcm ends its deflated stream on an odd byte count. PS3.5 A.5 wants
    # a single trailing NULL byte then, and DCMTK aborts an association that carries an odd
    # fragment. Such files exist on real media: the sender has to pad, not give up.
    (odd,) = copy_testdata(["image_dfl.dcm"], tmp_path / "deflated")
    meta, _ = dataset_digest(odd)
    dataset = odd.read_bytes()[meta.dataset_offset :]
    assert len(dataset) % 2 == 1, "precondition: the deflated stream has an odd length"
    scp = storescp(tmp_path / "arrived")
    add_peer(dvdexit_home, "pacs", scp.port, scp.ae)

    code, result = send_json(dvdexit_home, odd, to="pacs")

    assert code == 0, result.get("failures", result)
    assert result["sent"] == 1
    (stored,) = scp.stored_files()
    stored_meta, _ = dataset_digest(stored)
    assert stored.read_bytes()[stored_meta.dataset_offset :] == dataset + b"\x00"
    with Journal(dvdexit_home / "journal.sqlite") as journal:
        (item,) = journal.items(result["transfer_id"])
    assert item.attempts == 1


@pytest.mark.peer
def test_send_instance_with_an_undefined_length_un_sequence_arrives_bit_for_bit(
    storescp, dvdexit_home: Path, tmp_path: Path
):
    # A private sequence that went through a toolkit without its dictionary comes back as
    # VR UN with undefined length; its items are then implicit VR (PS3.5 6.2.2, CP-246).
    # DCMTK and pydicom read such files; they are valid and must be sent as they are.
    (plain,) = write_study(tmp_path / "source", n_instances=1, seed="un-sequence")
    with_un = add_un_sequence(plain, tmp_path / "study" / "UN.dcm")
    element = dcmread(with_un)[0x00091010]
    assert (element.VR, element.value[0].CodeMeaning) == ("SQ", "DVDEXIT"), "precondition"
    scp = storescp(tmp_path / "arrived")
    add_peer(dvdexit_home, "pacs", scp.port, scp.ae)

    code, result = send_json(dvdexit_home, with_un, to="pacs")

    assert code == 0, result.get("failures", result)
    assert digests_by_uid(scp.stored_files()) == digests_by_uid([with_un])


def test_send_to_a_closed_port_exits_5_with_one_reason_and_keeps_every_item_retryable(
    dvdexit_home: Path, sample_dvd: SampleMedia
):
    closed = free_port()  # nothing listens there
    add_peer(dvdexit_home, "gone", closed, "NOBODY")

    result = run_dvdexit(
        "send", sample_dvd.root, "--to", "gone", "--retries", "0", "--quiet", home=dvdexit_home
    )

    assert result.returncode == 5, result.stderr
    error_lines = [
        line for line in result.stderr.splitlines() if line.startswith("dvdexit: error:")
    ]
    assert len(error_lines) == 1, result.stderr
    # The reason is the connection, in the operating system's words, not the AE titles.
    assert f"{LOOPBACK}:{closed}" in error_lines[0]
    assert "refused" in error_lines[0].lower()
    assert result.stderr.strip() == error_lines[0], "--quiet stderr holds only the reason"

    status = run_dvdexit("status", "--json", home=dvdexit_home)
    assert status.returncode == 0, status.stderr
    (transfer,) = json.loads(status.stdout)["transfers"]
    assert transfer["outcome"] == "unreachable"
    counts = transfer["counts"]
    # Not sent (the peer never saw them), which is not failed: the replay sends them.
    assert counts["pending"] == sample_dvd.instance_count
    assert counts["sent"] + counts["failed"] + counts["sending"] == 0
    with Journal(dvdexit_home / "journal.sqlite") as journal:
        not_sent = journal.items(transfer["transfer_id"], states=("pending",))
    assert {i.sop_instance_uid for i in not_sent} == set(sample_dvd.path_by_sop_uid)
    assert all("refused" in (i.reason or "") for i in not_sent)


@pytest.mark.peer
def test_send_of_a_folder_without_dicom_exits_4_and_journals_nothing_as_sent(
    dvdexit_home: Path, tmp_path: Path, storescp
):
    folder = tmp_path / "not-a-dvd"
    folder.mkdir()
    (folder / "notes.txt").write_text("referral letter, typed by hand\n", encoding="utf-8")
    scp = storescp(tmp_path / "arrived")
    add_peer(dvdexit_home, "pacs", scp.port, scp.ae)

    result = run_dvdexit("send", folder, "--to", "pacs", home=dvdexit_home)

    assert result.returncode == 4, result.stderr
    assert "dvdexit: error: no DICOM instance to send" in result.stderr
    assert str(folder) in result.stderr
    assert result.stdout == ""
    status = json.loads(run_dvdexit("status", "--json", home=dvdexit_home).stdout)
    assert status["transfers"] == []
    assert scp.stored_files() == []


@pytest.mark.peer
def test_send_of_a_folder_with_broken_files_sends_the_good_ones_and_exits_6(
    storescp, dvdexit_home: Path, tmp_path: Path
):
    folder = tmp_path / "mixed"
    good = write_study(folder, n_instances=4, seed="mixed-folder")
    # Cut the last one in the middle of its pixel data.
    cut = good.pop()
    data = cut.read_bytes()
    pixels = dcmread(cut).PixelData
    assert data.endswith(pixels), "precondition: Pixel Data is the file's last element"
    cut.write_bytes(data[: len(data) - len(pixels) // 2])
    (mr_truncated,) = copy_testdata(["MR_truncated.dcm"], folder)
    empty = folder / "EMPTY.dcm"
    empty.write_bytes(b"")
    scp = storescp(tmp_path / "arrived")
    add_peer(dvdexit_home, "pacs", scp.port, scp.ae)

    code, result = send_json(dvdexit_home, folder, to="pacs")

    assert code == 6, result
    assert result["outcome"] == "partial"
    assert digests_by_uid(scp.stored_files()) == digests_by_uid(good)
    assert result["sent"] == len(good)
    failures = {Path(f["path"]).name: f["reason"] for f in result["failures"]}
    assert set(failures) == {cut.name, mr_truncated.name}
    assert all("truncated" in reason for reason in failures.values()), failures
    assert result["failed"] == 2
    skipped = {Path(s["path"]).name: s["reason"] for s in result["skipped_files"]}
    assert set(skipped) == {empty.name}
    assert "empty" in skipped[empty.name]


def test_journal_survives_kill_9_mid_send_and_status_shows_what_is_left(
    slow_scp, dvdexit_home: Path, tmp_path: Path
):
    files = make_small_instances(tmp_path / "study", 300, seed="kill-9")
    port, answered = slow_scp(ae_title="SLOWSCP", delay=0.05)
    add_peer(dvdexit_home, "slow", port, "SLOWSCP")
    journal_file = dvdexit_home / "journal.sqlite"
    stderr_file = tmp_path / "sender.stderr"

    with stderr_file.open("wb") as stderr:
        sender = subprocess.Popen(
            [sys.executable, "-m", "dvdexit_cli", "send", str(tmp_path / "study"), "--to", "slow"],
            env=dvdexit_env(dvdexit_home),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        wait_for_sent_items(journal_file, sender, at_least=5, stderr=stderr_file)
        os.kill(sender.pid, signal.SIGKILL)
        assert sender.wait(timeout=30) == -signal.SIGKILL
    finally:
        stop_process(sender)

    transfer = status_of(dvdexit_home, 1)
    counts = transfer["counts"]
    assert transfer["outcome"] == "running"
    assert transfer["finished_at"] is None
    assert counts["sent"] >= 5
    assert counts["pending"] + counts["sending"] > 0
    assert counts["sent"] + counts["pending"] + counts["sending"] + counts["failed"] == len(files)
    # An item the journal calls sent is one the peer confirmed.
    with Journal(journal_file) as journal:
        sent = {i.sop_instance_uid for i in journal.items(1, states=("sent",))}
    assert sent <= set(answered)


@pytest.mark.peer
def test_send_of_two_thousand_small_instances_loses_none(
    storescp, dvdexit_home: Path, tmp_path: Path
):
    files = make_small_instances(tmp_path / "small", 2000, seed="many-small")
    scp = storescp(tmp_path / "arrived")
    add_peer(dvdexit_home, "pacs", scp.port, scp.ae)

    code, result = send_json(dvdexit_home, tmp_path / "small", to="pacs")

    assert code == 0, result.get("failures", result)
    assert result["sent"] == 2000
    assert (result["failed"], result["pending"]) == (0, 0)
    assert len(scp.stored_files()) == 2000
    assert digests_by_uid(scp.stored_files()) == digests_by_uid(files)
    # Nothing was resent: no C-STORE response went missing on the way.
    with Journal(dvdexit_home / "journal.sqlite") as journal:
        attempts = {i.attempts for i in journal.items(result["transfer_id"])}
    assert attempts == {1}


def test_a_send_to_a_port_that_never_answers_the_association_leaves_no_empty_connection(
    dvdexit_home: Path, sample_dvd: SampleMedia
):
    # Finding out why an association failed used to take a second, bare TCP connection.
    listener = RecordingListener(reject=False)
    try:
        add_peer(dvdexit_home, "mute", listener.port, "MUTE")

        result = run_dvdexit(
            "send", sample_dvd.root, "--to", "mute", "--retries", "0", "--quiet", home=dvdexit_home
        )
    finally:
        listener.close()

    assert result.returncode == 5, result.stderr
    assert "no DICOM association" in result.stderr
    assert listener.received
    assert all(data[:1] == b"\x01" for data in listener.received), listener.received
