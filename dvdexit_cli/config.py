"""Where dvdexit keeps its files, and the peer address book (peers.toml).

``DVDEXIT_HOME`` relocates configuration and data together (tests and cron use it);
without it, platformdirs' per-user configuration and data directories are used.
Everything read from disk is validated into frozen dataclasses with messages that say
which file and which key is wrong.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import platformdirs
import tomli_w

from dvdexit_cli import units
from dvdexit_cli.credentials import env_var_name
from dvdexit_cli.errors import ConfigError, UnitError, UnknownPeerError
from dvdexit_cli.fsmode import PRIVATE
from dvdexit_cli.units import parse_rate  # re-exported for one release: use dvdexit_cli.units

__all__ = [
    "AUTH_KINDS",
    "DEFAULT_CALLING_AE",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_PDU",
    "DEFAULT_MIN_RATE",
    "DEFAULT_READ_TIMEOUT",
    "AnyPeer",
    "DicomWebPeer",
    "DimsePeer",
    "FolderPeer",
    "LocalSettings",
    "Paths",
    "PeerBook",
    "parse_host_port",
    "parse_rate",
    "resolve_paths",
    "url_without_secrets",
    "validate_ae_title",
    "validate_dicomweb",
    "validate_max_pdu",
]

DEFAULT_CALLING_AE = "DVDEXIT"
_PEER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Paths:
    """The files and folders of one dvdexit installation (or one DVDEXIT_HOME)."""

    config_dir: Path
    data_dir: Path

    @property
    def peers_file(self) -> Path:
        return self.config_dir / "peers.toml"

    @property
    def journal_file(self) -> Path:
        return self.data_dir / "journal.sqlite"

    @property
    def default_store(self) -> Path:
        return self.data_dir / "received"


def resolve_paths(environ: Mapping[str, str] | None = None) -> Paths:
    """Return the paths in force: ``DVDEXIT_HOME`` when set, else the platform's."""
    env = os.environ if environ is None else environ
    home = env.get("DVDEXIT_HOME")
    if home:
        root = Path(home).expanduser()
        return Paths(config_dir=root, data_dir=root)
    return Paths(
        config_dir=Path(platformdirs.user_config_dir("dvdexit", appauthor=False)),
        data_dir=Path(platformdirs.user_data_dir("dvdexit", appauthor=False)),
    )


def validate_ae_title(value: str, *, what: str = "AE title") -> str:
    """Return ``value`` if it is a valid DICOM AE title (1-16 printable ASCII, no backslash)."""
    if not value or not value.strip():
        raise ConfigError(f"{what} is empty", hint="an AE title has 1 to 16 characters")
    if len(value) > 16:
        raise ConfigError(
            f"{what} {value!r} is longer than 16 characters",
            hint="DICOM limits AE titles to 16 characters",
        )
    if any(ord(c) < 0x20 or ord(c) > 0x7E or c == "\\" for c in value):
        raise ConfigError(
            f"{what} {value!r} contains a character DICOM does not allow",
            hint="use letters, digits, spaces and punctuation other than a backslash",
        )
    return value


