"""`dvdexit send --workers N`: parallel associations that keep every study whole and in order.

A bulk transfer of many studies goes faster over two associations; a receiving PACS that
builds a study as it arrives still needs each study from one association, in order.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from peers import LOOPBACK, free_port, run_dvdexit
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE, evt

from dvdexit_cli.dicom.digest import dataset_digest
from dvdexit_cli.journal import Journal
from dvdexit_cli.samples import make_small_instances


def add_peer(home: Path, name: str, port: int, ae: str) -> None:
    result = run_dvdexit(
        "peers", "add", name, "--dimse", f"{LOOPBACK}:{port}", "--ae", ae, home=home
    )
    assert result.returncode == 0, result.stderr


def send_json(home: Path, *args: str | Path) -> tuple[int, Any]:
    result = run_dvdexit("send", *args, "--json", home=home)
    try:
        return result.returncode, json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"exit {result.returncode}: {result.stdout!r}\n{result.stderr}")


@pytest.fixture
def recording_scp() -> Iterator[Callable[[], tuple[int, list[tuple[int, str, int]]]]]:
    """A pynetdicom SCP recording (association, study UID, instance number) per C-STORE."""
    servers: list[Any] = []

    def start() -> tuple[int, list[tuple[int, str, int]]]:
        arrived: list[tuple[int, str, int]] = []
        lock = threading.Lock()

        def on_store(event: Any) -> int:
            ds = event.dataset
            with lock:
                arrived.append((id(event.assoc), str(ds.StudyInstanceUID), int(ds.InstanceNumber)))
            return 0x0000

        ae = AE(ae_title="RECORDER")
        ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian])
        ae.maximum_associations = 8
        port = free_port()
        servers.append(
            ae.start_server(
                (LOOPBACK, port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
            )
        )
        return port, arrived

    yield start
    for server in servers:
        server.shutdown()


def test_two_workers_send_each_study_whole_in_order_over_its_own_association(
    recording_scp, dvdexit_home: Path, tmp_path: Path
):
    for n in range(4):
        make_small_instances(tmp_path / "in" / f"study{n}", 40, seed=f"workers-{n}")
    port, arrived = recording_scp()
    add_peer(dvdexit_home, "pacs", port, "RECORDER")

    code, result = send_json(dvdexit_home, tmp_path / "in", "--to", "pacs", "--workers", "2")

    assert code == 0, result
    assert result["sent"] == 160
    assert len(arrived) == 160
    per_study: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for assoc, study, number in arrived:
        per_study[study].append((assoc, number))
    assert len(per_study) == 4
    for study, seen in per_study.items():
        assert len({assoc for assoc, _ in seen}) == 1, f"study {study} came over two associations"
        assert [number for _, number in seen] == list(range(1, 41)), f"study {study} out of order"
    assert len({assoc for assoc, _, _ in arrived}) == 2


@pytest.mark.peer
def test_two_workers_lose_nothing_of_a_thousand_instances_in_five_studies(
    storescp, dvdexit_home: Path, tmp_path: Path
):
    files = []
    for n in range(5):
        files += make_small_instances(tmp_path / "in" / f"s{n}", 200, seed=f"many-{n}")
    scp = storescp(tmp_path / "arrived")
    add_peer(dvdexit_home, "pacs", scp.port, scp.ae)

    code, result = send_json(dvdexit_home, tmp_path / "in", "--to", "pacs", "--workers", "2")

    assert code == 0, result.get("failures", result)
    assert (result["sent"], result["failed"], result["pending"]) == (1000, 0, 0)
    stored = {
        dataset_digest(p)[0].sop_instance_uid: dataset_digest(p)[1] for p in scp.stored_files()
    }
    sent = {dataset_digest(p)[0].sop_instance_uid: dataset_digest(p)[1] for p in files}
    assert stored == sent
    with Journal(dvdexit_home / "journal.sqlite") as journal:
        items = journal.items(result["transfer_id"])
    assert {i.attempts for i in items} == {1}
    assert {i.state for i in items} == {"sent"}


def test_the_peers_workers_apply_when_the_command_line_gives_none_and_the_command_line_wins(
    recording_scp, dvdexit_home: Path, tmp_path: Path
):
    for n in range(4):
        make_small_instances(tmp_path / "in" / f"study{n}", 5, seed=f"peer-workers-{n}")
    arrivals: dict[str, list[tuple[int, str, int]]] = {}
    for name, workers in (("single", "1"), ("triple", "3"), ("override", "1")):
        port, arrivals[name] = recording_scp()
        added = run_dvdexit(
            "peers", "add", name, "--dimse", f"{LOOPBACK}:{port}", "--ae", "RECORDER",
            "--workers", workers, home=dvdexit_home,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr

    sends = {
        "single": send_json(dvdexit_home, tmp_path / "in", "--to", "single"),
        "triple": send_json(dvdexit_home, tmp_path / "in", "--to", "triple"),
        "override": send_json(dvdexit_home, tmp_path / "in", "--to", "override", "--workers", "2"),
    }

    for name, (code, result) in sends.items():
        assert code == 0, (name, result)
        assert result["sent"] == 20 and len(arrivals[name]) == 20, name
    associations = {name: len({a for a, _, _ in got}) for name, got in arrivals.items()}
    # peers.toml workers = 1 (a PACS that takes one association) beats send's default of 2.
    assert associations == {"single": 1, "triple": 3, "override": 2}
