"""Peer secrets: one lookup chain, never logged, never on argv, never in peers.toml.

The chain, first match wins:

1. the environment variable ``DVDEXIT_SECRET_<NAME>`` (the peer name upper-cased, every
   character other than a letter or digit as ``_``): for cron and other headless runs;
2. the OS keyring, service ``dvdexit``, user name = the peer name (``dvdexit peers
   login NAME`` stores it there).

When neither has it, ``ConfigError`` (exit 3) names both ways. Nothing here prompts:
``dvdexit peers login`` prompts (without echo) only when stdin is a terminal. A secret
travels as a ``Secret``, whose ``repr`` and ``str`` hide it, so it cannot leak through a
log line, an f-string or a traceback by accident.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dvdexit_cli.errors import ConfigError

__all__ = [
    "SERVICE",
    "KeyringStatus",
    "Secret",
    "delete_secret",
    "env_var_name",
    "keyring_status",
    "lookup_secret",
    "secret_source",
    "store_secret",
]

SERVICE = "dvdexit"
_HEADLESS = (
    "on a server without a desktop keyring, either set the environment variable {env} "
    "for the dvdexit process (cron: in the crontab or a root-only environment file), or "
    "install the 'keyrings.alt' package and select its file backend with "
    "PYTHON_KEYRING_BACKEND=keyrings.alt.file.PlaintextKeyring (readable by this user "
    "only; EncryptedKeyring asks for a password)"
)


class Secret:
    """A secret value that never shows itself in ``repr``, ``str`` or formatting."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself: only for the one place that sends it to the peer."""
        return self._value

    def __repr__(self) -> str:
        return "Secret(<hidden>)"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return "<hidden>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))


def env_var_name(peer_name: str) -> str:
    """``DVDEXIT_SECRET_<NAME>`` for a peer: upper case, other characters as ``_``."""
    return "DVDEXIT_SECRET_" + re.sub(r"[^A-Za-z0-9]", "_", peer_name).upper()


@dataclass(frozen=True)
class KeyringStatus:
    """Which keyring backend is in force, and whether it can hold secrets."""

    usable: bool
    backend: str


def _keyring() -> Any:
    import keyring  # imported late: it probes backends (D-Bus, ...) on import

    return keyring


def keyring_status() -> KeyringStatus:
    """Detect whether the OS keyring has a usable backend (a headless server often has none)."""
    try:
        keyring = _keyring()
        backend = keyring.get_keyring()
    except Exception as exc:  # a broken backend module must not crash dvdexit
        return KeyringStatus(False, f"unavailable ({type(exc).__name__})")
    name = f"{type(backend).__module__}.{type(backend).__qualname__}"
    from keyring.backends import fail

    if isinstance(backend, fail.Keyring):
        return KeyringStatus(False, name)
    # A chainer with nothing behind it is as good as none.
    children = getattr(backend, "backends", None)
    if children is not None and not children:
        return KeyringStatus(False, name)
    return KeyringStatus(True, name)


def _require_keyring(peer_name: str) -> Any:
    status = keyring_status()
    if not status.usable:
        raise ConfigError(
            f"no usable OS keyring on this machine (backend: {status.backend})",
            hint=_HEADLESS.format(env=env_var_name(peer_name)),
        )
    return _keyring()


def secret_source(peer_name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """Where the secret of ``peer_name`` would come from ("environment", "keyring"), or None."""
    env = os.environ if environ is None else environ
    if env.get(env_var_name(peer_name)):
        return "environment"
    status = keyring_status()
    if status.usable:
        try:
            if _keyring().get_password(SERVICE, peer_name) is not None:
                return "keyring"
        except Exception:  # a locked or broken keyring: report "not found", do not crash
            return None
    return None


def lookup_secret(peer_name: str, environ: Mapping[str, str] | None = None) -> Secret:
    """The secret of ``peer_name`` from the chain; ConfigError (exit 3) naming both ways."""
    env = os.environ if environ is None else environ
    variable = env_var_name(peer_name)
    value = env.get(variable)
    if value:
        return Secret(value)
    status = keyring_status()
    if status.usable:
        try:
            stored = _keyring().get_password(SERVICE, peer_name)
        except Exception as exc:
            raise ConfigError(
                f"the OS keyring ({status.backend}) could not be read: {type(exc).__name__}",
                hint=f"unlock the keyring, or set {variable}",
            ) from None  # the keyring's own message may echo what it was handling
        if stored is not None:
            return Secret(stored)
        where = f"the OS keyring ({status.backend}) has no secret for it"
    else:
        where = f"there is no usable OS keyring (backend: {status.backend})"
    raise ConfigError(
        f"no secret for peer {peer_name!r}: {variable} is not set and {where}",
        hint=f"run 'dvdexit peers login {peer_name}' in a terminal, or set {variable} "
        f"for headless use",
    )


def store_secret(peer_name: str, secret: Secret) -> str:
    """Store the secret of ``peer_name`` in the OS keyring; returns the backend's name."""
    keyring = _require_keyring(peer_name)
    try:
        keyring.set_password(SERVICE, peer_name, secret.reveal())
    except Exception as exc:
        raise ConfigError(
            f"the OS keyring could not store the secret: {type(exc).__name__}",
            hint=_HEADLESS.format(env=env_var_name(peer_name)),
        ) from None
    return keyring_status().backend


def delete_secret(peer_name: str) -> bool:
    """Remove the keyring entry of ``peer_name``; False when there was none (or no keyring)."""
    if not keyring_status().usable:
        return False
    keyring = _keyring()
    try:
        keyring.delete_password(SERVICE, peer_name)
    except Exception:  # PasswordDeleteError: nothing stored
        return False
    return True