def parse_host_port(value: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[v6]:PORT`` for IPv6) into a host and a port number."""
    host, sep, port_text = value.rpartition(":")
    example = "give the address as HOST:PORT, for example 10.1.2.3:104 or [fd00::5]:104"
    if not sep or not host:
        raise ConfigError(f"{value!r} is not HOST:PORT", hint=example)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(
            f"port {port_text!r} in {value!r} is not a number", hint=example
        ) from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"port {port} in {value!r} is outside 1-65535", hint=example)
    return host, port


DEFAULT_MAX_PDU = 1024 * 1024
"""The maximum PDU length we advertise and send, unless ``[local] max_pdu`` says otherwise."""
MIN_MAX_PDU = 4096
MAX_MAX_PDU = 16 * 1024 * 1024
# Why bounded at all: pynetdicom reads and writes each PDU whole, in several copies, so the
# PDU size is what an association costs in memory. 4096 is DCMTK's floor (its --max-pdu
# accepts 4096..131072); above a few MB nothing gets faster while memory grows per
# association. 0 (no limit) is refused: it is what let a 1 GB instance travel as one PDU.


def validate_max_pdu(value: object, *, what: str) -> int:
    """A maximum PDU length (a size: ``1048576``, ``"1M"``), from MIN_MAX_PDU to MAX_MAX_PDU;
    ConfigError else."""
    try:
        value = units.parse_size(value, what=what)
    except UnitError as exc:
        raise ConfigError(exc.message, hint=exc.hint) from exc
    if not MIN_MAX_PDU <= value <= MAX_MAX_PDU:
        raise ConfigError(
            f"{what} must be a number of bytes from {MIN_MAX_PDU} to {MAX_MAX_PDU}, not {value!r}",
            hint=f"the default, {DEFAULT_MAX_PDU} (1 MiB), suits every peer we know; "
            "0 (no limit) is not allowed, as a peer could then send a whole instance as one "
            "PDU held in memory",
        )
    return value


@dataclass(frozen=True)
class DimsePeer:
    """A DICOM peer reached over DIMSE (C-ECHO, C-STORE, ...)."""

    name: str
    host: str
    port: int
    called_ae: str
    calling_ae: str = DEFAULT_CALLING_AE
    tls_ca: str | None = None
    """CA bundle (PEM) that the peer's certificate must chain to; enables TLS."""
    tls_cert: str | None = None
    """Our client certificate (PEM), for peers that require mutual TLS."""
    tls_key: str | None = None
    """The private key of ``tls_cert`` (PEM)."""
    max_pdu: int = 0
    """Largest PDU we accept from and send to this peer (0: ``[local] max_pdu``)."""
    workers: int | None = None
    """Parallel associations for a send (None: send's default; --workers wins)."""
    local_max_pdu: int = field(default=DEFAULT_MAX_PDU, compare=False, repr=False)
    """``[local] max_pdu`` as loaded with the peer (not stored with it)."""

    kind = "dimse"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pdu_limit(self) -> int:
        """The maximum PDU length to advertise to this peer, and to send it at most."""
        return self.max_pdu or self.local_max_pdu

    @property
    def uses_tls(self) -> bool:
        return bool(self.tls_ca or self.tls_cert)

    def to_toml(self) -> dict[str, object]:
        table: dict[str, object] = {
            "kind": self.kind,
            "host": self.host,
            "port": self.port,
            "called_ae": self.called_ae,
            "calling_ae": self.calling_ae,
        }
        for key in ("tls_ca", "tls_cert", "tls_key"):
            value = getattr(self, key)
            if value:
                table[key] = value
        if self.max_pdu:
            table["max_pdu"] = self.max_pdu
        if self.workers is not None:
            table["workers"] = self.workers
        return table

    def describe(self) -> dict[str, object]:
        """A JSON-safe description (holds no secret)."""
        return {"name": self.name, **self.to_toml()}


Peer = DimsePeer

AUTH_KINDS = ("none", "basic", "bearer")

MAX_WORKERS = 16
"""Most associations (or STOW-RS requests) one send keeps open at once, wherever set."""

DEFAULT_CONNECT_TIMEOUT = 15.0
DEFAULT_READ_TIMEOUT = 120.0
DEFAULT_MIN_RATE = 256 * 1024
"""Bytes per second a STOW-RS request must at least average (about 2 Mbit/s): generous,
because a budget too tight for a slow but healthy link would fail every attempt."""


