"""Local verification: files on disk against the journal's digests, study by study."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dvdexit_cli.dicom.scan import ScanResult, scan
from dvdexit_cli.exitcodes import ExitCode
from dvdexit_cli.journal import Journal
from dvdexit_cli.sending.results import FileProblem

__all__ = ["VERDICTS", "VerifiedFile", "VerifyResult", "verify_paths"]

VERDICTS = ("identical", "different", "conflict", "missing", "unknown", "invalid")


@dataclass(frozen=True)
class VerifiedFile:
    path: str
    sop_instance_uid: str | None
    study_uid: str | None
    verdict: str  # identical, different, conflict, unknown, invalid
    reason: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "sop_instance_uid": self.sop_instance_uid,
            "study_uid": self.study_uid,
            "verdict": self.verdict,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class VerifyResult:
    files: tuple[VerifiedFile, ...]
    ignored: tuple[FileProblem, ...] = field(default=())
    elsewhere: tuple[VerifiedFile, ...] = field(default=())
    """Instances of the studies checked that were sent or stored from other paths (such
    as the reports and notes a send generated): not judged by this verification."""

    def count(self, verdict: str) -> int:
        return sum(f.verdict == verdict for f in self.files)

    @property
    def exit_code(self) -> ExitCode:
        bad = len(self.files) - self.count("identical")
        return ExitCode.OK if self.files and not bad else ExitCode.VERIFY_FAILED

    def studies(self) -> dict[str, dict[str, int]]:
        table: dict[str, dict[str, int]] = {}
        for f in self.files:
            row = table.setdefault(
                f.study_uid or "(unknown study)",
                dict.fromkeys(VERDICTS, 0),
            )
            row[f.verdict] += 1
        return table

    def study_status(self) -> dict[str, str]:
        """Per study: ``complete`` (all identical, none missing), ``incomplete`` (instances
        the journal recorded are missing) or ``different`` (anything else not identical)."""
        status = {}
        for study, counts in self.studies().items():
            if counts["missing"]:
                status[study] = "incomplete"
            elif sum(counts.values()) == counts["identical"]:
                status[study] = "complete"
            else:
                status[study] = "different"
        return status

    def to_json(self) -> dict[str, object]:
        return {
            "identical": self.count("identical"),
            "different": self.count("different"),
            "conflict": self.count("conflict"),
            "missing": self.count("missing"),
            "unknown": self.count("unknown"),
            "invalid": self.count("invalid"),
            "ignored": len(self.ignored),
            "studies": self.studies(),
            "study_status": self.study_status(),
            "problems": [f.to_json() for f in self.files if f.verdict != "identical"],
            "ignored_files": [i.to_json() for i in self.ignored],
            "elsewhere": len(self.elsewhere),
            "elsewhere_files": [f.to_json() for f in self.elsewhere],
            "exit_code": int(self.exit_code),
        }


def verify_paths(paths: Sequence[Path], *, journal: Journal) -> VerifyResult:
    """Check local files against the journal: each must parse and match a recorded digest.

    A file's digest is compared with what was last *sent* for its SOP Instance UID, or,
    for a file this machine received, with what the receiver *stored*. A file the journal
    does not know is ``unknown``: it cannot be verified, and verification fails. For each
    study found in a folder given, an instance the journal recorded as sent or stored from
    that folder that is not among the files is ``missing``: the study is incomplete there.
    Instances of those studies recorded at other paths (the SR and PDF copies a send
    generates under the data directory, another medium) are listed as ``elsewhere``, not
    judged. A receiver's temporaries in its store are skipped: they are no instances.
    """
    # Lazily: receive/ sits above verify/ (its forwarder imports sending/), and the
    # store's temporary-name rules have no lower home yet.
    from dvdexit_cli.receive.store import is_store_temporary

    scanned = scan(list(paths), deduplicate=False)
    found = ScanResult(
        instances=[i for i in scanned.instances if not is_store_temporary(i.path)],
        rejected=[r for r in scanned.rejected if not is_store_temporary(r.path)],
        unpacked=scanned.unpacked,
    )
    uids = [i.sop_instance_uid for i in found.instances]
    sent = journal.sent_digests(uids)
    received = journal.received_digests(uids)
    conflicts = journal.conflict_digests(uids)
    files: list[VerifiedFile] = []
    for inst in found.instances:
        expected = sent.get(inst.sop_instance_uid) or received.get(inst.sop_instance_uid)
        if expected == inst.digest:
            verdict, reason = "identical", None
        elif inst.digest in conflicts.get(inst.sop_instance_uid, ()):
            verdict, reason = (
                "conflict",
                (
                    "kept aside by the receiver: another instance with this SOP Instance UID "
                    "and other content is stored"
                ),
            )
        elif expected is None:
            verdict, reason = "unknown", "not in the journal (never sent or received here)"
        else:
            verdict, reason = "different", "dataset digest differs from the journal's"
        files.append(
            VerifiedFile(str(inst.path), inst.sop_instance_uid, inst.study_uid, verdict, reason)
        )
    missing, elsewhere = _not_among(paths, found, {f.sop_instance_uid for f in files}, journal)
    files.extend(missing)
    ignored = []
    for rejected in found.rejected:
        if rejected.disposition == "failed":
            files.append(
                VerifiedFile(
                    str(rejected.path),
                    rejected.sop_instance_uid,
                    None,
                    "invalid",
                    rejected.reason,
                )
            )
        else:
            ignored.append(
                FileProblem(str(rejected.path), rejected.sop_instance_uid, rejected.reason)
            )
    return VerifyResult(tuple(files), tuple(ignored), tuple(elsewhere))


def _not_among(
    paths: Sequence[Path], found: ScanResult, present: set[str | None], journal: Journal
) -> tuple[list[VerifiedFile], list[VerifiedFile]]:
    """Instances the journal recorded for the studies found in the folders checked that
    are not among the files: ``missing`` inside those folders, ``elsewhere`` outside."""
    # Completeness is asked of folders (a store, a medium), not of single files.
    folders = [p.resolve() for p in paths if p.is_dir()]
    in_folders = {
        i.study_uid
        for i in found.instances
        if any(i.path.resolve().is_relative_to(folder) for folder in folders)
    }
    recorded = journal.recorded_instances(in_folders)
    missing: list[VerifiedFile] = []
    elsewhere: list[VerifiedFile] = []
    for study_uid, instances in sorted(recorded.items()):
        for sop_uid, path in sorted(instances.items()):
            if sop_uid in present:
                continue
            if _recorded_inside(path, folders):
                missing.append(
                    VerifiedFile(
                        path,
                        sop_uid,
                        study_uid,
                        "missing",
                        "recorded in the journal as sent or stored, not among the files checked",
                    )
                )
            else:
                elsewhere.append(
                    VerifiedFile(
                        path,
                        sop_uid,
                        study_uid,
                        "elsewhere",
                        "sent or stored from a path outside the folders checked "
                        "(for example a report or note generated for the send)",
                    )
                )
    return missing, elsewhere


def _recorded_inside(path: str, folders: Sequence[Path]) -> bool:
    """Whether a journaled path lies in one of ``folders`` (resolved).

    A relative path (recorded from wherever that send ran) cannot be placed: it counts as
    inside, so an instance lost from a folder is never excused for want of knowing.
    """
    recorded = Path(path)
    if not recorded.is_absolute():
        return True
    real = recorded.resolve()
    return any(real.is_relative_to(folder) for folder in folders)
