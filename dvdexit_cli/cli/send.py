"""``dvdexit send``: send studies from files, folders and DICOMDIR media to a peer."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer

from dvdexit_cli import units
from dvdexit_cli.audit import (
    AuditTrail,
    TransferAuditor,
    audit_path,
    destination_for_peer,
    source_for_send,
)
from dvdexit_cli.cli import options
from dvdexit_cli.cli.errors import handle_errors
from dvdexit_cli.cli.options import JsonOption
from dvdexit_cli.cli.render import SendProgress, err, human_bytes, out, print_json
from dvdexit_cli.cli.verify import remote_verify, render_remote
from dvdexit_cli.config import (
    MAX_WORKERS,
    AnyPeer,
    FolderPeer,
    Paths,
    PeerBook,
    resolve_paths,
)
from dvdexit_cli.dicom.attach import Attachments, parse_report_option
from dvdexit_cli.errors import UsageError
from dvdexit_cli.events import Observer
from dvdexit_cli.exitcodes import ExitCode
from dvdexit_cli.journal import Journal
from dvdexit_cli.package import verify_package
from dvdexit_cli.sending import (
    DEFAULT_BATCH_BYTES,
    DEFAULT_BATCH_SIZE,
    FileProblem,
    RetryResult,
    RetrySettings,
    SendPlan,
    SendResult,
    SendSettings,
    abandon,
    plan_send,
    retry_failed,
    send,
)
from dvdexit_cli.transport.base import Transport
from dvdexit_cli.transport.dimse import uid_name
from dvdexit_cli.transport.factory import transport_for
from dvdexit_cli.verify.remote import expected_from_journal

__all__ = ["parse_duration", "parse_size", "send_command"]

# Re-exported for one release: use dvdexit_cli.units.
parse_duration = units.parse_duration
parse_size = units.parse_size

_LISTED = 20
DEFAULT_WORKERS = 2
"""--workers when neither the command line nor the peer's ``workers`` sets it."""