@dataclass(frozen=True)
class DicomWebPeer:
    """A DICOMweb service (STOW-RS, QIDO-RS, WADO-RS) under one base URL."""

    name: str
    url: str
    auth: str = "none"
    """``none``, ``basic`` (user + secret) or ``bearer`` (secret is the token)."""
    user: str | None = None
    ca_bundle: str | None = None
    """CA bundle (PEM) for an https URL signed by a private CA."""
    client_cert: str | None = None
    """Our client certificate (PEM), for an https peer that requires one."""
    client_key: str | None = None
    """The private key of ``client_cert`` (PEM; may be inside ``client_cert``)."""
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    """Seconds to establish a connection (TCP and TLS)."""
    read_timeout: float = DEFAULT_READ_TIMEOUT
    """Seconds without progress (nothing read, or nothing written) before giving up."""
    min_rate: int = DEFAULT_MIN_RATE
    """Bytes per second: a STOW-RS request's whole budget is
    connect_timeout + read_timeout + bytes / min_rate."""
    workers: int | None = None
    """STOW-RS requests in flight for a send (None: send's default; --workers wins)."""

    kind = "dicomweb"

    @property
    def address(self) -> str:
        return self.url

    @property
    def needs_secret(self) -> bool:
        return self.auth != "none"

    def to_toml(self) -> dict[str, object]:
        table: dict[str, object] = {"kind": self.kind, "url": self.url, "auth": self.auth}
        if self.user:
            table["user"] = self.user
        for key in ("ca_bundle", "client_cert", "client_key"):
            value = getattr(self, key)
            if value:
                table[key] = value
        if self.connect_timeout != DEFAULT_CONNECT_TIMEOUT:
            table["connect_timeout"] = self.connect_timeout
        if self.read_timeout != DEFAULT_READ_TIMEOUT:
            table["read_timeout"] = self.read_timeout
        if self.min_rate != DEFAULT_MIN_RATE:
            table["min_rate"] = self.min_rate
        if self.workers is not None:
            table["workers"] = self.workers
        return table

    def describe(self) -> dict[str, object]:
        """A JSON-safe description (holds no secret)."""
        return {"name": self.name, **self.to_toml()}


@dataclass(frozen=True)
class FolderPeer:
    """A drop folder (or mounted share) that receives transfer packages."""

    name: str
    path: str
    group: str | None = None
    """A group that may read the packages (files 0640, folders 2750); None: owner-only."""

    kind = "folder"

    @property
    def address(self) -> str:
        return self.path

    def to_toml(self) -> dict[str, object]:
        table: dict[str, object] = {"kind": self.kind, "path": self.path}
        if self.group:
            table["group"] = self.group
        return table

    def describe(self) -> dict[str, object]:
        return {"name": self.name, **self.to_toml()}


AnyPeer = DimsePeer | DicomWebPeer | FolderPeer


