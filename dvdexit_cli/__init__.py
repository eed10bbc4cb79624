"""dvdexit: send, receive, verify and track radiology studies between hospitals.

The library never prints and never configures logging; it reports progress through
events (``dvdexit_cli.events``) and raises the exceptions of ``dvdexit_cli.errors``.
"""

import logging

from dvdexit_cli.audit import AuditTrail, TransferAuditor, read_audit
from dvdexit_cli.config import (
    AnyPeer,
    DicomWebPeer,
    DimsePeer,
    FolderPeer,
    Paths,
    PeerBook,
    resolve_paths,
)
from dvdexit_cli.dicom.digest import dataset_digest
from dvdexit_cli.dicom.scan import Instance, Rejected, ScanResult, scan
from dvdexit_cli.errors import (
    AssociationRejectedError,
    ConfigError,
    DvdexitError,
    InputError,
    JournalBusyError,
    JournalError,
    NoDicomFoundError,
    PeerError,
    PeerUnreachableError,
    UnknownPeerError,
    UsageError,
    VerificationError,
)
from dvdexit_cli.exitcodes import ExitCode
from dvdexit_cli.journal import Journal
from dvdexit_cli.package import verify_package, write_package
from dvdexit_cli.receive import InstanceStore, ReceiveSettings, StorageServer
from dvdexit_cli.sending import SendResult, SendSettings, send
from dvdexit_cli.transport import StoreOutcome, Transport
from dvdexit_cli.transport.dicomweb import DicomwebTransport
from dvdexit_cli.transport.dimse import DimseTransport
from dvdexit_cli.transport.factory import transport_for
from dvdexit_cli.transport.folder import FolderTransport
from dvdexit_cli.transport.memory import MemoryPeer, MemoryTransport
from dvdexit_cli.verify import VerifyResult, verify_paths

__version__ = "0.1.0"

# The library logs, but never decides where logs go: that is the application's choice.
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "AnyPeer",
    "AssociationRejectedError",
    "AuditTrail",
    "ConfigError",
    "DicomWebPeer",
    "DicomwebTransport",
    "DimsePeer",
    "DimseTransport",
    "DvdexitError",
    "ExitCode",
    "FolderPeer",
    "FolderTransport",
    "InputError",
    "Instance",
    "InstanceStore",
    "Journal",
    "JournalBusyError",
    "JournalError",
    "MemoryPeer",
    "MemoryTransport",
    "NoDicomFoundError",
    "Paths",
    "PeerBook",
    "PeerError",
    "PeerUnreachableError",
    "ReceiveSettings",
    "Rejected",
    "ScanResult",
    "SendResult",
    "SendSettings",
    "StorageServer",
    "StoreOutcome",
    "TransferAuditor",
    "Transport",
    "UnknownPeerError",
    "UsageError",
    "VerificationError",
    "VerifyResult",
    "__version__",
    "dataset_digest",
    "read_audit",
    "resolve_paths",
    "scan",
    "send",
    "transport_for",
    "verify_package",
    "verify_paths",
    "write_package",
]
