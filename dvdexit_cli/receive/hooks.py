"""The on-complete hook: a command run once per complete study, its outcome journaled.

The command is split like a shell would (``shlex``) but run without a shell; wrap it in
``sh -c '...'`` for pipes or redirections. It gets the study in its environment:
DVDEXIT_STUDY_UID, DVDEXIT_STUDY_DIR, DVDEXIT_INSTANCE_COUNT, DVDEXIT_CALLING_AE and
DVDEXIT_COMPLETED_BY (``commitment``, ``idle`` or ``package``), and, when the sender
gave them (a transfer-note SR in the study, or a package manifest), DVDEXIT_NOTE,
DVDEXIT_REASON and DVDEXIT_RECIPIENT: untrusted text from the sending site, cleaned of
control characters and cut at 1,024 characters (quote them; never evaluate them). Its
standard output and error go to the receiver's standard error. A run is journaled as
``running`` before it starts, so a run cut off by a crash is found again (``dvdexit
receive --rerun-hooks``); a failing hook never touches the stored instances.
"""

from __future__ import annotations

import logging
import os
import queue
import shlex
import subprocess
import threading

from dvdexit_cli.errors import UsageError
from dvdexit_cli.events import HookFinished, Observer, ignore
from dvdexit_cli.journal import Journal
from dvdexit_cli.journal.store import ReceivedStudy

__all__ = ["HookRunner", "parse_hook_command"]

log = logging.getLogger(__name__)


def parse_hook_command(command: str) -> list[str]:
    """Split ``command`` into argv; UsageError when it is empty or badly quoted."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise UsageError(f"--on-complete: {exc}", hint="check the quoting") from exc
    if not argv:
        raise UsageError("--on-complete: the command is empty")
    return argv


class HookRunner:
    """Runs the hook for complete studies, one at a time, in a worker thread."""

    def __init__(
        self,
        command: str,
        *,
        journal: Journal,
        observer: Observer = ignore,
        timeout: float | None = 3600.0,
    ) -> None:
        self.command = command
        self._argv = parse_hook_command(command)
        self._journal = journal
        self._observer = observer
        self._timeout = timeout
        self._queue: queue.Queue[tuple[ReceivedStudy, int] | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self, *, receiver: str | None = None) -> None:
        """Start the worker, and queue again the runs of ``receiver``'s studies that a
        crash cut off (journaled 'running', never finished): listening and ``--watch``
        alike, as a forwarder resumes its own forwards."""
        self._thread = threading.Thread(target=self._work, name="dvdexit-hooks", daemon=True)
        self._thread.start()
        for study in self._journal.studies_with_failed_hooks(receiver=receiver):
            runs = self._journal.hook_runs(study.study_uid)
            if runs and runs[-1]["outcome"] == "running":
                self.submit(study)

    def submit(self, study: ReceivedStudy) -> None:
        """Journal a pending run for ``study`` and queue it."""
        run_id = self._journal.start_hook_run(study.study_uid, self.command)
        self._queue.put((study, run_id))

    def stop(self, timeout: float) -> None:
        """Finish the queued runs (up to ``timeout`` s); unfinished ones stay 'running'."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)
        self._thread = None

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            self.run(*job)

    def run(self, study: ReceivedStudy, run_id: int) -> bool:
        """Run the hook for ``study`` now, journal its outcome; True when it exited 0."""
        env = dict(os.environ)
        env.update(
            DVDEXIT_STUDY_UID=study.study_uid,
            DVDEXIT_STUDY_DIR=study.folder,
            DVDEXIT_INSTANCE_COUNT=str(study.instances),
            DVDEXIT_CALLING_AE=study.calling_ae,
            DVDEXIT_COMPLETED_BY=study.completed_by or "",
        )
        for key in ("DVDEXIT_NOTE", "DVDEXIT_REASON", "DVDEXIT_RECIPIENT"):
            env.pop(key, None)  # never inherited from the receiver's own environment
        note = self._journal.study_note(study.study_uid) or {}
        for key in ("note", "reason", "recipient"):
            if note.get(key):
                env[f"DVDEXIT_{key.upper()}"] = str(note[key])
        status: int | None = None
        error: str | None = None
        try:
            done = subprocess.run(
                self._argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=2,  # the receiver's stderr: the service's log
                timeout=self._timeout,
                check=False,
            )
            status = done.returncode
            if status != 0:
                error = f"exited with status {status}"
        except subprocess.TimeoutExpired:
            error = f"did not finish within {self._timeout:g} s and was killed"
        except OSError as exc:
            error = f"could not run {self._argv[0]}: {exc.strerror or exc}"
        if error:
            log.error("on-complete hook for study %s: %s", study.study_uid, error)
        self._journal.finish_hook_run(run_id, exit_status=status, error=error)
        self._observer(HookFinished(study_uid=study.study_uid, exit_status=status, error=error))
        return error is None
