"""Transports: how instances reach a peer. One protocol, several implementations."""

from dvdexit_cli.transport.base import StoreOutcome, Transport

__all__ = ["StoreOutcome", "Transport"]
