"""peers.toml and DVDEXIT_HOME: validated, atomic, with messages that say what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from dvdexit_cli.config import DicomWebPeer, DimsePeer, PeerBook, parse_host_port, resolve_paths
from dvdexit_cli.errors import ConfigError, UnknownPeerError


def test_dvdexit_home_relocates_config_and_data_together(tmp_path: Path) -> None:
    paths = resolve_paths({"DVDEXIT_HOME": str(tmp_path)})
    assert paths.peers_file == tmp_path / "peers.toml"
    assert paths.journal_file == tmp_path / "journal.sqlite"
    assert paths.default_store == tmp_path / "received"


def test_without_dvdexit_home_the_platform_folders_are_used() -> None:
    paths = resolve_paths({})
    assert paths.config_dir.name == "dvdexit"
    assert paths.data_dir.name == "dvdexit"


def test_a_peer_survives_a_reload_and_can_be_removed(tmp_path: Path) -> None:
    book = PeerBook(tmp_path / "peers.toml")
    book.add(DimsePeer(name="pacs", host="10.0.0.5", port=104, called_ae="PACS"))

    again = PeerBook(tmp_path / "peers.toml")
    assert again.get("pacs") == DimsePeer(name="pacs", host="10.0.0.5", port=104, called_ae="PACS")
    again.remove("pacs")
    assert len(PeerBook(tmp_path / "peers.toml")) == 0


def test_adding_a_peer_twice_needs_replace(tmp_path: Path) -> None:
    book = PeerBook(tmp_path / "peers.toml")
    book.add(DimsePeer(name="pacs", host="h", port=104, called_ae="A"))
    with pytest.raises(ConfigError, match="already exists"):
        book.add(DimsePeer(name="pacs", host="h", port=105, called_ae="B"))
    book.add(DimsePeer(name="pacs", host="h", port=105, called_ae="B"), replace=True)
    assert PeerBook(tmp_path / "peers.toml").get("pacs").port == 105


def test_unknown_peer_names_the_known_ones(tmp_path: Path) -> None:
    book = PeerBook(tmp_path / "peers.toml")
    book.add(DimsePeer(name="pacs", host="h", port=104, called_ae="A"))
    with pytest.raises(UnknownPeerError, match="known: pacs"):
        book.get("other")


@pytest.mark.parametrize(
    ("called_ae", "message"),
    [("", "empty"), ("A" * 17, "longer than 16"), ("BAD\\AE", "does not allow")],
)
def test_invalid_ae_titles_are_refused(tmp_path: Path, called_ae: str, message: str) -> None:
    book = PeerBook(tmp_path / "peers.toml")
    with pytest.raises(ConfigError, match=message):
        book.add(DimsePeer(name="pacs", host="h", port=104, called_ae=called_ae))
    assert not (tmp_path / "peers.toml").exists()


@pytest.mark.parametrize("value", ["host", "host:", ":104", "host:port", "host:70000"])
def test_bad_host_port_is_refused(value: str) -> None:
    with pytest.raises(ConfigError):
        parse_host_port(value)


def test_ipv6_host_port_is_understood() -> None:
    assert parse_host_port("[::1]:11112") == ("::1", 11112)


def test_a_damaged_peers_file_says_which_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "peers.toml"
    path.write_text('[peers.pacs]\nhost = "h"\nport = 104\n')
    with pytest.raises(ConfigError, match=r"peers.toml \[peers.pacs\]: missing key 'called_ae'"):
        PeerBook(path)
    path.write_text("not = [toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        PeerBook(path)


@pytest.mark.parametrize("value", ["0", "1000", "20000000", '"17M"'])
def test_a_local_max_pdu_outside_4096_to_16_mib_is_refused(tmp_path: Path, value: str) -> None:
    (tmp_path / "peers.toml").write_text(f"[local]\nmax_pdu = {value}\n")
    with pytest.raises(ConfigError, match=r"\[local\] max_pdu must be a number of bytes from 4096"):
        PeerBook(tmp_path / "peers.toml")


@pytest.mark.parametrize(
    ("value", "expected"), [("65536", 65536), ('"64K"', 65536), ('"1M"', 2**20)]
)
def test_a_local_max_pdu_is_a_size(tmp_path: Path, value: str, expected: int) -> None:
    (tmp_path / "peers.toml").write_text(f"[local]\nmax_pdu = {value}\n")
    assert PeerBook(tmp_path / "peers.toml").local.max_pdu == expected


def test_a_local_max_pdu_that_is_not_a_size_is_refused(tmp_path: Path) -> None:
    (tmp_path / "peers.toml").write_text("[local]\nmax_pdu = true\n")
    with pytest.raises(ConfigError, match=r"\[local\] max_pdu: 'True' is not a size"):
        PeerBook(tmp_path / "peers.toml")


def test_a_peer_without_max_pdu_uses_the_local_one_and_its_own_wins(tmp_path: Path) -> None:
    (tmp_path / "peers.toml").write_text(
        "[local]\nmax_pdu = 65536\n"
        '[peers.a]\nhost = "h"\nport = 104\ncalled_ae = "A"\n'
        '[peers.b]\nhost = "h"\nport = 104\ncalled_ae = "B"\nmax_pdu = 16384\n'
    )
    book = PeerBook(tmp_path / "peers.toml")
    assert book.get("a").pdu_limit == 65536
    assert book.get("b").pdu_limit == 16384
    assert DimsePeer(name="c", host="h", port=104, called_ae="C").pdu_limit == 1024 * 1024
    with pytest.raises(ConfigError, match="max_pdu must be a number of bytes"):
        book.add(DimsePeer(name="d", host="h", port=104, called_ae="D", max_pdu=100))
    book.add(DimsePeer(name="e", host="h", port=104, called_ae="E"))
    # The local value is not written into the peers that follow it.
    assert PeerBook(tmp_path / "peers.toml").get("e").max_pdu == 0
    assert "65536" not in (tmp_path / "peers.toml").read_text().split("[peers")[1]


def test_peers_toml_durations_and_rates_read_the_same_grammar_as_the_options(
    tmp_path: Path,
) -> None:
    (tmp_path / "peers.toml").write_text(
        '[peers.web]\nkind = "dicomweb"\nurl = "https://pacs.example.org/dicom-web"\n'
        'connect_timeout = "15s"\nread_timeout = "2m"\nmin_rate = "1.5M/s"\n'
    )
    peer = PeerBook(tmp_path / "peers.toml").get_any("web")
    assert isinstance(peer, DicomWebPeer)
    assert (peer.connect_timeout, peer.read_timeout) == (15.0, 120.0)
    assert peer.min_rate == int(1.5 * 2**20)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("read_timeout", '"2 minutes"', r"read_timeout: '2 minutes' is not a duration"),
        ("connect_timeout", "0", r"connect_timeout: the duration must be more than 0"),
        ("min_rate", '"fast"', r"min_rate: 'fast' is not a rate"),
    ],
)
def test_a_peers_toml_duration_or_rate_in_another_grammar_is_refused_naming_the_key(
    tmp_path: Path, key: str, value: str, message: str
) -> None:
    (tmp_path / "peers.toml").write_text(
        '[peers.web]\nkind = "dicomweb"\nurl = "https://pacs.example.org/dicom-web"\n'
        f"{key} = {value}\n"
    )
    with pytest.raises(ConfigError, match=message):
        PeerBook(tmp_path / "peers.toml")