def url_without_secrets(url: str) -> str:
    """``url`` without user:password@ and without query or fragment (tokens live there)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def validate_dicomweb(peer: DicomWebPeer, *, where: str = "") -> DicomWebPeer:
    """Check a DICOMweb peer's settings; ConfigError naming ``where`` and the field.

    A URL with credentials (``https://user:secret@host/...``) is refused before anything
    else, and no message repeats it whole: kept, the secret would end up in peers.toml,
    the journal, ``peers list`` and logs.
    """
    prefix = f"{where}: " if where else ""
    try:
        netloc = urlsplit(peer.url).netloc
    except ValueError:  # e.g. an unclosed IPv6 bracket: the URL check below says so
        netloc = ""
    if "@" in netloc:
        raise ConfigError(
            f"{prefix}the URL {url_without_secrets(peer.url)} carries a user name or "
            "password (USER:PASSWORD@); dvdexit never keeps credentials in a URL",
            hint=f"give the URL without them, with --auth basic --user NAME, and store the "
            f"password in the keyring: dvdexit peers login {peer.name} (or set "
            f"{env_var_name(peer.name)} for cron)",
        )
    if not re.match(r"^https?://[^/\s]+", peer.url):
        raise ConfigError(
            f"{prefix}url {peer.url!r} is not an http(s) URL",
            hint="give the DICOMweb base URL, for example https://pacs.example.org/dicom-web",
        )
    if peer.auth not in AUTH_KINDS:
        raise ConfigError(f"{prefix}auth {peer.auth!r} is not one of {', '.join(AUTH_KINDS)}")
    if peer.auth == "basic" and not peer.user:
        raise ConfigError(f"{prefix}auth 'basic' needs a user", hint="add --user NAME")
    if peer.client_key and not peer.client_cert:
        raise ConfigError(f"{prefix}client_key is set but client_cert is not")
    if peer.client_cert and not peer.url.startswith("https://"):
        raise ConfigError(
            f"{prefix}a client certificate needs an https URL, not {peer.url!r}",
            hint="use the peer's https URL, or drop client_cert",
        )
    for key in ("connect_timeout", "read_timeout"):
        value = getattr(peer, key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ConfigError(f"{prefix}{key} must be a positive number of seconds")
    if isinstance(peer.min_rate, bool) or not isinstance(peer.min_rate, int) or peer.min_rate < 1:
        raise ConfigError(f"{prefix}min_rate must be a positive number of bytes per second")
    if peer.url.startswith("http://") and peer.auth != "none":
        # A password over plain HTTP is readable by anyone on the path.
        host = peer.url.split("/")[2].split(":")[0]
        if host not in ("127.0.0.1", "localhost", "::1", "[::1]"):
            raise ConfigError(
                f"{prefix}auth {peer.auth!r} over plain http would send the secret in clear",
                hint="use an https URL",
            )
    return peer


def _validate_peer_name(name: str) -> str:
    if not _PEER_NAME.match(name):
        raise ConfigError(
            f"peer name {name!r} is not allowed",
            hint="use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return name


def _text_field(table: Mapping[str, object], key: str, where: str) -> str | None:
    value = table.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"{where}: {key} must be a non-empty string")
    return value


def _seconds_field(table: Mapping[str, object], key: str, default: float, where: str) -> float:
    """A positive duration (``120``, ``"2m"``: units.py's grammar); ConfigError else."""
    try:
        return units.parse_duration(table.get(key, default), what=f"{where}: {key}", positive=True)
    except UnitError as exc:
        raise ConfigError(exc.message, hint=exc.hint) from exc


def _rate_field(table: Mapping[str, object], key: str, default: int, where: str) -> int:
    """A rate (``262144``, ``"256K"``, ``"1M/s"``: units.py's grammar); ConfigError else."""
    try:
        return units.parse_rate(table.get(key, default), what=f"{where}: {key}")
    except UnitError as exc:
        raise ConfigError(exc.message, hint=exc.hint) from exc


def _workers_field(table: Mapping[str, object], where: str) -> int | None:
    """A peer's ``workers`` (1 to MAX_WORKERS), or None when peers.toml does not set it."""
    workers = table.get("workers")
    if workers is None:
        return None
    if not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"{where}: workers must be a number from 1 to {MAX_WORKERS}")
    return workers


def _peer_from_toml(name: str, table: Mapping[str, object], source: Path) -> AnyPeer:
    where = f"{source} [peers.{name}]"
    kind = table.get("kind", "dimse")
    if kind == "dicomweb":
        url = _text_field(table, "url", where)
        if url is None:
            raise ConfigError(f"{where}: missing key 'url'")
        auth = _text_field(table, "auth", where) or "none"
        return validate_dicomweb(
            DicomWebPeer(
                name=_validate_peer_name(name),
                url=url,
                auth=auth,
                user=_text_field(table, "user", where),
                ca_bundle=_text_field(table, "ca_bundle", where),
                client_cert=_text_field(table, "client_cert", where),
                client_key=_text_field(table, "client_key", where),
                connect_timeout=_seconds_field(
                    table, "connect_timeout", DEFAULT_CONNECT_TIMEOUT, where
                ),
                read_timeout=_seconds_field(table, "read_timeout", DEFAULT_READ_TIMEOUT, where),
                min_rate=_rate_field(table, "min_rate", DEFAULT_MIN_RATE, where),
                workers=_workers_field(table, where),
            ),
            where=where,
        )
    if kind == "folder":
        path = _text_field(table, "path", where)
        if path is None:
            raise ConfigError(f"{where}: missing key 'path'")
        return FolderPeer(
            name=_validate_peer_name(name), path=path, group=_text_field(table, "group", where)
        )
    if kind != "dimse":
        raise ConfigError(
            f"{where}: unknown kind {kind!r}", hint="supported kinds: dimse, dicomweb, folder"
        )
    try:
        host = table["host"]
        port = table["port"]
        called_ae = table["called_ae"]
    except KeyError as exc:
        raise ConfigError(f"{where}: missing key {exc.args[0]!r}") from None
    calling_ae = table.get("calling_ae", DEFAULT_CALLING_AE)
    tls: dict[str, str | None] = {}
    for key in ("tls_ca", "tls_cert", "tls_key"):
        value = table.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(f"{where}: {key} must be a file path (a non-empty string)")
        tls[key] = value
    if tls["tls_key"] and not tls["tls_cert"]:
        raise ConfigError(f"{where}: tls_key is set but tls_cert is not")
    max_pdu = table.get("max_pdu", 0)
    workers = _workers_field(table, where)
    if max_pdu != 0 or isinstance(max_pdu, bool):
        max_pdu = validate_max_pdu(max_pdu, what=f"{where}: max_pdu")
    if not isinstance(host, str) or not host:
        raise ConfigError(f"{where}: host must be a non-empty string")
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"{where}: port must be a number from 1 to 65535")
    if not isinstance(called_ae, str) or not isinstance(calling_ae, str):
        raise ConfigError(f"{where}: called_ae and calling_ae must be strings")
    return DimsePeer(
        name=_validate_peer_name(name),
        host=host,
        port=port,
        called_ae=validate_ae_title(called_ae, what=f"{where} called_ae"),
        calling_ae=validate_ae_title(calling_ae, what=f"{where} calling_ae"),
        max_pdu=max_pdu,
        workers=workers,
        tls_ca=tls["tls_ca"],
        tls_cert=tls["tls_cert"],
        tls_key=tls["tls_key"],
    )