def effective_workers(given: int | None, peer: AnyPeer | None) -> int:
    """--workers wins, then the peer's ``workers`` in peers.toml, then DEFAULT_WORKERS."""
    if isinstance(peer, FolderPeer):
        return 1  # a drop folder gets one package per send, written by one writer
    if given is not None:
        return given
    if peer is not None and peer.workers is not None:
        return peer.workers
    return DEFAULT_WORKERS


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Let SIGTERM stop a send the way Ctrl-C does: journal consistent, exit 130."""

    def _raise(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@handle_errors
def send_command(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            help="DICOM files, folders, or DVD media with a DICOMDIR.", show_default=False
        ),
    ] = None,
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="The peer to send to (see 'dvdexit peers list'); with --retry-failed, "
            "only that peer's items are resent.",
        ),
    ] = None,
    abandon_items: Annotated[
        bool,
        typer.Option(
            "--abandon",
            help="Give up on items deliberately: 'send --abandon TRANSFER_ID --reason TEXT' "
            "(that transfer's open items) or 'send --abandon --to PEER --reason TEXT' (all "
            "of that peer's, even one no longer in peers.toml). They are kept in the journal "
            "as abandoned (who, when, why), audited, and never resent.",
        ),
    ] = False,
    retry_failed_items: Annotated[
        bool,
        typer.Option(
            "--retry-failed",
            help="Resend what earlier sends left failed (retryable), pending or unanswered; "
            "never what a peer confirmed. Safe to run from cron, twice at once.",
        ),
    ] = False,
    older_than: Annotated[
        float | None,
        typer.Option(
            "--older-than",
            parser=options.duration,
            metavar=options.DURATION,
            help="With --retry-failed: only items last changed at least this long ago "
            "(90s, 15m, 2h, 1d, 1w).",
        ),
    ] = None,
    include_refused: Annotated[
        bool,
        typer.Option(
            "--include-refused",
            help="With --retry-failed --to PEER: also resend what that peer refused as "
            "final (for when the peer's configuration has been fixed).",
        ),
    ] = False,
    max_attempts: Annotated[
        int | None,
        typer.Option(
            "--max-attempts",
            min=1,
            help="With --retry-failed: leave items already tried this many times (they "
            "still count as failed).",
        ),
    ] = None,
    retries: Annotated[
        int, typer.Option("--retries", min=0, max=20, help="Retries of retryable failures.")
    ] = 2,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            max=MAX_WORKERS,
            help="Parallel associations, each sending whole studies in order (some PACS "
            "accept only one: use 1); for a DICOMweb peer, STOW-RS requests in flight. "
            "Default: the peer's 'workers' in peers.toml, else 2.",
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size",
            min=1,
            max=10000,
            help="DICOMweb: instances per STOW-RS request.",
        ),
    ] = DEFAULT_BATCH_SIZE,
    batch_bytes: Annotated[
        int,
        typer.Option(
            "--batch-bytes",
            parser=options.positive_size,
            metavar=options.SIZE,
            show_default="64M",
            help="DICOMweb: bytes per STOW-RS request (64M, 512K, 1G); a larger instance "
            "goes alone.",
        ),
    ] = DEFAULT_BATCH_BYTES,
    study: Annotated[
        list[str] | None,
        typer.Option("--study", help="Send only this Study Instance UID (repeatable)."),
    ] = None,
    modality: Annotated[
        list[str] | None,
        typer.Option("--modality", help="Send only these modalities, e.g. CT,MR (repeatable)."),
    ] = None,
    exclude_modality: Annotated[
        list[str] | None,
        typer.Option("--exclude-modality", help="Leave these modalities out, e.g. PR,KO."),
    ] = None,
    exclude_sop_class: Annotated[
        list[str] | None,
        typer.Option("--exclude-sop-class", help="Leave this SOP Class UID out (repeatable)."),
    ] = None,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="After the send, prove what the peer holds with the strongest check it "
            "supports (as 'dvdexit verify --peer'); a folder peer's package is verified.",
        ),
    ] = False,
    allow_lossy_transcode: Annotated[
        bool,
        typer.Option(
            "--allow-lossy-transcode",
            help="Decompress lossy compressed files (JPEG baseline, ...) for a peer that "
            "accepts their SOP class only uncompressed; without it they fail.",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Show what would be sent (studies, series, counts, bytes, presentation "
            "contexts); send nothing, journal nothing.",
        ),
    ] = False,
    note: Annotated[
        str | None, typer.Option("--note", help="A note kept with the transfer.")
    ] = None,
    reason: Annotated[
        str | None,
        typer.Option(
            "--reason",
            help="The reason for the transfer (referral); with --abandon, why the items are "
            "given up on.",
        ),
    ] = None,
    recipient: Annotated[
        str | None,
        typer.Option("--recipient", help="Who the transfer is for (receiving clinician)."),
    ] = None,
    note_as_sr: Annotated[
        bool,
        typer.Option(
            "--note-as-sr",
            help="Also send --note/--reason/--recipient as a Basic Text SR 'Transfer note' "
            "in each study (it adds an object to the patient's record).",
        ),
    ] = False,
    report: Annotated[
        list[str] | None,
        typer.Option(
            "--report",
            help="A PDF report to send with the study as Encapsulated PDF: FILE.pdf, or "
            "STUDY_UID=FILE.pdf when the inputs hold several studies (repeatable).",
        ),
    ] = None,
    report_text: Annotated[
        list[str] | None,
        typer.Option(
            "--report-text",
            help="A UTF-8 text report to send with the study as Basic Text SR: FILE.txt, "
            "or STUDY_UID=FILE.txt (repeatable).",
        ),
    ] = None,
    sr_to_pdf: Annotated[
        bool,
        typer.Option(
            "--sr-to-pdf",
            help="Also send each structured report (SR among the inputs, or made by "
            "--report-text/--note-as-sr) rendered as an Encapsulated PDF, for PACS that "
            "cannot show SR.",
        ),
    ] = False,
    zip_package: Annotated[
        bool,
        typer.Option("--zip", help="For a folder peer: write the package as one .zip file."),
    ] = False,
    iso_package: Annotated[
        bool,
        typer.Option(
            "--iso",
            help="For a folder peer: write the package as an ISO 9660 DVD image (.iso).",
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Send studies to a peer; every instance is journaled and its outcome recorded."""
    home = resolve_paths()
    if abandon_items:
        if retry_failed_items or dry_run:
            raise UsageError(
                "--abandon goes with a transfer id or --to PEER, and --reason",
                hint="run --retry-failed separately, after the abandonment",
            )
        _abandon(home, [str(p) for p in paths or ()], to, reason, json_output=json_output)
    if retry_failed_items:
        if paths:
            raise UsageError(
                "--retry-failed takes no paths: it resends what the journal holds",
                hint="drop the paths, or drop --retry-failed to send them",
            )
        if report or report_text or note_as_sr or sr_to_pdf or zip_package or iso_package:
            raise UsageError(
                "--report, --report-text, --note-as-sr, --sr-to-pdf, --zip and --iso apply "
                "to a new send, not to --retry-failed",
                hint="a replay resends the reports the first send journaled",
            )
        if include_refused and to is None:
            raise UsageError(
                "--include-refused needs --to PEER: resend final refusals only to the peer "
                "that was fixed",
                hint="add --to PEER",
            )
        _replay(
            home,
            RetrySettings(
                peer_name=to,
                older_than=older_than if older_than is not None else 0.0,
                max_attempts=max_attempts,
                retries=retries,
                unpack_dir=home.data_dir / "unpacked",
                batch_size=batch_size,
                batch_bytes=batch_bytes,
                include_refused=include_refused,
            ),
            workers=workers,
            quiet=quiet,
            json_output=json_output,
        )
    if older_than is not None or max_attempts is not None or include_refused:
        raise UsageError(
            "--older-than, --max-attempts and --include-refused apply only with --retry-failed",
            hint="add --retry-failed, or drop them",
        )
    if not paths:
        raise UsageError("nothing to send: give files, folders or media", hint="see --help")
    attachments = Attachments.under(
        home.data_dir / "unpacked",
        pdf_reports=tuple(parse_report_option(v, option="--report") for v in report or ()),
        text_reports=tuple(
            parse_report_option(v, option="--report-text") for v in report_text or ()
        ),
        note=note,
        reason=reason,
        recipient=recipient,
        note_as_sr=note_as_sr,
        sr_to_pdf=sr_to_pdf,
    )
    attachments.check()
    # A dry run with --to speaks in that peer's terms; without --to, in associations.
    target = PeerBook(home.peers_file).get_any(to) if to is not None else None
    selected = SendSettings(
        inputs=tuple(paths),
        peer_name=to or "",
        peer_address="",
        workers=effective_workers(workers, target),
        batch_size=batch_size,
        batch_bytes=batch_bytes,
        studies=_values(study, upper=False),
        modalities=_values(modality),
        exclude_modalities=_values(exclude_modality),
        exclude_sop_classes=_values(exclude_sop_class, upper=False),
        unpack_dir=home.data_dir / "unpacked",
        attach=None if attachments.empty else attachments,
    )
    if dry_run:
        plan = plan_send(
            selected,
            observer=SendProgress(quiet=quiet or json_output),
            peer_kind=target.kind if target is not None else None,
        )
        if json_output:
            print_json(plan.to_json())
        else:
            _render_plan(plan)
        raise typer.Exit(int(plan.exit_code))
    if to is None:
        raise UsageError("--to PEER is required", hint="list the peers with 'dvdexit peers list'")
    peer = target if target is not None else PeerBook(home.peers_file).get_any(to)
    if zip_package and iso_package:
        raise UsageError("--zip and --iso exclude each other", hint="choose one")
    if (zip_package or iso_package) and not isinstance(peer, FolderPeer):
        raise UsageError(
            f"--{'zip' if zip_package else 'iso'} applies only to folder peers; "
            f"{peer.name} is not one",
            hint="drop --zip, or send to a peer added with 'dvdexit peers add NAME --folder'",
        )
    settings = replace(
        selected,
        peer_name=peer.name,
        peer_address=peer.address,
        retries=retries,
        note=note,
        reason=reason,
        recipient=recipient,
    )
    with (
        Journal(home.journal_file) as journal,
        SendProgress(quiet=quiet or json_output) as progress,
        _sigterm_interrupts(),
    ):

        def make(observer: Observer) -> Transport:
            return transport_for(
                peer,
                observer=observer,
                note=note,
                reason=reason,
                allow_lossy_transcode=allow_lossy_transcode,
                recipient=recipient,
                as_zip=zip_package,
                as_iso=iso_package,
            )

        transport = make(progress)
        trail = AuditTrail(audit_path(home), process="dvdexit send")
        book = PeerBook(home.peers_file)
        result = send(
            settings,
            journal=journal,
            transport=transport,
            observer=progress,
            transport_factory=make,
            audit=TransferAuditor(
                trail,
                source_for=lambda _name: source_for_send(peer, book.local.ae_title),
                destination_for=lambda _name: destination_for_peer(peer),
                recipient=recipient,
            ),
        )
        _warn_audit(trail)
        checked = (
            _verify_after_send(peer, transport, result, journal, home, quiet=json_output)
            if verify and result.sent
            else None
        )
    code = result.exit_code
    if checked is not None and code == ExitCode.OK:
        code = ExitCode(checked["exit_code"])
    if json_output:
        print_json(result.to_json() | ({"verify": checked} if checked is not None else {}))
    else:
        _render(result)
    raise typer.Exit(int(code))


