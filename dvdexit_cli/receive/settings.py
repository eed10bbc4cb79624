"""Receiver settings from options and from the ``[receive]`` table of peers.toml.

Options win over the file, the file over the defaults: merged in one place,
``ReceiveConfig.merge``, into one typed value the CLI builds everything else from. The
table's keys are the long option names with dashes or underscores (``allow-ae``,
``allow_from``, ``min-free`` ...); list options take TOML arrays. Sizes and durations
follow :mod:`dvdexit_cli.units` (``500M``, ``2G``; ``90s``, ``2m``).
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from dvdexit_cli import units
from dvdexit_cli.config import parse_host_port, validate_ae_title
from dvdexit_cli.errors import ConfigError, UsageError
from dvdexit_cli.receive.store import DEFAULT_LAYOUT, validate_layout

__all__ = [
    "RECEIVE_KEYS",
    "ReceiveConfig",
    "load_receive_table",
    "parse_commit_reply",
    "parse_networks",
    "parse_size",
]

#: Keys a ``[receive]`` table may hold (underscored form).
RECEIVE_KEYS = frozenset(
    {
        "port",
        "ae",
        "host",
        "store",
        "layout",
        "allow_ae",
        "allow_from",
        "max_associations",
        "max_instance_size",
        "min_free",
        "durability",
        "idle_timeout",
        "on_complete",
        "commit_reply",
        "tls_cert",
        "tls_key",
        "tls_ca",
        "require_tls",
        "forward_to",
        "reconcile",
        "sr_to_pdf",
        "group",
    }
)

# Re-exported for one release: use dvdexit_cli.units.
parse_size = units.parse_size


def parse_networks(
    values: Iterable[str], *, what: str = "--allow-from"
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """CIDR blocks (or single addresses) -> networks; UsageError naming the bad one."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError as exc:
            raise UsageError(f"{what}: {value!r} is not an address or CIDR block") from exc
    return tuple(networks)


def parse_commit_reply(values: Iterable[str]) -> dict[str, tuple[str, int]]:
    """``AE=HOST:PORT`` entries -> {AE: (host, port)}."""
    replies: dict[str, tuple[str, int]] = {}
    for value in values:
        ae, sep, address = value.partition("=")
        if not sep:
            raise UsageError(f"--commit-reply: {value!r} is not AE=HOST:PORT")
        try:
            replies[validate_ae_title(ae.strip())] = parse_host_port(address.strip())
        except ConfigError as exc:
            raise UsageError(f"--commit-reply: {exc}") from exc
    return replies


def load_receive_table(peers_file: Path) -> dict[str, object]:
    """The ``[receive]`` table of ``peers_file`` with underscored keys ({} when absent)."""
    try:
        with peers_file.open("rb") as fh:
            document = tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{peers_file} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {peers_file}: {exc.strerror}") from exc
    table = document.get("receive", {})
    if not isinstance(table, Mapping):
        raise ConfigError(f"{peers_file}: 'receive' must be a table")
    settings: dict[str, object] = {}
    for key, value in table.items():
        name = str(key).replace("-", "_")
        if name not in RECEIVE_KEYS:
            raise ConfigError(
                f"{peers_file}: [receive] has an unknown key {key!r}",
                hint="known keys: " + ", ".join(sorted(RECEIVE_KEYS)),
            )
        settings[name] = value
    return settings


def _as_list(value: object, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise UsageError(f"[receive] {key} must be a string or a list of strings")


def _optional_path(value: object) -> Path | None:
    return Path(str(value)) if value else None


@dataclass(frozen=True)
class ReceiveConfig:
    """Every ``receive`` setting, option > ``[receive]`` > default, as typed values.

    Sizes stay as given (``parse_size`` reads them where they are used); lists are
    tuples; the AE titles and the layout are checked here.
    """

    port: int | None = None
    ae: str = "DVDEXIT"
    host: str = "0.0.0.0"
    store: Path | None = None
    layout: str = DEFAULT_LAYOUT
    allow_ae: tuple[str, ...] = ()
    allow_from: tuple[str, ...] = ()
    max_associations: int = 10
    max_instance_size: str | int | None = None
    min_free: str | int = 0
    durability: str = "full"
    idle_timeout: float = 60.0
    on_complete: str | None = None
    commit_reply: tuple[str, ...] = ()
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    require_tls: bool = False
    forward_to: str | None = None
    reconcile: Path | None = None
    sr_to_pdf: bool = False
    group: str | None = None

    @property
    def fsync(self) -> bool:
        return self.durability == "full"

    @classmethod
    def merge(cls, options: Mapping[str, Any], table: Mapping[str, object]) -> ReceiveConfig:
        """``options`` (None or [] when not given) over ``table`` over the defaults."""
        merged: dict[str, Any] = {}
        for f in fields(cls):
            option = options.get(f.name)
            if option is not None and option != []:
                merged[f.name] = option
            elif f.name in table:
                merged[f.name] = table[f.name]
        for key in ("allow_ae", "allow_from", "commit_reply"):
            if key in merged:
                merged[key] = _as_list(merged[key], key)
        for key in ("store", "tls_cert", "tls_key", "tls_ca", "reconcile"):
            if key in merged:
                merged[key] = _optional_path(merged[key])
        for key in ("ae", "host", "layout", "durability", "on_complete", "forward_to", "group"):
            if merged.get(key):
                merged[key] = str(merged[key])
        if "max_associations" in merged:
            merged["max_associations"] = int(merged["max_associations"])
        if "idle_timeout" in merged:
            # Options arrive parsed; a [receive] value is read with the same grammar.
            merged["idle_timeout"] = units.parse_duration(
                merged["idle_timeout"], what="[receive] idle_timeout", positive=True
            )
        for key in ("require_tls", "sr_to_pdf"):
            if key in merged:
                merged[key] = bool(merged[key])
        return cls(**merged)

    def check(self) -> None:
        """UsageError for settings that cannot work (not needed to pull or re-run hooks)."""
        if self.durability not in ("full", "os"):
            raise UsageError(f"--durability: {self.durability!r} is not 'full' or 'os'")
        if self.require_tls and self.tls_cert is None:
            raise UsageError("--require-tls needs --tls-cert and --tls-key")
        try:
            validate_layout(self.layout)
        except ValueError as exc:
            raise UsageError(f"--layout {self.layout!r}: {exc}") from exc
        validate_ae_title(self.ae)
        for title in self.allow_ae:
            validate_ae_title(title, what="--allow-ae")
