"""``dvdexit receive --from PEER``: pull studies from a peer, or list what it holds."""

from __future__ import annotations

from pathlib import Path

import typer

from dvdexit_cli.audit import AuditTrail, audit_path, audit_pull
from dvdexit_cli.cli.render import err, out, print_json
from dvdexit_cli.config import Paths, PeerBook, validate_ae_title
from dvdexit_cli.errors import UsageError
from dvdexit_cli.fsmode import Access
from dvdexit_cli.journal import Journal
from dvdexit_cli.receive.pull import PullResult, PullSettings, StudyQuery, list_studies, pull
from dvdexit_cli.receive.store import DEFAULT_LAYOUT
from dvdexit_cli.transport.factory import transport_for

__all__ = ["pull_from"]

_LISTED = 20


def pull_from(
    home: Paths,
    peer_name: str,
    *,
    studies: tuple[str, ...],
    store: object,
    list_only: bool,
    query: tuple[str | None, str | None, str | None],
    move_dest: str | None,
    json_output: bool,
    access: Access,
    layout: str = DEFAULT_LAYOUT,
    fsync: bool = True,
    sr_to_pdf: bool = False,
) -> None:
    """Run ``receive --from``: list (``--list``) or pull (``--study``); exits with its code."""
    book = PeerBook(home.peers_file)
    peer = book.get_any(peer_name)
    if list_only:
        if studies or move_dest:
            raise UsageError("--list retrieves nothing: drop --study and --move-dest")
        patient_id, accession, study_date = query
        found = list_studies(
            peer,
            StudyQuery(patient_id=patient_id, accession=accession, study_date=study_date),
            transport_for=transport_for,
        )
        if json_output:
            print_json({"peer": peer.name, "studies": found, "count": len(found)})
        else:
            for study in found:
                out.print(
                    f"{study['study_uid']}  {study['study_date'] or '-'}  "
                    f"{','.join(study['modalities']) or '-'}  "
                    f"{study['instances'] if study['instances'] is not None else '?'} instance(s)",
                    markup=False,
                )
            err.print(f"{len(found)} stud{'y' if len(found) == 1 else 'ies'} at {peer.name}")
        raise typer.Exit(0)
    if any(query):
        raise UsageError("--patient-id, --accession and --study-date apply only with --list")
    settings = PullSettings(
        studies=studies,
        store=(Path(str(store)) if store else home.default_store).resolve(),
        move_dest=validate_ae_title(move_dest, what="--move-dest") if move_dest else None,
        access=access,
        layout=layout,
        fsync=fsync,
        sr_to_pdf=sr_to_pdf,
    )
    with Journal(home.journal_file) as journal:
        result = pull(peer, settings, journal=journal, transport_for=transport_for)
        trail = AuditTrail(audit_path(home), process="dvdexit receive --from")
        audit_pull(trail, journal, result, peer=peer, local_ae=book.local.ae_title)
    if json_output:
        print_json(result.to_json())
    else:
        _render(result)
    raise typer.Exit(int(result.exit_code))


def _render(result: PullResult) -> None:
    for study in result.studies:
        if study in result.not_attempted:
            out.print(
                f"study {study}: not attempted (the pull stopped before its turn)", markup=False
            )
            continue
        c = result.counts(study)
        listed = result.listed.get(study, 0)
        out.print(
            f"study {study}: {listed} listed at {result.peer} ({result.method}), "
            f"{c['stored']} stored, {c['duplicate']} already held, {c['conflict']} conflict, "
            f"{c['failed']} failed, {c['missing']} missing"
            + ("" if listed else " — the peer lists no instance of this study"),
            markup=False,
        )
        ended = result.retrieval.get(study)
        if ended is not None and (ended.status != 0 or ended.failed or ended.warning):
            out.print(f"  {ended.describe(result.method.upper())}", markup=False)
    problems = [i for i in result.instances if i.outcome not in ("stored", "duplicate")]
    for item in problems[:_LISTED]:
        out.print(f"  {item.outcome}: {item.sop_instance_uid}: {item.reason}", markup=False)
    if len(problems) > _LISTED:
        out.print(f"  ... and {len(problems) - _LISTED} more (--json lists them all)")
    if result.interrupted is not None:
        err.print(f"pull INTERRUPTED: {result.interrupted}", markup=False)
        if result.not_attempted:
            n = len(result.not_attempted)
            err.print(
                f"  {n} stud{'y' if n == 1 else 'ies'} not attempted: "
                f"{', '.join(result.not_attempted)}",
                markup=False,
            )
        err.print("  what arrived is stored; pull again to fetch the rest", markup=False)
    err.print(
        f"pull {'complete' if result.complete else 'INCOMPLETE'}: stored in {result.store}",
        markup=False,
    )