def _verify_after_send(
    peer: AnyPeer,
    transport: Transport,
    result: SendResult,
    journal: Journal,
    home: Paths,
    *,
    quiet: bool,
) -> dict[str, Any]:
    """``send --verify``: the remote verify of this transfer (or the package's check)."""
    if isinstance(peer, FolderPeer):
        package = getattr(transport, "package_path", None)
        check = verify_package(package) if package is not None else None
        if check is None:
            return {"verdict": "not written", "exit_code": int(ExitCode.VERIFY_FAILED)}
        if not quiet:
            out.print(f"package {check.path}: {check.verdict}", markup=False)
        ok = check.verdict == "intact"
        return check.to_json() | {"exit_code": int(ExitCode.OK if ok else ExitCode.VERIFY_FAILED)}
    expected = expected_from_journal(journal, transfer_id=result.transfer_id, study_uids=[])
    remote = remote_verify(
        peer,
        expected,
        local=PeerBook(home.peers_file).local,
        journal=journal,
        transfer_id=result.transfer_id,
        quiet=quiet,
    )
    if not quiet:
        render_remote(remote)
    return remote.to_json()


def _warn_audit(trail: AuditTrail) -> None:
    if trail.failures:
        err.print(
            f"dvdexit: warning: {trail.failures} audit record(s) could not be written to "
            f"{trail.path}; check the disk and its permissions",
            markup=False,
        )


