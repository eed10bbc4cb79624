"""``dvdexit receive`` as a hospital runs it: real DCMTK senders push studies over loopback.

What the receiver stores is compared with what DCMTK's own ``storescp +B`` (bit-preserving)
stores from the same push, never with the source file: DCMTK re-encodes what it sends.
Hostile and misbehaving senders are DCMTK tools too (``dcmsend --no-uid-checks`` sends
UIDs it would otherwise refuse); dcmsend's report file (``--create-report-file``) gives the
DIMSE status each instance got, since dcmsend's exit code ignores failed stores.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from peers import LOOPBACK, dcmtk_env, require_tool, run_dcmsend, run_dvdexit
from pydicom.data import get_testdata_file
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)

from dvdexit_cli.dicom.digest import dataset_digest, read_file_meta
from dvdexit_cli.samples import make_small_instances, sample_uid, write_study

pytestmark = pytest.mark.peer

#: pydicom's bundled files with distinct SOP Instance UIDs, one per transfer syntax.
SYNTAX_SAMPLES = {
    "CT_small.dcm": ExplicitVRLittleEndian,
    "ExplVR_BigEnd.dcm": ExplicitVRBigEndian,
    "693_J2KI.dcm": JPEG2000,
    "SC_rgb_jpeg_dcmtk.dcm": JPEGBaseline8Bit,
    "image_dfl.dcm": DeflatedExplicitVRLittleEndian,
    "rtplan.dcm": ImplicitVRLittleEndian,
    "MR_small_RLE.dcm": RLELossless,
}
COMPRESSED = {JPEG2000, JPEGBaseline8Bit, DeflatedExplicitVRLittleEndian, RLELossless}

SUCCESS = 0x0000
CONFLICT = 0xC001  # documented in dvdexit_cli/receive/scp.py

# dcmsend proposes every uncompressed file as (explicit LE, explicit BE, implicit LE), and
# both storescp and dvdexit pick explicit LE: big endian and implicit VR never reach the
# wire that way. A storescu profile that proposes each file's own syntax alone does.
OWN_SYNTAX_PROFILE = """\
[[TransferSyntaxes]]
[BigEndianOnly]
TransferSyntax1 = BigEndianExplicit
[ImplicitOnly]
TransferSyntax1 = LittleEndianImplicit
[[PresentationContexts]]
[OwnSyntax]
PresentationContext1 = UltrasoundImageStorage\\BigEndianOnly
PresentationContext2 = RTPlanStorage\\ImplicitOnly
[[Profiles]]
[OwnSyntax]
PresentationContexts = OwnSyntax
"""


# -- helpers --------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax: str


def header(path: Path) -> Header:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return Header(
        str(ds.SOPInstanceUID),
        str(ds.StudyInstanceUID),
        str(ds.SeriesInstanceUID),
        str(ds.file_meta.TransferSyntaxUID),
    )


def bundled(name: str) -> Path:
    path = get_testdata_file(name)
    assert path, f"pydicom test file {name} is missing"
    return Path(path)


def store_path(store: Path, h: Header) -> Path:
    return store / h.study_uid / h.series_uid / f"{h.sop_instance_uid}.dcm"


def stored_files(store: Path) -> list[Path]:
    """Every regular file under the store, temporary files and conflicts included."""
    return sorted(p for p in store.rglob("*") if p.is_file())


def by_sop_uid(files: Iterable[Path]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in files:
        with path.open("rb") as fh:
            found[read_file_meta(fh).sop_instance_uid] = path
    return found


def dcmsend_report(report: Path) -> dict[str, dict[str, str]]:
    """dcmsend's report file, per input file name: SOP Instance, DIMSE Status, Association..."""
    entries: dict[str, dict[str, str]] = {}
    for block in re.split(r"\n(?=Number\s+:)", report.read_text(errors="replace")):
        fields = dict(
            (key.strip(), value.strip())
            for key, sep, value in (line.partition(" : ") for line in block.splitlines())
            if sep
        )
        if "Filename" in fields:
            entries[fields["Filename"]] = fields
    return entries


def dimse_status(entry: dict[str, str]) -> int:
    # "0xc001 (Error: CannotUnderstand)"
    return int(entry["DIMSE Status"].split()[0], 16)


def is_failure(status: int) -> bool:
    """A C-STORE failure (PS3.4 B.2.3, PS3.7 C): not success, and not a Bxxx warning."""
    return status >> 12 in (0xA, 0xC) or status in {0x0117, 0x0122, 0x0124, 0x0210, 0x0211, 0x0212}


