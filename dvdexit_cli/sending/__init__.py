"""Sending: one send, its dry run, the replay of what sends left open, and abandoning.

Named ``sending`` rather than ``send``: ``dvdexit_cli.send`` is the public function.
The modules, lowest first: ``settings``, ``results``, ``lease``, ``inputs``, ``rounds``
(the one retry loop), ``workers`` (processes for DIMSE), ``plan`` (dry run),
``transfer`` (``send``), ``replay`` (``retry_failed``), ``abandon``.
"""

from dvdexit_cli.sending.abandon import abandon
from dvdexit_cli.sending.plan import SendPlan, SeriesPlan, plan_send
from dvdexit_cli.sending.replay import retry_failed
from dvdexit_cli.sending.results import (
    AbandonResult,
    FileProblem,
    RetryResult,
    SendResult,
    resume_command,
)
from dvdexit_cli.sending.rounds import batches
from dvdexit_cli.sending.settings import (
    DEFAULT_BATCH_BYTES,
    DEFAULT_BATCH_SIZE,
    RetrySettings,
    SendSettings,
    TransportFactory,
)
from dvdexit_cli.sending.transfer import send

__all__ = [
    "DEFAULT_BATCH_BYTES",
    "DEFAULT_BATCH_SIZE",
    "AbandonResult",
    "FileProblem",
    "RetryResult",
    "RetrySettings",
    "SendPlan",
    "SendResult",
    "SendSettings",
    "SeriesPlan",
    "TransportFactory",
    "abandon",
    "batches",
    "plan_send",
    "resume_command",
    "retry_failed",
    "send",
]