def _list(title: str, problems: tuple[FileProblem, ...], style: str) -> None:
    if not problems:
        return
    out.print(f"[{style}]{title} ({len(problems)}):[/{style}]")
    for p in problems[:_LISTED]:
        status = f" [{p.status:04X}]" if p.status else ""
        out.print(f"  {p.path}{status}: {p.reason}", markup=False)
    if len(problems) > _LISTED:
        out.print(f"  ... and {len(problems) - _LISTED} more (--json lists them all)")


def _render(result: SendResult) -> None:
    rate = result.bytes_sent / result.seconds if result.seconds > 0 else 0.0
    out.print(
        f"transfer {result.transfer_id} to {result.peer}: {result.sent} sent, "
        f"{result.failed} failed, {result.skipped} skipped"
        + (f", {result.pending} not sent" if result.pending else "")
        + f" ({result.studies} stud{'y' if result.studies == 1 else 'ies'}, "
        f"{human_bytes(result.bytes_sent)} in {result.seconds:.1f} s, {human_bytes(rate)}/s)",
        markup=False,
    )
    _list("failed", result.failures, "red")
    _list("sent with a warning", result.warnings, "yellow")
    _list("skipped", result.skipped_files, "dim")
    if result.error:
        # One line however many instances it concerns: they were not sent, not refused.
        err.print(
            f"dvdexit: error: {result.error}"
            + (f" ({result.error_hint})" if result.error_hint else "")
            + (
                f"; {result.pending} of {result.total} instance(s) not sent; resend with: "
                f"{result.resume_command}"
                if result.pending
                else ""
            ),
            markup=False,
        )
    elif result.failed:
        err.print(
            f"dvdexit: {result.failed} instance(s) failed; they are in the journal "
            f"(dvdexit status)",
            markup=False,
        )