@dataclass(frozen=True)
class LocalSettings:
    """Our own side (peers.toml ``[local]``): the AE title and port we answer on."""

    ae_title: str = DEFAULT_CALLING_AE
    port: int | None = None
    """Where peers reach us (Storage Commitment reports, C-MOVE destinations)."""
    host: str = ""
    """The address to listen on; empty for every interface."""
    max_pdu: int = DEFAULT_MAX_PDU
    """The maximum PDU length we advertise, and the most we send whatever a peer allows."""

    def to_toml(self) -> dict[str, object]:
        table: dict[str, object] = {"ae_title": self.ae_title}
        if self.port is not None:
            table["port"] = self.port
        if self.host:
            table["host"] = self.host
        if self.max_pdu != DEFAULT_MAX_PDU:
            table["max_pdu"] = self.max_pdu
        return table


def _local_from_toml(table: Mapping[str, object], source: Path) -> LocalSettings:
    where = f"{source} [local]"
    unknown = set(table) - {"ae_title", "port", "host", "max_pdu"}
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {sorted(unknown)[0]!r}",
            hint="known keys: ae_title, port, host, max_pdu",
        )
    ae = table.get("ae_title", DEFAULT_CALLING_AE)
    port = table.get("port")
    host = table.get("host", "")
    if not isinstance(ae, str):
        raise ConfigError(f"{where}: ae_title must be a string")
    if port is not None and (not isinstance(port, int) or not 1 <= port <= 65535):
        raise ConfigError(f"{where}: port must be a number from 1 to 65535")
    if not isinstance(host, str):
        raise ConfigError(f"{where}: host must be a string")
    return LocalSettings(
        ae_title=validate_ae_title(ae, what=f"{where} ae_title"),
        port=port,
        host=host,
        max_pdu=validate_max_pdu(table.get("max_pdu", DEFAULT_MAX_PDU), what=f"{where} max_pdu"),
    )


