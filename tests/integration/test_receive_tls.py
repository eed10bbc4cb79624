"""TLS: certificates made in the test (trustme), client certificates required.

dvdexit send (through the library: DimseTransport with an ssl_context) and DCMTK
storescu (+tls) push into ``dvdexit receive --tls-cert --tls-key --tls-ca``; a plain
connection and a client without a certificate get nothing stored.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from pathlib import Path

import pydicom
import pytest
import trustme
from peers import LOOPBACK, dcmtk_env, free_port, require_tool, run_dcmsend
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from dvdexit_cli.config import DimsePeer
from dvdexit_cli.dicom.digest import dataset_digest
from dvdexit_cli.engine import SendSettings, send
from dvdexit_cli.journal import Journal
from dvdexit_cli.samples import write_study
from dvdexit_cli.tls import client_context, server_context
from dvdexit_cli.transport.dimse import DimseTransport

pytestmark = pytest.mark.peer


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    client = ca.issue_cert("hosp-a.example")
    files = {
        "ca": tmp_path / "ca.pem",
        "server_cert": tmp_path / "server.pem",
        "server_key": tmp_path / "server.key",
        "client_cert": tmp_path / "client.pem",
        "client_key": tmp_path / "client.key",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    server.cert_chain_pems[0].write_to_path(str(files["server_cert"]))
    server.private_key_pem.write_to_path(str(files["server_key"]))
    client.cert_chain_pems[0].write_to_path(str(files["client_cert"]))
    client.private_key_pem.write_to_path(str(files["client_key"]))
    for key in ("server_key", "client_key"):
        files[key].chmod(0o600)  # dvdexit refuses a private key every user can read
    return files


def tls_receiver(start, store: Path, pki: dict[str, Path]):
    return start(
        store,
        extra=[
            "--tls-cert",
            str(pki["server_cert"]),
            "--tls-key",
            str(pki["server_key"]),
            "--tls-ca",
            str(pki["ca"]),
            "--require-tls",
        ],
    )


def library_send(folder: Path, port: int, journal_file: Path, context) -> object:
    peer = DimsePeer(name="gw", host=LOOPBACK, port=port, called_ae="DVDEXIT")
    with Journal(journal_file) as journal:
        return send(
            SendSettings(inputs=(folder,), peer_name="gw", peer_address=peer.address, retries=0),
            journal=journal,
            transport=DimseTransport(peer, ssl_context=context),
        )


def test_dvdexit_send_over_mutual_tls_stores_every_instance_byte_for_byte(
    tmp_path, pki, dvdexit_receiver
):
    study = write_study(tmp_path / "study", n_instances=4, seed="tls")
    receiver = tls_receiver(dvdexit_receiver, tmp_path / "STORE", pki)
    context = client_context(ca=pki["ca"], cert=pki["client_cert"], key=pki["client_key"])

    result = library_send(tmp_path / "study", receiver.port, tmp_path / "j.sqlite", context)

    assert (result.sent, result.failed) == (4, 0), result
    assert receiver.stop() == 0
    assert "(TLS)" in receiver.stderr
    stored = sorted(receiver.store.rglob("*.dcm"))
    assert {dataset_digest(p)[1] for p in stored} == {dataset_digest(p)[1] for p in study}


def test_plain_or_certificate_less_clients_get_nothing_stored(tmp_path, pki, dvdexit_receiver):
    study = write_study(tmp_path / "study", n_instances=1, seed="tls-refused")
    receiver = tls_receiver(dvdexit_receiver, tmp_path / "STORE", pki)

    plain = run_dcmsend(study, receiver.port, called_ae="DVDEXIT")
    assert plain.returncode != 0

    anonymous = client_context(ca=pki["ca"])  # trusts the server, shows no certificate
    result = library_send(tmp_path / "study", receiver.port, tmp_path / "j.sqlite", anonymous)
    assert result.sent == 0 and result.exit_code != 0

    assert receiver.stop() == 0
    assert [p for p in receiver.store.rglob("*") if p.is_file()] == []


def test_dcmtk_storescu_with_tls_options_is_received(tmp_path, pki, dvdexit_receiver):
    exe = require_tool("storescu")
    if "--enable-tls" not in subprocess.run([exe, "--help"], capture_output=True, text=True).stdout:
        message = "this DCMTK build has no TLS"  # Debian's has it
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    study = write_study(tmp_path / "study", n_instances=2, seed="tls-dcmtk")
    receiver = tls_receiver(dvdexit_receiver, tmp_path / "STORE", pki)
    sent = subprocess.run(
        [
            exe,
            "-aec",
            "DVDEXIT",
            "+tls",
            str(pki["client_key"]),
            str(pki["client_cert"]),
            "+cf",
            str(pki["ca"]),
            LOOPBACK,
            str(receiver.port),
            *map(str, study),
        ],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert receiver.stop() == 0
    assert len(list(receiver.store.rglob("*.dcm"))) == len(study)


def test_a_client_that_connects_and_says_nothing_does_not_block_the_others(
    tmp_path, pki, dvdexit_receiver
):
    write_study(tmp_path / "study", n_instances=1, seed="tls-idle-client")
    receiver = tls_receiver(dvdexit_receiver, tmp_path / "STORE", pki)
    context = client_context(ca=pki["ca"], cert=pki["client_cert"], key=pki["client_key"])
    with socket.create_connection((LOOPBACK, receiver.port)):  # no TLS handshake, ever
        result = library_send(tmp_path / "study", receiver.port, tmp_path / "j.sqlite", context)
        assert (result.sent, result.failed) == (1, 0), result
    assert receiver.stop() == 0
    assert len(list(receiver.store.rglob("*.dcm"))) == 1


def test_commitment_report_on_a_new_association_goes_over_tls(tmp_path, pki, dvdexit_receiver):
    study = write_study(tmp_path / "study", n_instances=1, seed="tls-commit-reply")
    ds = pydicom.dcmread(study[0], stop_before_pixels=True)
    reports: list[Dataset] = []
    got = threading.Event()

    def on_report(event: evt.Event) -> tuple[int, None]:
        reports.append(event.event_information)
        got.set()
        return 0x0000, None

    # The requester listens with TLS and wants a certificate from whoever reports to it.
    listener = AE(ae_title="HOSP_A")
    listener.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    reply_port = free_port()
    server = listener.start_server(
        (LOOPBACK, reply_port),
        block=False,
        evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)],
        # Its certificate names 127.0.0.1, the address the receiver is told to report to.
        ssl_context=server_context(cert=pki["server_cert"], key=pki["server_key"], ca=pki["ca"]),
    )
    try:
        receiver = dvdexit_receiver(
            tmp_path / "STORE",
            extra=[
                "--tls-cert",
                str(pki["server_cert"]),
                "--tls-key",
                str(pki["server_key"]),
                "--tls-ca",
                str(pki["ca"]),
                "--idle-timeout",
                "3600",
                "--commit-reply",
                f"HOSP_A={LOOPBACK}:{reply_port}",
            ],
        )
        context = client_context(ca=pki["ca"], cert=pki["client_cert"], key=pki["client_key"])
        sent = library_send(tmp_path / "study", receiver.port, tmp_path / "j.sqlite", context)
        assert sent.sent == 1
        requester = AE(ae_title="HOSP_A")
        requester.add_requested_context(StorageCommitmentPushModel)
        assoc = requester.associate(
            LOOPBACK, receiver.port, ae_title="DVDEXIT", tls_args=(context, LOOPBACK)
        )
        assert assoc.is_established
        action = Dataset()
        action.TransactionUID = "1.2.3.4.5"
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        action.ReferencedSOPSequence = [item]
        status, _ = assoc.send_n_action(
            action, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1"
        )
        assert status.Status == 0x0000
        assoc.release()
        assert got.wait(60), "no report over TLS on a new association"
    finally:
        server.shutdown()
    (info,) = reports
    assert info.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID


def test_cli_send_uses_the_tls_files_of_the_peers_config(
    tmp_path: Path, pki: dict[str, Path], dvdexit_receiver, dvdexit_home
) -> None:
    import json

    from peers import run_dvdexit

    files = write_study(tmp_path / "study", n_instances=3, seed="tls-cli")
    receiver = tls_receiver(dvdexit_receiver, tmp_path / "STORE", pki)
    sender = tmp_path / "sender"
    address = f"{LOOPBACK}:{receiver.port}"
    run_dvdexit(
        "peers",
        "add",
        "gw",
        "--dimse",
        address,
        "--ae",
        "DVDEXIT",
        "--tls-ca",
        pki["ca"],
        "--tls-cert",
        pki["client_cert"],
        "--tls-key",
        pki["client_key"],
        home=sender,
    )
    run_dvdexit("peers", "add", "plain", "--dimse", address, "--ae", "DVDEXIT", home=sender)

    done = run_dvdexit("send", tmp_path / "study", "--to", "gw", "--json", home=sender)
    refused = run_dvdexit(
        "send", tmp_path / "study", "--to", "plain", "--retries", "0", home=sender
    )

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["sent"] == len(files)
    stored = sorted(receiver.store.rglob("*.dcm"))
    assert {dataset_digest(p)[1] for p in stored} == {dataset_digest(f)[1] for f in files}
    assert refused.returncode == 5


# -- private keys that every user of the machine can read are refused ----------------------


def test_peers_add_refuses_a_dimse_tls_key_readable_by_everyone(
    tmp_path: Path, pki: dict[str, Path], dvdexit_home: Path
) -> None:
    from peers import run_dvdexit

    from dvdexit_cli.config import PeerBook, resolve_paths

    pki["client_key"].chmod(0o644)

    added = run_dvdexit(
        "peers", "add", "gw", "--dimse", f"{LOOPBACK}:{free_port()}", "--ae", "GW",
        "--tls-ca", pki["ca"], "--tls-cert", pki["client_cert"], "--tls-key", pki["client_key"],
        home=dvdexit_home,
    )  # fmt: skip

    assert added.returncode == 3, added.stderr
    assert "readable by every user" in added.stderr and "chmod o-r" in added.stderr
    assert str(pki["client_key"]) in added.stderr
    assert not len(PeerBook(resolve_paths({"DVDEXIT_HOME": str(dvdexit_home)}).peers_file))
    # Group-readable stays allowed (a service group such as ssl-cert).
    pki["client_key"].chmod(0o640)
    again = run_dvdexit(
        "peers", "add", "gw", "--dimse", f"{LOOPBACK}:{free_port()}", "--ae", "GW",
        "--tls-ca", pki["ca"], "--tls-cert", pki["client_cert"], "--tls-key", pki["client_key"],
        home=dvdexit_home,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr


def test_a_dimse_tls_key_that_became_readable_by_everyone_is_refused_before_connecting(
    tmp_path: Path, pki: dict[str, Path], dvdexit_home: Path
) -> None:
    from peers import run_dvdexit

    from dvdexit_cli.errors import ConfigError
    from dvdexit_cli.transport.factory import transport_for

    write_study(tmp_path / "study", n_instances=2, seed="tls-key-mode")
    # Nobody listens there: an attempt to connect would end in exit 5, not 3.
    address = f"{LOOPBACK}:{free_port()}"
    added = run_dvdexit(
        "peers", "add", "gw", "--dimse", address, "--ae", "GW", "--tls-ca", pki["ca"],
        "--tls-cert", pki["client_cert"], "--tls-key", pki["client_key"], home=dvdexit_home,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    pki["client_key"].chmod(0o604)

    done = run_dvdexit("send", tmp_path / "study", "--to", "gw", "--json", home=dvdexit_home)

    assert done.returncode == 3, done.stdout + done.stderr
    error = json.loads(done.stdout)["error"]
    assert "readable by every user" in error["message"] and "gw" in error["message"]
    assert "chmod o-r" in error["hint"]
    peer = DimsePeer(
        name="gw",
        host=LOOPBACK,
        port=free_port(),
        called_ae="GW",
        tls_ca=str(pki["ca"]),
        tls_cert=str(pki["client_cert"]),
        tls_key=str(pki["client_key"]),
    )
    with pytest.raises(ConfigError, match="readable by every user"):
        transport_for(peer)
    # The key may also sit inside the certificate file: then that file is the secret.
    pki["client_cert"].write_text(pki["client_cert"].read_text() + pki["client_key"].read_text())
    pki["client_cert"].chmod(0o644)
    inside = DimsePeer(
        name="gw", host=LOOPBACK, port=free_port(), called_ae="GW", tls_cert=str(pki["client_cert"])
    )
    with pytest.raises(ConfigError, match=r"tls_cert .* readable by every user"):
        transport_for(inside)


def test_receive_refuses_its_tls_key_readable_by_everyone(
    tmp_path: Path, pki: dict[str, Path], dvdexit_home: Path
) -> None:
    from peers import run_dvdexit

    pki["server_key"].chmod(0o644)

    done = run_dvdexit(
        "receive", "--port", str(free_port()), "--store", tmp_path / "STORE",
        "--tls-cert", pki["server_cert"], "--tls-key", pki["server_key"], "--tls-ca", pki["ca"],
        home=dvdexit_home, timeout=60,
    )  # fmt: skip

    assert done.returncode == 3, done.stderr
    assert "--tls-key" in done.stderr and "readable by every user" in done.stderr
    assert "chmod o-r" in done.stderr
    assert not (tmp_path / "STORE").exists() or not any((tmp_path / "STORE").rglob("*.dcm"))


# -- a failed TLS handshake is one line on stderr: who, and why --------------------------


def _refusal_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("rejected:")]


def test_a_plain_client_on_the_tls_port_is_named_on_stderr_and_the_receiver_keeps_serving(
    tmp_path, pki, dvdexit_receiver
):
    study = write_study(tmp_path / "study", n_instances=1, seed="tls-plain-named")
    receiver = tls_receiver(dvdexit_receiver, tmp_path / "STORE", pki)

    plain = run_dcmsend(study, receiver.port, called_ae="DVDEXIT")
    context = client_context(ca=pki["ca"], cert=pki["client_cert"], key=pki["client_key"])
    result = library_send(tmp_path / "study", receiver.port, tmp_path / "j.sqlite", context)

    assert plain.returncode != 0
    assert (result.sent, result.failed) == (1, 0), result
    assert receiver.stop() == 0
    (line,) = _refusal_lines(receiver.stderr)
    assert f"from {LOOPBACK}:" in line
    assert "TLS handshake failed" in line and "not TLS" in line


def test_a_client_certificate_of_another_ca_is_named_on_stderr_and_the_receiver_keeps_serving(
    tmp_path, pki, dvdexit_receiver
):
    write_study(tmp_path / "study", n_instances=1, seed="tls-foreign-named")
    receiver = tls_receiver(dvdexit_receiver, tmp_path / "STORE", pki)
    foreign = trustme.CA().issue_cert("intruder.example")
    foreign.cert_chain_pems[0].write_to_path(str(tmp_path / "foreign.pem"))
    foreign.private_key_pem.write_to_path(str(tmp_path / "foreign.key"))
    intruder = client_context(
        ca=pki["ca"], cert=tmp_path / "foreign.pem", key=tmp_path / "foreign.key"
    )
    context = client_context(ca=pki["ca"], cert=pki["client_cert"], key=pki["client_key"])

    refused = library_send(tmp_path / "study", receiver.port, tmp_path / "r.sqlite", intruder)
    result = library_send(tmp_path / "study", receiver.port, tmp_path / "j.sqlite", context)

    assert refused.sent == 0 and refused.exit_code != 0
    assert (result.sent, result.failed) == (1, 0), result
    assert receiver.stop() == 0
    (line,) = _refusal_lines(receiver.stderr)
    assert f"from {LOOPBACK}:" in line
    assert "client certificate not trusted" in line


def test_an_expired_client_certificate_is_named_on_stderr(tmp_path, pki, dvdexit_receiver):
    import datetime

    write_study(tmp_path / "study", n_instances=1, seed="tls-expired-named")
    # A second CA the receiver trusts too, which issued a certificate expired yesterday.
    ca = trustme.CA()
    pki["ca"].write_bytes(pki["ca"].read_bytes() + ca.cert_pem.bytes())
    now = datetime.datetime.now(datetime.UTC)
    expired = ca.issue_cert(
        "hosp-a.example",
        not_before=now - datetime.timedelta(days=30),
        not_after=now - datetime.timedelta(days=1),
    )
    expired.cert_chain_pems[0].write_to_path(str(tmp_path / "expired.pem"))
    expired.private_key_pem.write_to_path(str(tmp_path / "expired.key"))
    receiver = tls_receiver(dvdexit_receiver, tmp_path / "STORE", pki)
    client = client_context(
        ca=pki["ca"], cert=tmp_path / "expired.pem", key=tmp_path / "expired.key"
    )

    refused = library_send(tmp_path / "study", receiver.port, tmp_path / "r.sqlite", client)

    assert refused.sent == 0
    assert receiver.stop() == 0
    (line,) = _refusal_lines(receiver.stderr)
    assert f"from {LOOPBACK}:" in line and "certificate has expired" in line
