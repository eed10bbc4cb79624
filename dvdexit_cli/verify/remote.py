"""Remote verification: prove what a DIMSE peer holds, with the strongest checks it supports.

Three checks, each used when the peer accepts it (one probe association finds out):

* ``c-find``: the SOP Instance UIDs the peer lists per study (missing and extra);
* ``storage-commitment``: the peer's own statement that it holds each instance;
  committed items become ``committed`` in the journal;
* ``c-get``: each instance fetched back and its dataset digest compared with the
  sender's; when they differ, an element-by-element comparison tells a re-encoded but
  equivalent copy from a different one.

A peer that supports none of them cannot be verified remotely: the result says so and
its exit code is 7 (verification failed), never 0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from dvdexit_cli.config import DicomWebPeer, DimsePeer, LocalSettings
from dvdexit_cli.dicom.digest import MalformedFileError, NotPart10Error, dataset_digest
from dvdexit_cli.dicom.scan import scan
from dvdexit_cli.errors import InputError, PeerError, PeerUnreachableError
from dvdexit_cli.exitcodes import ExitCode
from dvdexit_cli.journal import Journal
from dvdexit_cli.transport.dicomweb import (
    CHECK_QIDO,
    CHECK_WADO,
    retrieve_instance,
    study_instances,
)
from dvdexit_cli.transport.dimse_query import (
    CHECK_COMMIT,
    CHECK_FIND,
    CHECK_GET,
    compare_datasets,
    find_study_instances,
    probe_checks,
    request_commitment,
    retrieve_study,
    temporary_folder,
)
from dvdexit_cli.transport.memory import MemoryPeer

__all__ = [
    "REMOTE_VERDICTS",
    "Expected",
    "RemoteVerdict",
    "RemoteVerifyResult",
    "expected_from_journal",
    "expected_from_paths",
    "verify_remote",
    "verify_remote_dicomweb",
    "verify_remote_memory",
]

REMOTE_VERDICTS = ("identical", "equivalent", "present", "missing", "different", "extra")
_ALL_CHECKS = (CHECK_FIND, CHECK_COMMIT, CHECK_GET)
_FAILURE_REASONS = {
    0x0110: "processing failure",
    0x0112: "no such object instance",
    0x0119: "class-instance conflict",
    0x0122: "referenced SOP class not supported",
    0x0131: "duplicate transaction UID",
    0x0213: "resource limitation",
}


@dataclass(frozen=True)
class Expected:
    """One instance that should be at the peer, as the sender knows it."""

    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    transfer_syntax: str
    digest: str
    path: str


@dataclass(frozen=True)
class RemoteVerdict:
    sop_instance_uid: str
    study_uid: str
    verdict: str
    reason: str | None = None
    committed: bool | None = None
    path: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "sop_instance_uid": self.sop_instance_uid,
            "study_uid": self.study_uid,
            "verdict": self.verdict,
            "reason": self.reason,
            "committed": self.committed,
            "path": self.path,
        }


@dataclass
class RemoteVerifyResult:
    peer: str
    checks_used: list[str] = field(default_factory=list)
    checks_unavailable: dict[str, str] = field(default_factory=dict)
    verdicts: list[RemoteVerdict] = field(default_factory=list)

    def count(self, verdict: str) -> int:
        return sum(v.verdict == verdict for v in self.verdicts)

    @property
    def verifiable(self) -> bool:
        return bool(self.checks_used)

    @property
    def exit_code(self) -> ExitCode:
        if not self.verifiable or not self.verdicts:
            return ExitCode.VERIFY_FAILED
        if self.count("missing") or self.count("different"):
            return ExitCode.VERIFY_FAILED
        return ExitCode.OK

    def studies(self) -> dict[str, dict[str, int]]:
        table: dict[str, dict[str, int]] = {}
        for v in self.verdicts:
            table.setdefault(v.study_uid, dict.fromkeys(REMOTE_VERDICTS, 0))[v.verdict] += 1
        return table

    def to_json(self) -> dict[str, object]:
        return {
            "peer": self.peer,
            "verifiable": self.verifiable,
            "checks_used": self.checks_used,
            "checks_unavailable": self.checks_unavailable,
            **{name: self.count(name) for name in REMOTE_VERDICTS},
            "committed": sum(v.committed is True for v in self.verdicts),
            "studies": {
                study: {
                    "counts": counts,
                    "instances": [v.to_json() for v in self.verdicts if v.study_uid == study],
                }
                for study, counts in sorted(self.studies().items())
            },
            "exit_code": int(self.exit_code),
        }


def _refused(exc: PeerError) -> str:
    return f"refused in use: {exc.message}" + (f" ({exc.hint})" if exc.hint else "")


def expected_from_journal(
    journal: Journal, *, transfer_id: int | None = None, study_uids: Sequence[str] = ()
) -> list[Expected]:
    """What the journal says was sent (one transfer, or some studies)."""
    rows = journal.sent_instances(transfer_id=transfer_id, study_uids=study_uids)
    return [
        Expected(
            sop_instance_uid=str(r["sop_instance_uid"]),
            sop_class_uid=str(r["sop_class_uid"]),
            study_uid=str(r["study_uid"]),
            transfer_syntax=str(r["transfer_syntax"]),
            digest=str(r["digest"]),
            path=str(r["path"]),
        )
        for r in rows
        if r["sop_instance_uid"] and r["digest"]
    ]


def expected_from_paths(paths: Sequence[Path]) -> list[Expected]:
    """What these local files hold (the files a send would read)."""
    found = scan(list(paths))
    return [
        Expected(
            i.sop_instance_uid,
            i.sop_class_uid,
            i.study_uid,
            i.transfer_syntax,
            i.digest,
            str(i.path),
        )
        for i in found.instances
    ]


def _by_study(expected: Sequence[Expected]) -> dict[str, list[Expected]]:
    """The instances to verify, by study. InputError when there are none."""
    if not expected:
        raise InputError(
            "nothing to verify: no sent instance matches",
            hint="name a transfer ('dvdexit status' lists them), a study UID, or DICOM files",
        )
    studies: dict[str, list[Expected]] = {}
    for item in expected:
        studies.setdefault(item.study_uid, []).append(item)
    return studies


def verify_remote(
    peer: DimsePeer,
    expected: Sequence[Expected],
    *,
    local: LocalSettings,
    journal: Journal | None = None,
    transfer_id: int | None = None,
    timeout: float = 30.0,
    commit_timeout: float = 30.0,
    checks: Sequence[str] = _ALL_CHECKS,
    on_check: Callable[[str], None] = lambda _name: None,
) -> RemoteVerifyResult:
    """Verify ``expected`` at ``peer`` with every check in ``checks`` the peer supports."""
    studies = _by_study(expected)
    result = RemoteVerifyResult(peer=peer.name)
    accepted = probe_checks(peer, timeout=timeout)
    for name in _ALL_CHECKS:
        if name not in checks:
            result.checks_unavailable[name] = "not requested"
        elif not accepted[name]:
            result.checks_unavailable[name] = "the peer does not accept it"

    listed: dict[str, dict[str, str]] | None = None
    if CHECK_FIND in checks and accepted[CHECK_FIND]:
        on_check(CHECK_FIND)
        listed = _listed(peer, studies, result, timeout=timeout)
    committed: set[str] | None = None
    commit_failed: dict[str, int] = {}
    if CHECK_COMMIT in checks and accepted[CHECK_COMMIT]:
        on_check(CHECK_COMMIT)
        committed, commit_failed = _committed(
            peer,
            expected,
            result,
            local=local,
            journal=journal,
            transfer_id=transfer_id,
            commit_timeout=commit_timeout,
        )
    fetched: dict[str, str] = {}  # SOP Instance UID -> identical / equivalent / different
    fetch_notes: dict[str, str] = {}
    if CHECK_GET in checks and accepted[CHECK_GET]:
        on_check(CHECK_GET)
        _fetch(peer, studies, result, fetched, fetch_notes, timeout=timeout)

    _judge(
        result,
        expected,
        listed=listed,
        committed=committed,
        commit_failed=commit_failed,
        fetched=fetched if CHECK_GET in result.checks_used else None,
        fetch_notes=fetch_notes,
        list_check="C-FIND",
        fetch_check="C-GET",
    )
    return result


def _listed(
    peer: DimsePeer,
    studies: Mapping[str, list[Expected]],
    result: RemoteVerifyResult,
    *,
    timeout: float,
) -> dict[str, dict[str, str]] | None:
    """The C-FIND check: the instances the peer lists per study (None: unavailable)."""
    try:
        listed = {study: find_study_instances(peer, study, timeout=timeout) for study in studies}
    except PeerError as exc:
        # Accepted in negotiation but refused in use (an AE the peer does not know,
        # for example): this check is unavailable; the others may still work.
        result.checks_unavailable[CHECK_FIND] = _refused(exc)
        return None
    result.checks_used.append(CHECK_FIND)
    return listed


def _committed(
    peer: DimsePeer,
    expected: Sequence[Expected],
    result: RemoteVerifyResult,
    *,
    local: LocalSettings,
    journal: Journal | None,
    transfer_id: int | None,
    commit_timeout: float,
) -> tuple[set[str] | None, dict[str, int]]:
    """The storage commitment check: the instances the peer commits to, and the failed
    ones with their reasons (None: unavailable). Committed items are journaled."""
    try:
        answer = request_commitment(
            peer,
            [(e.sop_class_uid, e.sop_instance_uid) for e in expected],
            local=local,
            timeout=commit_timeout,
        )
    except PeerError as exc:
        result.checks_unavailable[CHECK_COMMIT] = _refused(exc)
        return None, {}
    if not answer.answered:
        where = (
            f"on the same association or at port {local.port}"
            if local.port is not None
            else "on the same association ([local] port is not set, so the peer "
            "could not open one to us)"
        )
        result.checks_unavailable[CHECK_COMMIT] = (
            f"the peer accepted the request but sent no report within {commit_timeout:g} s {where}"
        )
        return None, {}
    result.checks_used.append(CHECK_COMMIT)
    if journal is not None and answer.committed:
        journal.mark_committed(answer.committed, transfer_id=transfer_id)
    return answer.committed, answer.failed


def _fetch(
    peer: DimsePeer,
    studies: Mapping[str, list[Expected]],
    result: RemoteVerifyResult,
    fetched: dict[str, str],
    fetch_notes: dict[str, str],
    *,
    timeout: float,
) -> None:
    """The C-GET check: each instance fetched back and compared, into ``fetched`` (a
    verdict per SOP Instance UID) and ``fetch_notes``; emptied when the peer refuses."""
    with temporary_folder() as tmp:
        for study, items in studies.items():
            folder = Path(tmp) / f"s{len(fetched)}"
            folder.mkdir()
            classes: dict[str, set[str]] = {}
            for e in items:
                classes.setdefault(e.sop_class_uid, set()).add(e.transfer_syntax)
            try:
                received, broken = retrieve_study(
                    peer, study, folder, sop_classes=classes, timeout=timeout
                )
            except PeerError as exc:
                result.checks_unavailable[CHECK_GET] = _refused(exc)
                fetched.clear()
                break
            for e in items:
                got = received.get(e.sop_instance_uid)
                if e.sop_instance_uid in broken:
                    fetched[e.sop_instance_uid] = "different"
                    fetch_notes[e.sop_instance_uid] = broken[e.sop_instance_uid]
                elif got is None:
                    continue
                else:
                    verdict, note = _compare(e, got.path, got.digest, got.transfer_syntax)
                    fetched[e.sop_instance_uid] = verdict
                    if note:
                        fetch_notes[e.sop_instance_uid] = note
        else:
            result.checks_used.append(CHECK_GET)


def _compare(
    e: Expected, got_path: Path, got_digest: str, got_syntax: str
) -> tuple[str, str | None]:
    """identical / equivalent / different for one retrieved copy, with the reason."""
    if got_digest == e.digest:
        return "identical", None
    try:
        differing = compare_datasets(Path(e.path), got_path)
    except InputError as exc:
        return "different", (
            "dataset digest differs from the one sent, and the element comparison was "
            f"impossible: {exc.message}"
        )
    if differing:
        shown = ", ".join(differing[:5])
        more = f" and {len(differing) - 5} more" if len(differing) > 5 else ""
        return "different", f"content differs from what was sent: {shown}{more}"
    return "equivalent", (
        f"re-encoded by the peer (sent as {e.transfer_syntax}, held as {got_syntax}); "
        f"every element is equal"
    )


def _judge(
    result: RemoteVerifyResult,
    expected: Sequence[Expected],
    *,
    listed: Mapping[str, Mapping[str, object]] | None,
    committed: set[str] | None,
    commit_failed: Mapping[str, int],
    fetched: Mapping[str, str] | None,
    fetch_notes: Mapping[str, str],
    list_check: str,
    fetch_check: str,
) -> None:
    """One verdict per expected instance (and per extra one) from what the checks found."""
    for e in expected:
        uid = e.sop_instance_uid
        is_committed = None if committed is None else uid in committed
        reason: str | None
        if listed is not None and uid not in listed.get(e.study_uid, {}):
            verdict, reason = "missing", f"not listed by the peer's {list_check}"
        elif uid in commit_failed:
            code = commit_failed[uid]
            verdict = "missing"
            reason = (
                f"the peer does not commit to holding it "
                f"({code:04X} {_FAILURE_REASONS.get(code, 'failure')})"
            )
        elif fetched is not None and uid not in fetched:
            verdict, reason = "missing", f"the peer did not send it back on {fetch_check}"
        elif fetched is not None:
            verdict, reason = fetched[uid], fetch_notes.get(uid)
        elif committed is not None and not is_committed:
            verdict, reason = "missing", "not in the peer's commitment report"
        else:
            verdict, reason = "present", "held by the peer; content not compared"
        result.verdicts.append(
            RemoteVerdict(uid, e.study_uid, verdict, reason, is_committed, e.path)
        )
    if listed is not None:
        expected_uids = {e.sop_instance_uid for e in expected}
        for study, instances in listed.items():
            for uid in sorted(set(instances) - expected_uids):
                result.verdicts.append(
                    RemoteVerdict(uid, study, "extra", "held by the peer, not sent by us")
                )
    if not result.verifiable:
        result.verdicts = []


def verify_remote_dicomweb(
    peer: DicomWebPeer,
    expected: Sequence[Expected],
    *,
    timeout: float = 30.0,
    on_check: Callable[[str], None] = lambda _name: None,
) -> RemoteVerifyResult:
    """Verify ``expected`` at a DICOMweb peer: QIDO-RS lists, WADO-RS retrieve-and-compare."""
    studies = _by_study(expected)
    result = RemoteVerifyResult(peer=peer.name)
    fetched: dict[str, str] = {}
    notes: dict[str, str] = {}
    listed: dict[str, dict[str, tuple[str, str]]] = {}
    from dvdexit_cli.transport.factory import dicomweb_transport

    http = dicomweb_transport(peer, timeout=timeout)
    with closing(http):
        on_check(CHECK_QIDO)
        try:
            listed = {study: study_instances(http, study) for study in studies}
        except PeerUnreachableError:
            raise
        except PeerError as exc:
            result.checks_unavailable[CHECK_QIDO] = _refused(exc)
            result.checks_unavailable[CHECK_WADO] = "needs the series UIDs that QIDO-RS gives"
            _judge(
                result,
                expected,
                listed=None,
                committed=None,
                commit_failed={},
                fetched=None,
                fetch_notes={},
                list_check="QIDO-RS",
                fetch_check="WADO-RS",
            )
            return result
        result.checks_used.append(CHECK_QIDO)
        on_check(CHECK_WADO)
        try:
            with temporary_folder() as tmp:
                for n, e in enumerate(expected):
                    at_peer = listed.get(e.study_uid, {}).get(e.sop_instance_uid)
                    if at_peer is None:
                        continue
                    target = Path(tmp) / f"{n:06d}.dcm"
                    if not retrieve_instance(
                        http, e.study_uid, at_peer[1], e.sop_instance_uid, target
                    ):
                        continue
                    try:
                        meta, digest = dataset_digest(target)
                    except (OSError, NotPart10Error, MalformedFileError) as exc:
                        fetched[e.sop_instance_uid] = "different"
                        notes[e.sop_instance_uid] = f"retrieved copy unreadable: {exc}"
                        continue
                    verdict, note = _compare(e, target, digest, meta.transfer_syntax)
                    fetched[e.sop_instance_uid] = verdict
                    if note:
                        notes[e.sop_instance_uid] = note
        except PeerUnreachableError:
            raise
        except PeerError as exc:
            result.checks_unavailable[CHECK_WADO] = _refused(exc)
        else:
            result.checks_used.append(CHECK_WADO)
    _judge(
        result,
        expected,
        listed=listed,
        committed=None,
        commit_failed={},
        fetched=fetched if CHECK_WADO in result.checks_used else None,
        fetch_notes=notes,
        list_check="QIDO-RS",
        fetch_check="WADO-RS",
    )
    return result


CHECK_MEMORY_LIST = "memory-list"
CHECK_MEMORY_FETCH = "memory-fetch"


def verify_remote_memory(peer: MemoryPeer, expected: Sequence[Expected]) -> RemoteVerifyResult:
    """Verify ``expected`` at an in-memory peer, with the same verdicts as a real peer.

    What it holds per study plays the part of C-FIND / QIDO-RS, and the digest of the
    bytes it holds that of a retrieved copy, so the conformance suite and examples can
    verify the in-memory transport like the others.
    """
    result = RemoteVerifyResult(peer=peer.name, checks_used=[CHECK_MEMORY_LIST, CHECK_MEMORY_FETCH])
    wanted = set(_by_study(expected))
    listed: dict[str, dict[str, object]] = {study: {} for study in wanted}
    for uid, study in peer.studies.items():
        if study in wanted and uid in peer.stored:
            listed[study][uid] = study
    fetched = {
        e.sop_instance_uid: "identical"
        if peer.digest(e.sop_instance_uid) == e.digest
        else "different"
        for e in expected
        if e.sop_instance_uid in peer.stored
    }
    notes = {
        uid: "the bytes the peer holds have another digest than those sent"
        for uid, verdict in fetched.items()
        if verdict == "different"
    }
    _judge(
        result,
        expected,
        listed=listed,
        committed=None,
        commit_failed={},
        fetched=fetched,
        fetch_notes=notes,
        list_check="instance list",
        fetch_check="fetch",
    )
    return result