class PeerBook:
    """The peers defined in peers.toml; changes are written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.local = LocalSettings()
        self._peers = self._load()

    def _load(self) -> dict[str, AnyPeer]:
        try:
            with self.path.open("rb") as fh:
                document = tomllib.load(fh)
        except FileNotFoundError:
            return {}
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(
                f"{self.path} is not valid TOML: {exc}", hint="fix or remove the file"
            ) from exc
        except OSError as exc:
            raise ConfigError(f"cannot read {self.path}: {exc.strerror}") from exc
        local = document.get("local", {})
        if not isinstance(local, dict):
            raise ConfigError(f"{self.path}: 'local' must be a table")
        self.local = _local_from_toml(local, self.path)
        tables = document.get("peers", {})
        if not isinstance(tables, dict):
            raise ConfigError(f"{self.path}: 'peers' must be a table")
        peers: dict[str, AnyPeer] = {}
        for name, table in tables.items():
            if not isinstance(table, dict):
                raise ConfigError(f"{self.path}: [peers.{name}] must be a table")
            peers[name] = self._with_local(_peer_from_toml(name, table, self.path))
        return peers

    def _with_local(self, peer: AnyPeer) -> AnyPeer:
        if isinstance(peer, DimsePeer):
            return replace(peer, local_max_pdu=self.local.max_pdu)
        return peer

    def __iter__(self) -> Iterator[AnyPeer]:
        return iter(sorted(self._peers.values(), key=lambda p: p.name))

    def __len__(self) -> int:
        return len(self._peers)

    def get(self, name: str) -> DimsePeer:
        """Return the DIMSE peer called ``name``; UnknownPeerError when there is none.

        A peer of another kind is a ConfigError: the caller needs DIMSE.
        """
        peer = self.get_any(name)
        if not isinstance(peer, DimsePeer):
            raise ConfigError(
                f"peer {name!r} is a {peer.kind} peer; this needs a DICOM (DIMSE) peer",
                hint="see 'dvdexit peers show " + name + "'",
            )
        return peer

    def get_any(self, name: str) -> AnyPeer:
        """Return the peer called ``name``, of any kind; UnknownPeerError when there is none."""
        try:
            return self._peers[name]
        except KeyError:
            known = ", ".join(sorted(self._peers)) or "none yet"
            raise UnknownPeerError(
                f"unknown peer {name!r} (known: {known})",
                hint=f"add it with: dvdexit peers add {name} --dimse HOST:PORT --ae CALLED_AE",
            ) from None

    def add(self, peer: AnyPeer, *, replace: bool = False) -> None:
        """Add ``peer`` and save; an existing name needs ``replace=True``."""
        _validate_peer_name(peer.name)
        if isinstance(peer, DimsePeer):
            validate_ae_title(peer.called_ae, what="called AE title")
            validate_ae_title(peer.calling_ae, what="calling AE title")
        elif isinstance(peer, DicomWebPeer):
            validate_dicomweb(peer)
        if peer.name in self._peers and not replace:
            raise ConfigError(
                f"peer {peer.name!r} already exists",
                hint="use --replace to change it (its open items in the journal stay with it)",
            )
        if isinstance(peer, DimsePeer) and peer.max_pdu:
            validate_max_pdu(peer.max_pdu, what="max_pdu")
        self._peers[peer.name] = self._with_local(peer)
        self._save()

    def set_local(self, local: LocalSettings) -> None:
        """Replace the ``[local]`` settings and save."""
        validate_ae_title(local.ae_title, what="[local] ae_title")
        validate_max_pdu(local.max_pdu, what="[local] max_pdu")
        self.local = local
        self._peers = {name: self._with_local(p) for name, p in self._peers.items()}
        self._save()

    def remove(self, name: str) -> AnyPeer:
        """Remove the peer called ``name`` and save; return what was removed."""
        peer = self.get_any(name)
        del self._peers[name]
        self._save()
        return peer

    def _save(self) -> None:
        # Other top-level tables (such as [receive]) are kept; comments are not.
        try:
            with self.path.open("rb") as fh:
                document: dict[str, object] = {
                    k: v for k, v in tomllib.load(fh).items() if k not in ("peers", "local")
                }
        except (OSError, tomllib.TOMLDecodeError):
            document = {}
        if self.local != LocalSettings():
            document["local"] = self.local.to_toml()
        document["peers"] = {p.name: p.to_toml() for p in self._peers.values()}
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            PRIVATE.make_dir(self.path.parent)
            with PRIVATE.open_new(tmp) as fh:
                tomli_w.dump(document, fh)
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(self.path)
        except OSError as exc:
            raise ConfigError(f"cannot write {self.path}: {exc.strerror}") from exc
