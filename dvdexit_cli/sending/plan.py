"""The dry run (``send --dry-run``): what ``send`` would send, in the peer kind's terms."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from dvdexit_cli.dicom.contexts import plan_contexts
from dvdexit_cli.dicom.scan import Instance
from dvdexit_cli.events import Observer, ignore
from dvdexit_cli.exitcodes import ExitCode
from dvdexit_cli.sending.inputs import scan_selected
from dvdexit_cli.sending.results import FileProblem
from dvdexit_cli.sending.rounds import batches
from dvdexit_cli.sending.settings import DEFAULT_BATCH_BYTES, DEFAULT_BATCH_SIZE, SendSettings

__all__ = ["SendPlan", "SeriesPlan", "plan_send"]


@dataclass(frozen=True)
class SeriesPlan:
    series_uid: str
    modality: str
    instances: int
    bytes: int

    def to_json(self) -> dict[str, object]:
        return {
            "series_uid": self.series_uid,
            "modality": self.modality,
            "instances": self.instances,
            "bytes": self.bytes,
        }


@dataclass(frozen=True)
class SendPlan:
    """What ``send`` would do (``--dry-run``): studies, series, and presentation contexts."""

    studies: dict[str, tuple[SeriesPlan, ...]]
    instances: int
    bytes: int
    excluded: int
    skipped: tuple[FileProblem, ...]
    failed: tuple[FileProblem, ...]
    associations: tuple[tuple[tuple[str, tuple[str, ...]], ...], ...]
    workers: int
    peer_kind: str | None = None
    """``dimse``, ``dicomweb`` or ``folder`` when the plan is for a named peer."""
    requests: int | None = None
    """DICOMweb: STOW-RS requests (batches by --batch-size and --batch-bytes)."""
    batch_size: int = DEFAULT_BATCH_SIZE
    batch_bytes: int = DEFAULT_BATCH_BYTES

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.OK

    def to_json(self) -> dict[str, object]:
        return {
            "dry_run": True,
            "instances": self.instances,
            "bytes": self.bytes,
            "excluded": self.excluded,
            "workers": self.workers,
            "peer_kind": self.peer_kind,
            "studies": [
                {
                    "study_uid": study,
                    "instances": sum(s.instances for s in series),
                    "bytes": sum(s.bytes for s in series),
                    "series": [s.to_json() for s in series],
                }
                for study, series in self.studies.items()
            ],
            "associations": [
                [{"sop_class_uid": sop, "transfer_syntaxes": list(ts)} for sop, ts in plan]
                for plan in self.associations
            ],
            "failures": [f.to_json() for f in self.failed],
            "skipped_files": [f.to_json() for f in self.skipped],
            "exit_code": int(self.exit_code),
        } | self._kind_json()

    def _kind_json(self) -> dict[str, object]:
        if self.peer_kind == "dicomweb":
            return {
                "requests": self.requests,
                "batch_size": self.batch_size,
                "batch_bytes": self.batch_bytes,
            }
        if self.peer_kind == "folder":
            return {"packages": 1}
        return {}


def plan_send(
    settings: SendSettings, *, observer: Observer = ignore, peer_kind: str | None = None
) -> SendPlan:
    """Scan and select as ``send`` would, and say what it would send; send nothing.

    ``peer_kind`` puts the plan in that kind's terms: DIMSE associations (also when
    None), DICOMweb STOW-RS requests (no presentation contexts), one folder package.
    Journals nothing. Raises NoDicomFoundError when nothing would be sent.
    """
    found, excluded = scan_selected(settings, observer)
    for folder in found.unpacked:  # a dry run keeps nothing
        shutil.rmtree(folder, ignore_errors=True)
    studies: dict[str, dict[str, list[Instance]]] = {}
    for inst in found.instances:
        studies.setdefault(inst.study_uid, {}).setdefault(inst.series_uid, []).append(inst)
    plans = plan_contexts((i.sop_class_uid, i.transfer_syntax) for i in found.instances)
    problems = [FileProblem(str(r.path), r.sop_instance_uid, r.reason) for r in found.rejected]
    workers = min(settings.workers, len(studies))
    requests: int | None = None
    if peer_kind == "dicomweb":
        # The same batches send would make (one request each), in the same order.
        requests = sum(
            1
            for _ in batches(
                list(enumerate(found.instances)),
                max(1, settings.batch_size),
                max(1, settings.batch_bytes),
            )
        )
        workers = min(settings.workers, requests)
        plans = []
    elif peer_kind == "folder":
        workers, plans = 1, []
    return SendPlan(
        studies={
            study: tuple(
                SeriesPlan(uid, members[0].modality, len(members), sum(i.size for i in members))
                for uid, members in series.items()
            )
            for study, series in studies.items()
        },
        instances=len(found.instances),
        bytes=found.total_bytes,
        excluded=excluded,
        skipped=tuple(
            p for p, r in zip(problems, found.rejected, strict=True) if r.disposition == "skipped"
        ),
        failed=tuple(
            p for p, r in zip(problems, found.rejected, strict=True) if r.disposition == "failed"
        ),
        associations=tuple(
            tuple((c.abstract_syntax, c.transfer_syntaxes) for c in plan.contexts) for plan in plans
        ),
        workers=workers,
        peer_kind=peer_kind,
        requests=requests,
        batch_size=settings.batch_size,
        batch_bytes=settings.batch_bytes,
    )
