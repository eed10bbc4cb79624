"""The SQLite journal: every transfer, every item, every received instance."""

from dvdexit_cli.journal.store import (
    ItemRecord,
    Journal,
    TransferSummary,
)

__all__ = ["ItemRecord", "Journal", "TransferSummary"]
