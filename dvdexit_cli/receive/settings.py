"""Receiver settings from options and from the ``[receive]`` table of peers.toml.

Options win over the file. The table's keys are the long option names with dashes or
underscores (``allow-ae``, ``allow_from``, ``min-free`` ...); list options take TOML
arrays. Sizes and durations follow :mod:`dvdexit_cli.units` (``500M``, ``2G``; ``90s``, ``2m``).
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

from dvdexit_cli import units
from dvdexit_cli.config import parse_host_port, validate_ae_title
from dvdexit_cli.errors import ConfigError, UsageError

__all__ = [
    "RECEIVE_KEYS",
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
