"""peers.toml kinds (dimse, dicomweb, folder), [local], and the secret chain."""

from __future__ import annotations

from pathlib import Path

import pytest

from dvdexit_cli.config import (
    DicomWebPeer,
    DimsePeer,
    FolderPeer,
    LocalSettings,
    PeerBook,
)
from dvdexit_cli.credentials import Secret, env_var_name, lookup_secret
from dvdexit_cli.errors import ConfigError


def test_every_kind_and_local_survive_a_reload(tmp_path: Path) -> None:
    path = tmp_path / "peers.toml"
    book = PeerBook(path)
    dimse = DimsePeer(
        name="pacs",
        host="10.0.0.5",
        port=2762,
        called_ae="PACS",
        tls_ca="/etc/ca.pem",
        tls_cert="/etc/me.pem",
        tls_key="/etc/me.key",
        max_pdu=65536,
        workers=4,
    )
    web = DicomWebPeer(
        name="web",
        url="https://pacs.example.org/dicom-web",
        auth="basic",
        user="alice",
        ca_bundle="/etc/ca.pem",
        workers=6,
    )
    drop = FolderPeer(name="drop", path="/srv/outbox")
    for peer in (dimse, web, drop):
        book.add(peer)
    book.set_local(LocalSettings(ae_title="HOSP_A", port=11112))

    again = PeerBook(path)
    assert again.get("pacs") == dimse
    assert again.get_any("web") == web
    assert again.get_any("drop") == drop
    assert again.local == LocalSettings(ae_title="HOSP_A", port=11112)
    assert {p.kind for p in again} == {"dimse", "dicomweb", "folder"}


def test_an_old_dimse_only_file_still_loads_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "peers.toml"
    path.write_text('[peers.pacs]\nkind = "dimse"\nhost = "h"\nport = 104\ncalled_ae = "A"\n')
    peer = PeerBook(path).get("pacs")
    # workers unset: send uses its own default; an explicit 1 (one association) is kept.
    assert (peer.tls_ca, peer.max_pdu, peer.workers, peer.uses_tls) == (None, 0, None, False)
    path.write_text(path.read_text() + "workers = 1\n")
    assert PeerBook(path).get("pacs").workers == 1


@pytest.mark.parametrize(
    ("table", "field"),
    [
        ('kind = "dicomweb"\nurl = "ftp://x"', "url"),
        ('kind = "dicomweb"\nurl = "https://x/dw"\nauth = "magic"', "auth"),
        ('kind = "dicomweb"\nurl = "https://x/dw"\nauth = "basic"', "user"),
        ('kind = "dicomweb"\nurl = "http://pacs.example.org/dw"\nauth = "bearer"', "clear"),
        ('kind = "folder"', "path"),
        ('kind = "dimse"\nhost = "h"\nport = 104\ncalled_ae = "A"\nworkers = 0', "workers"),
        ('kind = "dicomweb"\nurl = "https://x/dw"\nworkers = 17', "workers"),
        ('kind = "dimse"\nhost = "h"\nport = 104\ncalled_ae = "A"\nworkers = 40', "1 to 16"),
        ('kind = "dicomweb"\nurl = "https://x/dw"\nworkers = true', "workers"),
        ('kind = "dimse"\nhost = "h"\nport = 104\ncalled_ae = "A"\ntls_key = "k"', "tls_key"),
        ('kind = "smoke-signals"', "kind"),
    ],
)
def test_a_bad_peer_names_the_file_the_peer_and_the_field(
    tmp_path: Path, table: str, field: str
) -> None:
    path = tmp_path / "peers.toml"
    path.write_text(f"[peers.far]\n{table}\n")
    with pytest.raises(ConfigError) as info:
        PeerBook(path)
    message = info.value.message + (info.value.hint or "")
    assert str(path) in message
    assert "[peers.far]" in message
    assert field in message


def test_a_bad_local_table_names_its_key(tmp_path: Path) -> None:
    path = tmp_path / "peers.toml"
    path.write_text("[local]\nport = 70000\n")
    with pytest.raises(ConfigError, match=r"\[local\]: port"):
        PeerBook(path)


def test_a_dicomweb_peer_is_refused_where_dimse_is_needed(tmp_path: Path) -> None:
    book = PeerBook(tmp_path / "peers.toml")
    book.add(DicomWebPeer(name="web", url="https://x.example.org/dw"))
    with pytest.raises(ConfigError, match="dicomweb peer"):
        book.get("web")


def test_the_environment_variable_name_is_upper_case_with_underscores() -> None:
    assert env_var_name("pacs") == "DVDEXIT_SECRET_PACS"
    assert env_var_name("st-olav.pacs_2") == "DVDEXIT_SECRET_ST_OLAV_PACS_2"


def test_the_environment_wins_and_a_secret_never_shows_itself() -> None:
    secret = lookup_secret("pacs", environ={"DVDEXIT_SECRET_PACS": "hunter2"})
    assert secret.reveal() == "hunter2"
    for text in (repr(secret), str(secret), f"{secret}", f"{secret!r}", f"{[secret]}"):
        assert "hunter2" not in text
    assert secret == Secret("hunter2")
