"""`dvdexit status --peer NAME`: where exactly a link is broken, in one command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from peers import RecordingListener, free_port, run_dvdexit


def _add_peer(home: Path, name: str, address: str, ae: str) -> None:
    done = run_dvdexit("peers", "add", name, "--dimse", address, "--ae", ae, home=home)
    assert done.returncode == 0, done.stderr


def _diagnose(home: Path, name: str, *extra: str) -> tuple[int, dict[str, Any]]:
    done = run_dvdexit("status", "--peer", name, "--json", "--timeout", "5", *extra, home=home)
    return done.returncode, json.loads(done.stdout)


def test_a_healthy_orthanc_passes_every_stage_and_exits_0(dvdexit_home: Path, orthanc: Any) -> None:
    pacs = orthanc()
    _add_peer(dvdexit_home, "pacs", f"127.0.0.1:{pacs.dicom_port}", pacs.aet)

    code, report = _diagnose(dvdexit_home, "pacs", "--contexts")

    assert code == 0, report
    assert report["healthy"] is True
    stages = {s["stage"]: s for s in report["stages"]}
    assert [s["stage"] for s in report["stages"]] == [
        "dns",
        "tcp",
        "tls",
        "association",
        "echo",
        "contexts",
    ]
    assert stages["tls"]["status"] == "skipped"
    assert all(s["status"] == "ok" for n, s in stages.items() if n != "tls")
    assert "1.2.840.10008.5.1.4.1.1.2" in stages["contexts"]["data"]["accepted"]  # CT
    assert all(isinstance(s["seconds"], float) for s in report["stages"])


def test_a_closed_port_fails_at_stage_tcp_with_exit_5(dvdexit_home: Path) -> None:
    port = free_port()  # nothing listens there
    _add_peer(dvdexit_home, "gone", f"127.0.0.1:{port}", "GONE")

    code, report = _diagnose(dvdexit_home, "gone")

    assert code == 5
    assert report["failed_stage"] == "tcp"
    assert [s["stage"] for s in report["stages"]] == ["dns", "tcp"]
    assert "refused" in report["stages"][-1]["detail"]
    assert report["stages"][-1]["hint"]


def test_a_wrong_called_ae_fails_at_stage_association_with_the_ae_hint(
    dvdexit_home: Path, orthanc: Any
) -> None:
    pacs = orthanc()
    _add_peer(dvdexit_home, "pacs", f"127.0.0.1:{pacs.dicom_port}", "NOT_ORTHANC")

    code, report = _diagnose(dvdexit_home, "pacs")

    assert code == 5
    assert report["failed_stage"] == "association"
    failed = report["stages"][-1]
    assert "called AE title not recognised" in failed["detail"]
    assert "NOT_ORTHANC" in failed["detail"]
    assert "NOT_ORTHANC" in failed["hint"]
    assert failed["data"]["reason"] == 7


def test_a_host_that_cannot_resolve_fails_at_stage_dns(dvdexit_home: Path) -> None:
    # RFC 2606: .invalid never resolves, and no query leaves the machine for it.
    _add_peer(dvdexit_home, "typo", "pacs.example.invalid:104", "PACS")

    code, report = _diagnose(dvdexit_home, "typo")

    assert code == 5
    assert report["failed_stage"] == "dns"
    assert len(report["stages"]) == 1
    assert "pacs.example.invalid" in report["stages"][0]["detail"]


def test_the_human_diagnosis_names_the_failed_stage_and_an_unknown_peer_exits_3(
    dvdexit_home: Path,
) -> None:
    _add_peer(dvdexit_home, "gone", f"127.0.0.1:{free_port()}", "GONE")

    done = run_dvdexit("status", "--peer", "gone", home=dvdexit_home)
    unknown = run_dvdexit("status", "--peer", "nobody", "--json", home=dvdexit_home)

    assert done.returncode == 5
    assert "NOT healthy (failed at tcp)" in done.stdout
    assert unknown.returncode == 3
    assert json.loads(unknown.stdout)["error"]["type"] == "UnknownPeerError"


def _run_check(home: Path, tmp_path: Path, peer: str) -> Any:
    import os
    import subprocess
    import sys

    from peers import REPO_ROOT, dvdexit_env

    shim = tmp_path / "bin" / "dvdexit"
    shim.parent.mkdir(exist_ok=True)
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m dvdexit_cli "$@"\n')
    shim.chmod(0o755)
    env = dvdexit_env(home, {"PATH": f"{shim.parent}{os.pathsep}{os.environ['PATH']}"})
    return subprocess.run(
        [str(REPO_ROOT / "examples" / "check_dvdexit_peer.sh"), peer, "5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_monitoring_example_reports_ok_critical_and_unknown(
    dvdexit_home: Path, tmp_path: Path, orthanc: Any
) -> None:
    pacs = orthanc()
    _add_peer(dvdexit_home, "pacs", f"127.0.0.1:{pacs.dicom_port}", pacs.aet)
    _add_peer(dvdexit_home, "gone", f"127.0.0.1:{free_port()}", "GONE")

    ok = _run_check(dvdexit_home, tmp_path, "pacs")
    critical = _run_check(dvdexit_home, tmp_path, "gone")
    unknown = _run_check(dvdexit_home, tmp_path, "nobody")

    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("OK - dvdexit peer pacs")
    assert "echo_ms=" in ok.stdout
    assert critical.returncode == 2
    assert "failed at tcp" in critical.stdout
    assert unknown.returncode == 3
    assert unknown.stdout.startswith("UNKNOWN")


@pytest.mark.parametrize("command", [("status", "--peer"), ("peers", "test")])
def test_a_diagnosis_never_leaves_the_peer_a_connection_without_an_association_request(
    dvdexit_home: Path, command: tuple[str, str]
) -> None:
    # A legacy SCP that takes a connection closed before its A-ASSOCIATE-RQ as fatal would
    # be taken down by a monitoring check run every minute.
    listener = RecordingListener()
    try:
        _add_peer(dvdexit_home, "legacy", f"127.0.0.1:{listener.port}", "LEGACY")

        done = run_dvdexit(*command, "legacy", "--json", "--timeout", "5", home=dvdexit_home)
    finally:
        listener.close()

    report = json.loads(done.stdout)
    assert done.returncode == 5
    stages = {s["stage"]: s["status"] for s in report["stages"]}
    assert stages["tcp"] == "ok"
    assert report["failed_stage"] == "association"
    assert len(listener.received) == 1, listener.received
    assert all(data[:1] == b"\x01" for data in listener.received), listener.received


def test_a_diagnosis_of_dcmtk_storescp_passes_every_stage(
    dvdexit_home: Path, storescp: Any, tmp_path: Path
) -> None:
    scp = storescp(tmp_path / "in")
    _add_peer(dvdexit_home, "dcmtk", f"127.0.0.1:{scp.port}", scp.ae)

    code, report = _diagnose(dvdexit_home, "dcmtk")

    assert code == 0, report
    assert [s["status"] for s in report["stages"]] == ["ok", "ok", "skipped", "ok", "ok"]
