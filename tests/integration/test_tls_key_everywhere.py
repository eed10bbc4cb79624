"""A private key readable by every user is refused on every path that would use it.

docs/configuration.md promises the check "at every use". Before issue 12 only ``send``
(transport/factory.py) made it for a DIMSE peer: ``verify --peer``, ``receive --from`` and
``status --peer`` built their TLS context in diagnose.py without it, and went on to
connect with a key anyone on the machine could have copied. Nobody listens at the peer's
address here: a command that does not refuse first ends in exit 5 (unreachable), not 3.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from peers import LOOPBACK, free_port, run_dvdexit

from dvdexit_cli.samples import write_study

STUDY_UID = "1.2.826.0.1.3680043.10.511.4.12"


@pytest.fixture
def key_files(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    client = ca.issue_cert("hosp-a.example")
    files = {n: tmp_path / f for n, f in (("ca", "ca.pem"), ("cert", "c.pem"), ("key", "c.key"))}
    ca.cert_pem.write_to_path(str(files["ca"]))
    client.cert_chain_pems[0].write_to_path(str(files["cert"]))
    client.private_key_pem.write_to_path(str(files["key"]))
    files["key"].chmod(0o604)  # readable by every user: the mistake under test
    return files


def _commands(tmp_path: Path) -> dict[str, list[str | Path]]:
    study = tmp_path / "study"
    if not study.exists():
        write_study(study, n_instances=1, seed="tls-key-everywhere")
    return {
        "send": ["send", study, "--to", "gw"],
        "verify --peer": ["verify", study, "--peer", "gw"],
        "receive --from": ["receive", "--from", "gw", "--study", STUDY_UID],
        "status --peer": ["status", "--peer", "gw"],
    }


def _refusals(tmp_path: Path, home: Path) -> dict[str, tuple[int, dict[str, object]]]:
    refusals = {}
    for what, args in _commands(tmp_path).items():
        done = run_dvdexit(*args, "--json", home=home)
        try:
            error = json.loads(done.stdout)["error"]
        except (ValueError, KeyError):
            error = {"stdout": done.stdout, "stderr": done.stderr[-300:]}
        refusals[what] = (done.returncode, error)
    return refusals


def _dimse_peer(files: dict[str, Path]) -> str:
    return (
        f'[peers.gw]\nhost = "{LOOPBACK}"\nport = {free_port()}\ncalled_ae = "GW"\n'
        f'tls_ca = "{files["ca"]}"\ntls_cert = "{files["cert"]}"\ntls_key = "{files["key"]}"\n'
    )


def _dicomweb_peer(files: dict[str, Path]) -> str:
    return (
        f'[peers.gw]\nkind = "dicomweb"\nurl = "https://{LOOPBACK}:{free_port()}/dicom-web"\n'
        f'ca_bundle = "{files["ca"]}"\nclient_cert = "{files["cert"]}"\n'
        f'client_key = "{files["key"]}"\n'
    )


@pytest.mark.parametrize(
    ("peer", "key_name"),
    [
        pytest.param(_dimse_peer, "tls_key", id="dimse"),
        pytest.param(_dicomweb_peer, "client_key", id="dicomweb"),
    ],
)
def test_a_private_key_readable_by_everyone_is_refused_alike_by_every_command(
    tmp_path: Path,
    dvdexit_home: Path,
    key_files: dict[str, Path],
    peer: Callable[[dict[str, Path]], str],
    key_name: str,
) -> None:
    (dvdexit_home / "peers.toml").write_text(peer(key_files))

    refusals = _refusals(tmp_path, dvdexit_home)

    key = key_files["key"]
    expected = {
        "type": "ConfigError",
        "message": f"peer gw: {key_name} {key} is readable by every user of this machine: "
        "refusing to use it",
        "hint": f"chmod o-r {key} (and keep it owned by the account that runs dvdexit)",
    }
    assert refusals == {what: (3, expected) for what in refusals}
