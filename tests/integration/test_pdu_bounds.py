"""PDU sizes on the wire: what dvdexit advertises, and what it sends.

A receiver that advertises a maximum PDU length of 0 (no limit) is sent each dataset as
one PDU, and pynetdicom holds that PDU whole in memory at both ends: a 1 GB instance
cost gigabytes of RAM in sender and receiver. dvdexit advertises a bounded maximum
(``[local] max_pdu``, 1 MiB by default) and never sends a PDU larger than that bound or
the peer's own maximum, whatever the peer advertises.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from peers import LOOPBACK, dvdexit_env, free_port, run_dvdexit
from pydicom.uid import generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt

from dvdexit_cli.samples import sample_uid, synthetic_instance, write_large_instance

pytestmark = pytest.mark.peer

DEFAULT_MAX_PDU = 1024 * 1024  # what docs/configuration.md promises

_VERIFICATION = "1.2.840.10008.1.1"


def _advertised_by(port: int) -> int | None:
    """The maximum PDU length the acceptor on ``port`` advertises in its A-ASSOCIATE-AC."""
    requestor = AE(ae_title="PROBE")
    requestor.add_requested_context(_VERIFICATION)
    assoc = requestor.associate(LOOPBACK, port, ae_title="DVDEXIT")
    assert assoc.is_established
    try:
        return assoc.acceptor.maximum_length
    finally:
        assoc.release()


def test_receiver_advertises_a_bounded_maximum_pdu_length(
    tmp_path: Path, dvdexit_receiver, dvdexit_home: Path
) -> None:
    receiver = dvdexit_receiver(tmp_path / "STORE")

    assert _advertised_by(receiver.port) == DEFAULT_MAX_PDU


def test_receiver_advertises_the_maximum_pdu_length_of_local_settings(
    tmp_path: Path, dvdexit_receiver, dvdexit_home: Path
) -> None:
    (dvdexit_home / "peers.toml").write_text("[local]\nmax_pdu = 65536\n")
    receiver = dvdexit_receiver(tmp_path / "STORE")

    assert _advertised_by(receiver.port) == 65536


def _one_large_instance(folder: Path, *, rows: int, cols: int) -> Path:
    folder.mkdir(parents=True)
    ds = synthetic_instance(
        study_uid=sample_uid("pdu", "study"),
        series_uid=sample_uid("pdu", "series"),
        sop_uid=generate_uid(entropy_srcs=["pdu", str(rows), str(cols)]),
        rows=rows,
        cols=cols,
    )
    path = folder / "LARGE.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


class _RecordingAcceptor:
    """A Storage SCP that advertises ``max_pdu`` and records each P-DATA-TF's length."""

    def __init__(self, max_pdu: int) -> None:
        self.lengths: list[int] = []
        self.stored = 0
        self._lock = threading.Lock()
        ae = AE(ae_title="ANYSCP")
        ae.maximum_pdu_size = max_pdu
        ae.supported_contexts = AllStoragePresentationContexts
        self.port = free_port()
        self._server = ae.start_server(
            (LOOPBACK, self.port),
            block=False,
            evt_handlers=[(evt.EVT_DATA_RECV, self._on_data), (evt.EVT_C_STORE, self._on_store)],
        )

    def _on_data(self, event: evt.Event) -> None:
        data = event.data
        if data[:1] == b"\x04":  # P-DATA-TF: type, reserved, 4-byte length of the rest
            with self._lock:
                self.lengths.append(int.from_bytes(data[2:6], "big"))

    def _on_store(self, event: evt.Event) -> int:
        self.stored += 1
        return 0x0000

    def shutdown(self) -> None:
        self._server.shutdown()


def test_send_to_a_peer_that_advertises_no_limit_uses_bounded_pdus(
    tmp_path: Path, dvdexit_home: Path
) -> None:
    path = _one_large_instance(tmp_path / "study", rows=1100, cols=1100)  # about 2.4 MB
    acceptor = _RecordingAcceptor(max_pdu=0)
    try:
        run_dvdexit(
            "peers", "add", "pacs", "--dimse", f"{LOOPBACK}:{acceptor.port}", "--ae", "ANYSCP",
            home=dvdexit_home,
        )  # fmt: skip
        done = run_dvdexit("send", tmp_path / "study", "--to", "pacs", "--json", home=dvdexit_home)
    finally:
        acceptor.shutdown()

    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["sent"] == 1
    assert acceptor.stored == 1
    assert sum(acceptor.lengths) > 2 * DEFAULT_MAX_PDU and path.stat().st_size > 2 * DEFAULT_MAX_PDU
    assert max(acceptor.lengths) == DEFAULT_MAX_PDU


def test_send_keeps_below_a_smaller_local_bound_and_the_peers_own_maximum(
    tmp_path: Path, dvdexit_home: Path
) -> None:
    _one_large_instance(tmp_path / "study", rows=300, cols=300)  # about 180 kB
    (dvdexit_home / "peers.toml").write_text("[local]\nmax_pdu = 16384\n")
    unlimited, small = _RecordingAcceptor(max_pdu=0), _RecordingAcceptor(max_pdu=8192)
    try:
        for name, acceptor in (("unlimited", unlimited), ("small", small)):
            run_dvdexit(
                "peers", "add", name, "--dimse", f"{LOOPBACK}:{acceptor.port}", "--ae", "ANYSCP",
                home=dvdexit_home,
            )  # fmt: skip
            done = run_dvdexit("send", tmp_path / "study", "--to", name, home=dvdexit_home)
            assert done.returncode == 0, done.stdout + done.stderr
    finally:
        unlimited.shutdown()
        small.shutdown()

    assert max(unlimited.lengths) == 16384
    assert max(small.lengths) == 8192


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


def test_a_large_instance_goes_from_dvdexit_to_dvdexit_without_being_held_in_memory(
    tmp_path: Path, dvdexit_receiver, dvdexit_home: Path
) -> None:
    # Held whole, a 256 MB instance cost the sender and the receiver several copies of
    # it (a 1 GB one: 3.2 GB and 4.2 GB). Streamed, each stays near its idle size.
    (tmp_path / "study").mkdir()
    write_large_instance(tmp_path / "study" / "LARGE.dcm", 256)
    receiver = dvdexit_receiver(tmp_path / "STORE", extra=["--durability", "os"])
    sender_home = tmp_path / "sender"
    run_dvdexit(
        "peers", "add", "gw", "--dimse", f"{LOOPBACK}:{receiver.port}", "--ae", "DVDEXIT",
        home=sender_home,
    )  # fmt: skip
    sender = subprocess.Popen(
        [sys.executable, "-m", "dvdexit_cli", "send", str(tmp_path / "study"), "--to", "gw"],
        env=dvdexit_env(sender_home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _pid, status, usage = os.wait4(sender.pid, 0)
    sender.returncode = os.waitstatus_to_exitcode(status)
    receiver_peak = _peak_rss_mb(receiver.pid)

    assert sender.returncode == 0, sender.stderr.read() if sender.stderr else ""
    assert receiver.stop() == 0
    assert len(list(receiver.store.rglob("*.dcm"))) == 1
    assert usage.ru_maxrss / 1024 < 200, "the sender held the instance in memory"
    assert receiver_peak < 200, "the receiver held the instance in memory"
