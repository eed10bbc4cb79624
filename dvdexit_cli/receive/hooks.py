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
import shlex
import subprocess
from collections.abc import Iterable

from dvdexit_cli.errors import UsageError
from dvdexit_cli.events import HookFinished, Observer, ignore
from dvdexit_cli.journal import Journal
from dvdexit_cli.journal.store import ReceivedStudy
from dvdexit_cli.receive.completeness import QueuedSink

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


class HookRunner(QueuedSink):
    """Runs the hook for complete studies, one at a time, in a worker thread.

    At ``start`` it runs again the runs of its receiver's studies that a crash cut off
    (journaled 'running', never finished): listening and ``--watch`` alike.
    """

    thread_name = "dvdexit-hooks"

    def __init__(
        self,
        command: str,
        *,
        journal: Journal,
        observer: Observer = ignore,
        timeout: float | None = 3600.0,
    ) -> None:
        super().__init__(journal)
        self.command = command
        self._argv = parse_hook_command(command)
        self._observer = observer
        self._timeout = timeout

    def journal_job(self, study: ReceivedStudy) -> int:
        return self._journal.start_hook_run(study.study_uid, self.command)

    def owed(self, receiver: str | None) -> Iterable[tuple[ReceivedStudy, int]]:
        for study in self._journal.studies_with_failed_hooks(receiver=receiver):
            runs = self._journal.hook_runs(study.study_uid)
            if runs and runs[-1]["outcome"] == "running":
                yield study, self.journal_job(study)

    def work(self, study: ReceivedStudy, job_id: int) -> bool:
        return self.run(study, job_id)

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