def _abandon(
    home: Paths, given: list[str], to: str | None, reason: str | None, *, json_output: bool
) -> None:
    """``send --abandon``: give up on a transfer's or a peer's open items; exits."""
    if (len(given) == 1) == (to is not None) or len(given) > 1:
        raise UsageError(
            "--abandon takes one transfer id, or --to PEER (not both)",
            hint="dvdexit send --abandon 12 --reason TEXT, or "
            "dvdexit send --abandon --to PEER --reason TEXT ('dvdexit status' lists the ids)",
        )
    transfer_id = None
    if given:
        if not given[0].isdigit():
            raise UsageError(
                f"--abandon {given[0]!r}: a transfer id is a number",
                hint="'dvdexit status' lists the transfers with their ids",
            )
        transfer_id = int(given[0])
    if reason is None or not reason.strip():
        raise UsageError(
            "--abandon needs --reason: say why the items are given up on",
            hint="add --reason 'peer decommissioned', for example",
        )
    book = PeerBook(home.peers_file)
    trail = AuditTrail(audit_path(home), process="dvdexit send --abandon")
    with Journal(home.journal_file) as journal:
        result = abandon(
            journal=journal,
            by=trail.who["user"],
            reason=reason.strip(),
            transfer_id=transfer_id,
            peer=to,
            # A removed peer is named only (the auditor falls back when a lookup raises).
            audit=_auditor_by_name(trail, book, kind="abandon"),
        )
    _warn_audit(trail)
    if json_output:
        print_json(result.to_json())
    else:
        scope = f"transfer {transfer_id}" if transfer_id is not None else f"peer {to}"
        if result.abandoned:
            out.print(
                f"abandoned {result.abandoned} item(s) of {scope} (transfer(s) "
                f"{', '.join(map(str, result.transfers))}), by {result.by}: {result.reason}; "
                "they stay in 'dvdexit status' and are never resent",
                markup=False,
            )
        elif not result.held:
            out.print(f"nothing to abandon: {scope} has no open items", markup=False)
        if result.held:
            err.print(
                f"dvdexit: {result.held} item(s) of {scope} are held by a running send or "
                "replay and were left to it; run the same --abandon again once it has ended",
                markup=False,
            )
    raise typer.Exit(int(result.exit_code))


def _auditor_by_name(trail: AuditTrail, book: PeerBook, *, kind: str) -> TransferAuditor:
    """An auditor for transfers to peers named in the journal (replays, abandonments)."""
    return TransferAuditor(
        trail,
        source_for=lambda name: source_for_send(book.get_any(name), book.local.ae_title),
        destination_for=lambda name: destination_for_peer(book.get_any(name)),
        kind=kind,
    )


