"""When is a received study complete? By Storage Commitment, or after an idle period.

A study named in a Storage Commitment request is complete once a request naming it is
answered with no failure at all; such a study is never completed by the idle timer (its
sender told us what the set is). Any other study is complete when no new instance of it
arrived for ``idle_timeout`` seconds. A new instance arriving after completion re-opens
the study, which then completes (and runs its hook) again.

Several receivers may share one journal. A study belongs to the receiver that stored
its latest new instance (``receiver``); a tracker completes only its own studies, with
its own idle timeout, hook and forward.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Protocol

from dvdexit_cli.audit import ReceiveAuditor
from dvdexit_cli.events import Observer, StudyCompleted, ignore
from dvdexit_cli.journal import Journal
from dvdexit_cli.journal.store import ReceivedStudy

__all__ = ["CompletenessTracker", "QueuedSink", "StudySink"]

log = logging.getLogger(__name__)


class StudySink(Protocol):
    """Takes complete studies (the hook runner, a forwarder): each journals what it owes
    before queueing it, and on ``start`` resumes what a stopped receiver left owed."""

    def start(self, *, receiver: str | None = None) -> None: ...

    def submit(self, study: ReceivedStudy) -> None: ...

    def stop(self, timeout: float) -> None: ...


class QueuedSink:
    """A study sink that journals each job before queueing it and works the queue, one
    study at a time, in a worker thread (the hook runner, a forwarder).

    Subclasses say how a job is journaled (``journal_job``), what a stopped receiver left
    owed (``owed``, queued again at ``start``) and how a job is done (``work``).
    """

    thread_name = "dvdexit-sink"

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self._queue: queue.Queue[tuple[ReceivedStudy, int] | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def journal_job(self, study: ReceivedStudy) -> int:
        raise NotImplementedError

    def owed(self, receiver: str | None) -> Iterable[tuple[ReceivedStudy, int]]:
        return ()

    def work(self, study: ReceivedStudy, job_id: int) -> object:
        raise NotImplementedError

    def start(self, *, receiver: str | None = None) -> None:
        """Queue what ``receiver`` was left owing, then start the worker."""
        for job in self.owed(receiver):
            self._queue.put(job)
        self._thread = threading.Thread(target=self._work, name=self.thread_name, daemon=True)
        self._thread.start()

    def submit(self, study: ReceivedStudy) -> None:
        """Journal the job for ``study`` as pending, then queue it."""
        self._queue.put((study, self.journal_job(study)))

    def stop(self, timeout: float) -> None:
        """Finish the queued jobs (up to ``timeout`` s); unfinished ones stay journaled."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)
        self._thread = None

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                self.work(*job)
            except Exception:  # one study's trouble must not stop the next
                log.exception("%s: study %s failed", self.thread_name, job[0].study_uid)


class CompletenessTracker:
    """Watches received studies, completes them, and hands each to its study sinks."""

    def __init__(
        self,
        *,
        journal: Journal,
        idle_timeout: float,
        sinks: Sequence[StudySink] = (),
        observer: Observer = ignore,
        audit: ReceiveAuditor | None = None,
        receiver: str | None = None,
    ) -> None:
        #: Which receiver's studies this tracker completes (None: any, for tools).
        self.receiver = receiver
        self._audit = audit
        self.sinks = tuple(sinks)
        self._journal = journal
        self._idle = idle_timeout
        self._observer = observer
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="dvdexit-idle", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def complete(self, study_uids: Iterable[str], *, completed_by: str) -> None:
        for uid in study_uids:
            study = self._journal.complete_study(
                uid, completed_by=completed_by, receiver=self.receiver
            )
            if study is None:
                continue  # already complete (its hook ran or is queued), or not ours
            log.info("study %s complete (%s): %d instances", uid, completed_by, study.instances)
            self._observer(
                StudyCompleted(study_uid=uid, instances=study.instances, completed_by=completed_by)
            )
            if self._audit is not None:
                try:
                    self._audit.study(self._journal, study)
                except Exception:  # the hook and forward must run whatever the audit does
                    self._audit.trail.failures += 1
                    log.exception("audit record of study %s could not be written", uid)
            for sink in self.sinks:
                sink.submit(study)

    def audit_unfinished(
        self,
        study_uids: Iterable[str],
        *,
        calling_ae: str,
        peer_address: str,
        detail: str,
        not_imported: Mapping[str, int] | None = None,
    ) -> None:
        """Audit studies whose import failed part way (they are not completed).

        ``calling_ae`` and ``peer_address`` name where the instances came from (the
        package), whatever sent earlier instances of the study; ``not_imported`` the
        instances per study the failure left unimported (counted as failures).
        """
        if self._audit is None:
            return
        for uid in study_uids:
            known = self._journal.study(uid)
            study = ReceivedStudy(
                study_uid=uid,
                calling_ae=calling_ae,
                peer_address=peer_address,
                folder=known.folder if known else "",
                last_at=known.last_at if known else "",
                state=known.state if known else "receiving",
                commit_requested=known.commit_requested if known else False,
                completed_by=None,
                instances=known.instances if known else 0,
            )
            try:
                self._audit.study(
                    self._journal,
                    study,
                    failed=(not_imported or {}).get(uid, 0),
                    failed_as="not_imported",
                    detail=detail,
                )
            except Exception:
                self._audit.trail.failures += 1
                log.exception("audit record of study %s could not be written", uid)

    def commitment_failed(
        self, result_studies: Iterable[str], failed: int, transaction: str
    ) -> None:
        """Audit studies whose commitment we answered with failures (they stay receiving)."""
        if self._audit is None:
            return
        for uid in sorted(result_studies):
            try:
                self._audit.commitment_failed(
                    self._journal, uid, failed=failed, transaction_uid=transaction
                )
            except Exception:
                self._audit.trail.failures += 1
                log.exception("audit record of study %s could not be written", uid)

    def check_idle(self, now: datetime | None = None) -> None:
        """Complete every receiving study idle for longer than the timeout."""
        now = now or datetime.now(UTC)
        idle = [
            s.study_uid
            for s in self._journal.studies(state="receiving", receiver=self.receiver)
            if not s.commit_requested
            and (now - datetime.fromisoformat(s.last_at)).total_seconds() >= self._idle
        ]
        self.complete(idle, completed_by="idle")

    def _watch(self) -> None:
        interval = min(1.0, max(0.05, self._idle / 4))
        while not self._stop.wait(interval):
            try:
                self.check_idle()
            except Exception:  # a journal hiccup must not end completeness tracking
                log.exception("idle check failed; trying again")