def status_json(home: Path) -> dict[str, object]:
    result = run_dvdexit("status", "--json", home=home)
    assert result.returncode == 0, result.stderr
    document: dict[str, object] = json.loads(result.stdout)
    return document


def received_rows(home: Path) -> list[dict[str, object]]:
    rows = status_json(home)["received"]
    assert isinstance(rows, list)
    return rows


def received_totals(home: Path) -> dict[str, int]:
    totals = dict.fromkeys(("stored", "duplicate", "conflict", "refused"), 0)
    for row in received_rows(home):
        for key in totals:
            totals[key] += int(row[key])
    return totals


def all_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if not p.is_dir()}


def outside(paths: Iterable[Path], allowed: Sequence[Path]) -> list[Path]:
    return sorted(p for p in paths if not any(p.is_relative_to(a) for a in allowed))


def run_storescu(
    files: Sequence[Path], port: int, *, called_ae: str, extra: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    exe = require_tool("storescu")
    return subprocess.run(
        [exe, "-aec", called_ae, *extra, LOOPBACK, str(port), *map(str, files)],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def run_echoscu(port: int, *, called_ae: str) -> subprocess.CompletedProcess[str]:
    exe = require_tool("echoscu")
    return subprocess.run(
        [exe, "-v", "-aec", called_ae, LOOPBACK, str(port)],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def with_uids(source: Path, target: Path, **uids: str) -> Path:
    """Copy ``source`` to ``target`` with some UIDs replaced, valid or not."""
    ds = pydicom.dcmread(source)
    with warnings.catch_warnings():
        # pydicom warns about invalid UIDs; writing them is the point.
        warnings.simplefilter("ignore", UserWarning)
        for keyword, value in uids.items():
            setattr(ds, keyword, value)
            if keyword == "SOPInstanceUID":
                ds.file_meta.MediaStorageSOPInstanceUID = value
        ds.save_as(target, enforce_file_format=True)
    return target


def conflicting_pair(folder: Path, *, seed: str) -> tuple[Path, Path]:
    """One synthetic instance, and another file with its SOP Instance UID but other content."""
    first = write_study(folder / "study", n_instances=1, seed=seed)[0]
    other = pydicom.dcmread(first)
    other.PatientComments = "same SOP Instance UID, other content"
    other_path = folder / "other.dcm"
    other.save_as(other_path, enforce_file_format=True)
    return first, other_path


# -- a push in every transfer syntax --------------------------------------------------


def test_dcmsend_push_of_seven_syntaxes_is_stored_byte_for_byte_like_storescp(
    tmp_path, storescp, dvdexit_receiver, dvdexit_home
):
    sources = [bundled(name) for name in SYNTAX_SAMPLES]
    headers = {path.name: header(path) for path in sources}
    assert {n: h.transfer_syntax for n, h in headers.items()} == SYNTAX_SAMPLES
    assert len({h.sop_instance_uid for h in headers.values()}) == len(sources)

    reference = storescp(tmp_path / "storescp")
    receiver = dvdexit_receiver(tmp_path / "STORE")
    for port, ae, report in (
        (reference.port, reference.ae, tmp_path / "storescp.report"),
        (receiver.port, receiver.ae, tmp_path / "dvdexit.report"),
    ):
        sent = run_dcmsend(sources, port, called_ae=ae, extra=["--create-report-file", str(report)])
        assert sent.returncode == 0, sent.stderr
        statuses = {name: dimse_status(e) for name, e in dcmsend_report(report).items()}
        assert statuses == {str(p): SUCCESS for p in sources}, f"answers of {ae}"

    theirs = by_sop_uid(reference.stored_files())
    for name, h in headers.items():
        ours = store_path(receiver.store, h)
        assert ours.is_file(), f"{name} not stored at STORE/study/series/sop.dcm"
        our_meta, our_digest = dataset_digest(ours)
        their_meta, their_digest = dataset_digest(theirs[h.sop_instance_uid])
        assert our_meta.transfer_syntax == their_meta.transfer_syntax, name
        if h.transfer_syntax in COMPRESSED:  # --decompress-never keeps compressed syntaxes
            assert our_meta.transfer_syntax == h.transfer_syntax, name
        assert our_digest == their_digest, f"{name}: dataset bytes differ from storescp's"
    assert len(stored_files(receiver.store)) == len(sources)

    rows = received_rows(dvdexit_home)
    assert {r["study_uid"] for r in rows} == {h.study_uid for h in headers.values()}
    assert sum(int(r["stored"]) for r in rows) == len(sources)
    assert {r["calling_ae"] for r in rows} == {"DCMSEND"}

    verified = run_dvdexit("verify", "--json", receiver.store, home=dvdexit_home)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert json.loads(verified.stdout)["identical"] == len(sources)


def test_big_endian_and_implicit_proposed_alone_are_stored_byte_for_byte_like_storescp(
    tmp_path, storescp, dvdexit_receiver, dvdexit_home
):
    sources = [bundled("ExplVR_BigEnd.dcm"), bundled("rtplan.dcm")]
    profile = tmp_path / "own-syntax.cfg"
    profile.write_text(OWN_SYNTAX_PROFILE)
    reference = storescp(tmp_path / "storescp")
    receiver = dvdexit_receiver(tmp_path / "STORE")
    for port, ae in ((reference.port, reference.ae), (receiver.port, receiver.ae)):
        sent = run_storescu(sources, port, called_ae=ae, extra=["-xf", str(profile), "OwnSyntax"])
        assert sent.returncode == 0, sent.stdout + sent.stderr

    theirs = by_sop_uid(reference.stored_files())
    for source in sources:
        h = header(source)
        our_meta, our_digest = dataset_digest(store_path(receiver.store, h))
        their_meta, their_digest = dataset_digest(theirs[h.sop_instance_uid])
        assert our_meta.transfer_syntax == their_meta.transfer_syntax == h.transfer_syntax
        assert our_digest == their_digest, f"{source.name}: dataset bytes differ from storescp's"

    verified = run_dvdexit("verify", receiver.store, home=dvdexit_home)
    assert verified.returncode == 0, verified.stdout + verified.stderr


# -- hostile UIDs ---------------------------------------------------------------------


def test_invalid_sop_instance_uids_are_refused_and_their_neighbours_stored(
    tmp_path, tmp_path_factory, dvdexit_receiver, dvdexit_home
):
    good = write_study(tmp_path / "good", n_instances=2, seed="hostile-sop-neighbours")
    hostile_dir = tmp_path / "hostile"
    hostile_dir.mkdir()
    # Joined naively below STORE/<study>/<series>/, the first lands in tmp_path itself.
    escaping = "1.2/../../../../escaped-sop"
    hostile = [
        with_uids(good[0], hostile_dir / "traversal.dcm", SOPInstanceUID=escaping),
        with_uids(good[0], hostile_dir / "letters.dcm", SOPInstanceUID="1.2.840.abc.4"),
        with_uids(good[0], hostile_dir / "too-long.dcm", SOPInstanceUID="1." + "2" * 70),
    ]
    # pynetdicom spools each incoming dataset to a temporary file: keep those in view too.
    spool = tmp_path / "receiver-tmp"
    spool.mkdir()
    receiver = dvdexit_receiver(tmp_path / "STORE", env={"TMPDIR": str(spool)})
    base = tmp_path_factory.getbasetemp()
    before = all_files(base)

    report = tmp_path / "dcmsend.report"
    # -nuc: send UIDs dcmsend would refuse; -nh: go on after a refused store.
    sent = run_dcmsend(
        [good[0], *hostile, good[1]],
        receiver.port,
        called_ae=receiver.ae,
        extra=["--no-uid-checks", "--no-halt", "--create-report-file", str(report)],
    )
    assert sent.returncode == 0, sent.stderr  # dcmsend's exit code ignores DIMSE statuses
    answers = dcmsend_report(report)
    assert {e["Association"] for e in answers.values()} == {"1"}, "not one association"
    for path in good:
        assert dimse_status(answers[str(path)]) == SUCCESS, path.name
    for path in hostile:
        assert is_failure(dimse_status(answers[str(path)])), f"{path.name} not refused"

    assert receiver.stop() == 0, receiver.stderr
    expected = {store_path(receiver.store, header(p)) for p in good}
    assert set(stored_files(receiver.store)) == expected
    new = all_files(base) - before
    assert outside(new, [receiver.store, dvdexit_home, report]) == []
    assert not (tmp_path / "escaped-sop.dcm").exists()
    assert list(spool.iterdir()) == [], "temporary files left behind"
    totals = received_totals(dvdexit_home)
    assert (totals["stored"], totals["refused"]) == (2, len(hostile))


def test_hostile_study_or_series_uid_is_refused_and_nothing_escapes_the_store(
    tmp_path, tmp_path_factory, dvdexit_receiver, dvdexit_home
):
    good = write_study(tmp_path / "good", n_instances=1, seed="hostile-study-neighbour")[0]
    hostile_dir = tmp_path / "hostile"
    hostile_dir.mkdir()
    # Naive joins: STORE/../escaped-study/... is tmp_path/escaped-study; an absolute
    # series UID replaces everything before it.
    hostile = [
        with_uids(
            good,
            hostile_dir / "study.dcm",
            SOPInstanceUID=sample_uid("hostile", "study"),
            StudyInstanceUID="../escaped-study",
        ),
        with_uids(
            good,
            hostile_dir / "series.dcm",
            SOPInstanceUID=sample_uid("hostile", "series"),
            SeriesInstanceUID=str(tmp_path / "escaped-series"),
        ),
    ]
    receiver = dvdexit_receiver(tmp_path / "STORE")
    base = tmp_path_factory.getbasetemp()
    before = all_files(base)

    report = tmp_path / "dcmsend.report"
    sent = run_dcmsend(
        [*hostile, good],
        receiver.port,
        called_ae=receiver.ae,
        extra=["--no-uid-checks", "--no-halt", "--create-report-file", str(report)],
    )
    assert sent.returncode == 0, sent.stderr
    answers = dcmsend_report(report)
    for path in hostile:
        assert is_failure(dimse_status(answers[str(path)])), f"{path.name} not refused"
    assert dimse_status(answers[str(good)]) == SUCCESS

    assert receiver.stop() == 0, receiver.stderr
    assert stored_files(receiver.store) == [store_path(receiver.store, header(good))]
    assert outside(all_files(base) - before, [receiver.store, dvdexit_home, report]) == []
    assert not (tmp_path / "escaped-study").exists()
    assert not (tmp_path / "escaped-series").exists()
    assert received_totals(dvdexit_home)["refused"] == len(hostile)


# -- duplicates and conflicts ---------------------------------------------------------


def test_identical_resend_is_stored_once_and_counted_as_duplicate(
    tmp_path, dvdexit_receiver, dvdexit_home
):
    source = write_study(tmp_path / "study", n_instances=1, seed="resent-twice")[0]
    receiver = dvdexit_receiver(tmp_path / "STORE")
    for attempt in ("first", "second"):
        report = tmp_path / f"{attempt}.report"
        sent = run_dcmsend(
            [source],
            receiver.port,
            called_ae=receiver.ae,
            extra=["--create-report-file", str(report)],
        )
        assert sent.returncode == 0, sent.stderr
        assert dimse_status(dcmsend_report(report)[str(source)]) == SUCCESS, attempt

    assert stored_files(receiver.store) == [store_path(receiver.store, header(source))]
    (row,) = received_rows(dvdexit_home)
    assert row["study_uid"] == header(source).study_uid
    assert (row["stored"], row["duplicate"], row["conflict"]) == (1, 1, 0)


def test_same_uid_with_other_content_is_kept_aside_as_conflict_and_refused(
    tmp_path, dvdexit_receiver, dvdexit_home
):
    first, other_path = conflicting_pair(tmp_path, seed="conflicting")
    receiver = dvdexit_receiver(tmp_path / "STORE")

    sent = run_dcmsend([first], receiver.port, called_ae=receiver.ae)
    assert sent.returncode == 0, sent.stderr
    kept = store_path(receiver.store, header(first))
    original_bytes = kept.read_bytes()

    report = tmp_path / "conflict.report"
    sent = run_dcmsend(
        [other_path],
        receiver.port,
        called_ae=receiver.ae,
        extra=["--create-report-file", str(report)],
    )
    assert sent.returncode == 0, sent.stderr  # dcmsend exits 0 whatever the status
    assert dimse_status(dcmsend_report(report)[str(other_path)]) == CONFLICT

    assert kept.read_bytes() == original_bytes
    conflicts = stored_files(receiver.store / "conflicts")
    assert len(conflicts) == 1
    aside = pydicom.dcmread(conflicts[0])
    assert aside.SOPInstanceUID == header(first).sop_instance_uid
    assert aside.PatientComments == "same SOP Instance UID, other content"
    assert set(stored_files(receiver.store)) == {kept, conflicts[0]}
    (row,) = received_rows(dvdexit_home)
    assert (row["stored"], row["duplicate"], row["conflict"]) == (1, 0, 1)


def test_verify_after_a_conflict_still_vouches_for_the_first_instance(
    tmp_path, dvdexit_receiver, dvdexit_home
):
    first, other_path = conflicting_pair(tmp_path, seed="verify-conflict")
    receiver = dvdexit_receiver(tmp_path / "STORE")
    for path in (first, other_path):
        assert run_dcmsend([path], receiver.port, called_ae=receiver.ae).returncode == 0
    kept = store_path(receiver.store, header(first))
    (aside,) = stored_files(receiver.store / "conflicts")

    verified = run_dvdexit("verify", "--json", receiver.store, home=dvdexit_home)
    document = json.loads(verified.stdout)
    problems = {Path(p["path"]): p for p in document["problems"]}
    # The instance the journal recorded as stored is exactly what was stored, whatever
    # verify makes of the copy kept aside (which it must not count as identical).
    complaint = problems.get(kept)
    assert complaint is None, f"the stored original is reported: {complaint}"
    assert document["identical"] == 1
    assert verified.returncode == 0 or aside in problems


# -- stopping, and starting where another program listens ------------------------------


def test_sigterm_during_a_push_stops_cleanly_with_only_complete_files(
    tmp_path, dvdexit_receiver, dvdexit_home
):
    sources = make_small_instances(tmp_path / "many", 300, seed="sigterm-mid-push")
    receiver = dvdexit_receiver(tmp_path / "STORE")
    report = tmp_path / "dcmsend.report"
    sender = subprocess.Popen(
        [
            require_tool("dcmsend"),
            "--decompress-never",
            "-aec",
            receiver.ae,
            "--create-report-file",
            str(report),
            LOOPBACK,
            str(receiver.port),
            *map(str, sources),
        ],
        env=dcmtk_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # Wait (no timing asserted) until the push is under way, then stop the receiver.
        deadline = time.monotonic() + 60
        while not any(receiver.store.rglob("*.dcm")) and sender.poll() is None:
            assert time.monotonic() < deadline, "nothing stored after 60 s"
            time.sleep(0.01)
        assert receiver.stop(sig=signal.SIGTERM, timeout=60) == 0, receiver.stderr
        assert not receiver.killed
        _, sender_log = sender.communicate(timeout=60)
    finally:
        if sender.poll() is None:
            os.kill(sender.pid, signal.SIGKILL)
            sender.wait()

    summary = receiver.stderr.strip().splitlines()[-1]
    match = re.search(r"stopped; (\d+) instance\(s\) stored", summary)
    assert match, receiver.stderr
    assert "aborted" not in summary, "a short push in progress must be allowed to finish"
    files = stored_files(receiver.store)
    assert [f for f in files if f.suffix != ".dcm"] == [], "temporary files left behind"
    assert len(files) == int(match.group(1))
    # dcmsend writes its report only when its association ended normally.
    assert sender.returncode == 0, sender_log.decode(errors="replace")
    answers = dcmsend_report(report).values()
    told_stored = {e["SOP Instance"] for e in answers if dimse_status(e) == SUCCESS}
    assert len(told_stored) == len(sources)
    assert set(by_sop_uid(files)) == told_stored
    verified = run_dvdexit("verify", receiver.store, home=dvdexit_home)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_receiver_on_a_port_storescp_already_holds_exits_3_naming_the_port(
    tmp_path, storescp, dvdexit_home
):
    occupant = storescp(tmp_path / "storescp")
    result = run_dvdexit(
        "receive",
        "--host",
        LOOPBACK,
        "--port",
        str(occupant.port),
        "--store",
        tmp_path / "STORE",
        home=dvdexit_home,
        timeout=60,
    )
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(occupant.port) in lines[0]
    assert "in use" in lines[0].lower()
    assert occupant.proc.poll() is None, "storescp should keep its port"


# -- association checks ---------------------------------------------------------------


def test_caller_using_the_wrong_called_ae_title_is_rejected_and_nothing_is_stored(
    tmp_path, dvdexit_receiver, dvdexit_home
):
    source = write_study(tmp_path / "study", n_instances=1, seed="wrong-called-ae")[0]
    receiver = dvdexit_receiver(tmp_path / "STORE", ae="DVDEXIT")
    # The right title is accepted, so a rejection below is about the title alone.
    assert run_echoscu(receiver.port, called_ae="DVDEXIT").returncode == 0

    echo = run_echoscu(receiver.port, called_ae="NOT_DVDEXIT")
    assert echo.returncode != 0
    assert "Called AE Title Not Recognized" in echo.stdout + echo.stderr
    sent = run_dcmsend([source], receiver.port, called_ae="NOT_DVDEXIT")
    assert sent.returncode == 61, sent.stderr  # EXITCODE_CANNOT_NEGOTIATE_ASSOCIATION
    assert "Association Rejected" in sent.stderr

    assert receiver.stop() == 0, receiver.stderr
    assert stored_files(receiver.store) == []
    assert received_rows(dvdexit_home) == []
