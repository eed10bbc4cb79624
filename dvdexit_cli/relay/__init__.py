"""Relaying: what knows both receiving and sending (forwarding complete studies onward)."""

from dvdexit_cli.relay.forward import Forwarder, forwarder_for

__all__ = ["Forwarder", "forwarder_for"]
