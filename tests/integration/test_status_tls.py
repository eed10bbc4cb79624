"""`dvdexit status --peer` over DICOM TLS, against DCMTK storescp +tls."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from peers import require_tool, run_dvdexit


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture
def certificates(tmp_path: Path) -> Path:
    """Two CAs; a server certificate for 127.0.0.1 signed by the first."""
    require_tool("openssl")
    folder = tmp_path / "pki"
    folder.mkdir()
    for ca in ("ca", "other-ca"):
        _openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{ca}.key",
            "-out",
            f"{ca}.pem",
            "-days",
            "2",
            "-subj",
            f"/CN=dvdexit test {ca}",
            cwd=folder,
        )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
        cwd=folder,
    )
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        cwd=folder,
    )
    return folder


def _tls_scp(storescp: Any, tmp_path: Path, pki: Path) -> Any:
    return storescp(
        tmp_path / "out",
        extra=["+tls", str(pki / "server.key"), str(pki / "server.pem"), "-ic"],
    )


def test_a_tls_peer_with_the_right_ca_is_healthy_and_its_certificate_described(
    tmp_path: Path, dvdexit_home: Path, storescp: Any, certificates: Path
) -> None:
    scp = _tls_scp(storescp, tmp_path, certificates)
    run_dvdexit(
        "peers",
        "add",
        "secure",
        "--dimse",
        f"127.0.0.1:{scp.port}",
        "--ae",
        scp.ae,
        "--tls-ca",
        certificates / "ca.pem",
        home=dvdexit_home,
    )

    done = run_dvdexit("status", "--peer", "secure", "--json", home=dvdexit_home)

    assert done.returncode == 0, done.stdout + done.stderr
    tls = {s["stage"]: s for s in json.loads(done.stdout)["stages"]}["tls"]
    assert tls["status"] == "ok"
    assert "commonName=127.0.0.1" in tls["data"]["subject"]
    assert tls["data"]["protocol"].startswith("TLSv1.")
    assert tls["data"]["days_left"] in (0, 1, 2)
    assert "expires in" in tls["data"]["warning"]  # a two-day certificate: warn early


def test_a_certificate_from_another_ca_fails_at_stage_tls_with_exit_5(
    tmp_path: Path, dvdexit_home: Path, storescp: Any, certificates: Path
) -> None:
    scp = _tls_scp(storescp, tmp_path, certificates)
    run_dvdexit(
        "peers",
        "add",
        "secure",
        "--dimse",
        f"127.0.0.1:{scp.port}",
        "--ae",
        scp.ae,
        "--tls-ca",
        certificates / "other-ca.pem",
        home=dvdexit_home,
    )

    done = run_dvdexit("status", "--peer", "secure", "--json", home=dvdexit_home)

    assert done.returncode == 5
    report = json.loads(done.stdout)
    assert report["failed_stage"] == "tls"
    assert "not trusted" in report["stages"][-1]["detail"]
    assert "tls_ca" in report["stages"][-1]["hint"]
