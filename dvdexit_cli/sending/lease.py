"""The claim's lease: kept fresh from a background thread while a send or replay runs.

A claim names the run that may send an item; once its lease runs out (the run was
killed), another run may take the item. Released at the end, so a replay may take what
this run left open straight away.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from dvdexit_cli.errors import JournalError
from dvdexit_cli.journal import Journal

__all__ = ["Lease"]

log = logging.getLogger(__name__)


class Lease:
    """Keep a claim's lease fresh from a background thread; release the claim at the end."""

    def __init__(self, journal: Journal, claim: str, lease_seconds: float) -> None:
        self._journal = journal
        self._claim = claim
        self._lease = lease_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="dvdexit-lease", daemon=True)

    def _renew(self) -> None:
        while not self._stop.wait(self._lease / 3):
            try:
                self._journal.renew_claims(self._claim, lease_seconds=self._lease)
            except JournalError as exc:  # a busy journal now and then: the next round renews
                log.warning("could not renew the journal claim: %s", exc.message)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._journal.release_claims(self._claim)
