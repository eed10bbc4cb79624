"""Receiving: a Storage SCP over a durable, path-safe instance store."""

from dvdexit_cli.receive.scp import ReceiveSettings, StorageServer
from dvdexit_cli.receive.store import InstanceStore, PutResult, RefusedInstance

__all__ = ["InstanceStore", "PutResult", "ReceiveSettings", "RefusedInstance", "StorageServer"]
