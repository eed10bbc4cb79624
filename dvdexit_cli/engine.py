"""Kept for one release: the engine was split into ``dvdexit_cli.sending`` and
``dvdexit_cli.verify`` (see docs/design.md, Layout). Import from those instead."""

from dvdexit_cli.sending import (
    DEFAULT_BATCH_BYTES,
    DEFAULT_BATCH_SIZE,
    AbandonResult,
    FileProblem,
    RetryResult,
    RetrySettings,
    SendPlan,
    SendResult,
    SendSettings,
    SeriesPlan,
    abandon,
    batches,
    plan_send,
    retry_failed,
    send,
)
from dvdexit_cli.verify.local import VERDICTS, VerifiedFile, VerifyResult, verify_paths

__all__ = [
    "DEFAULT_BATCH_BYTES",
    "DEFAULT_BATCH_SIZE",
    "VERDICTS",
    "AbandonResult",
    "FileProblem",
    "RetryResult",
    "RetrySettings",
    "SendPlan",
    "SendResult",
    "SendSettings",
    "SeriesPlan",
    "VerifiedFile",
    "VerifyResult",
    "abandon",
    "batches",
    "plan_send",
    "retry_failed",
    "send",
    "verify_paths",
]