def _replay(
    home: Paths,
    settings: RetrySettings,
    *,
    workers: int | None,
    quiet: bool,
    json_output: bool,
) -> None:
    book = PeerBook(home.peers_file)
    if settings.peer_name is not None:
        book.get_any(settings.peer_name)  # an unknown --to is a mistake, not "nothing to do"
    with (
        Journal(home.journal_file) as journal,
        SendProgress(quiet=quiet or json_output) as progress,
        _sigterm_interrupts(),
    ):

        def transport_named(name: str) -> Transport:
            return transport_for(book.get_any(name), observer=progress)

        def workers_named(name: str) -> int:
            return effective_workers(workers, book.get_any(name))

        trail = AuditTrail(audit_path(home), process="dvdexit send --retry-failed")
        result = retry_failed(
            settings,
            journal=journal,
            transport_for=transport_named,
            observer=progress,
            workers_for=workers_named,
            audit=_auditor_by_name(trail, book, kind="retry"),
        )
        _warn_audit(trail)
    if json_output:
        print_json(result.to_json())
    else:
        _render_replay(result)
    raise typer.Exit(int(result.exit_code))


def _render_replay(result: RetryResult) -> None:
    if not result.claimed:
        out.print("retry-failed: nothing to resend", markup=False)
    else:
        out.print(
            f"retry-failed: {result.claimed} item(s) of transfer(s) "
            f"{', '.join(map(str, result.transfers))} to {', '.join(result.peers)}: "
            f"{result.sent} sent, {result.failed} failed"
            + (f", {result.pending} not sent" if result.pending else "")
            + f" ({human_bytes(result.bytes_sent)} in {result.seconds:.1f} s)",
            markup=False,
        )
    _list("failed", result.failures, "red")
    _list("sent with a warning", result.warnings, "yellow")
    for error in result.errors:
        err.print(f"dvdexit: error: {error}", markup=False)
    if result.given_up:
        err.print(
            f"dvdexit: {result.given_up} item(s) reached --max-attempts and were not resent "
            f"(dvdexit status)",
            markup=False,
        )


def _values(given: list[str] | None, *, upper: bool = True) -> tuple[str, ...]:
    """Repeatable, comma-separated option values, stripped (and upper-cased)."""
    found = [v.strip() for text in given or () for v in text.split(",") if v.strip()]
    return tuple(v.upper() if upper else v for v in found)


def _plan_how(plan: SendPlan) -> str:
    """How the plan would travel, in the peer kind's terms."""
    if plan.peer_kind == "dicomweb":
        return (
            f"in {plan.requests} STOW-RS request(s) (batches of up to {plan.batch_size} "
            f"instance(s) and {human_bytes(plan.batch_bytes)}), {plan.workers} at a time"
        )
    if plan.peer_kind == "folder":
        return "as one package"
    return f"over {plan.workers} association(s) at a time"


def _render_plan(plan: SendPlan) -> None:
    out.print(
        f"dry run: would send {plan.instances} instance(s), {human_bytes(plan.bytes)}, in "
        f"{len(plan.studies)} stud{'y' if len(plan.studies) == 1 else 'ies'} "
        f"{_plan_how(plan)}"
        + (f"; {plan.excluded} left out by the selection" if plan.excluded else ""),
        markup=False,
    )
    for study, series in plan.studies.items():
        out.print(f"  study {study}", markup=False)
        for s in series:
            out.print(
                f"    series {s.series_uid} {s.modality or '?'}: {s.instances} instance(s), "
                f"{human_bytes(s.bytes)}",
                markup=False,
            )
    for number, contexts in enumerate(plan.associations, 1):
        out.print(f"  association {number}: {len(contexts)} presentation context(s)")
        for sop, syntaxes in contexts:
            out.print(
                f"    {uid_name(sop)}: {', '.join(uid_name(ts) for ts in syntaxes)}", markup=False
            )
    _list("would fail", plan.failed, "red")
    _list("skipped", plan.skipped, "dim")
