"""``dvdexit receive``: a Storage SCP that stores durably and journals every instance."""

from __future__ import annotations

import signal
import threading
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer

from dvdexit_cli import units
from dvdexit_cli.audit import AuditTrail, ReceiveAuditor, audit_path
from dvdexit_cli.cli import options
from dvdexit_cli.cli.errors import handle_errors
from dvdexit_cli.cli.options import JsonOption
from dvdexit_cli.cli.pull import pull_from
from dvdexit_cli.cli.render import err, print_json
from dvdexit_cli.config import DimsePeer, Paths, PeerBook, resolve_paths
from dvdexit_cli.errors import ConfigError, UsageError
from dvdexit_cli.events import (
    AssociationRefused,
    Event,
    HookFinished,
    InstanceReceived,
    StudyCompleted,
    StudyForwarded,
)
from dvdexit_cli.exitcodes import ExitCode
from dvdexit_cli.fsmode import PRIVATE, Access, group_access
from dvdexit_cli.journal import Journal
from dvdexit_cli.receive import ReceiveSettings, StorageServer
from dvdexit_cli.receive.drop_folder import DropResult, process_drop_folder
from dvdexit_cli.receive.hooks import HookRunner
from dvdexit_cli.receive.reconcile import PatientMapping, load_mapping
from dvdexit_cli.receive.service import completion_stack
from dvdexit_cli.receive.settings import (
    ReceiveConfig,
    load_receive_table,
    parse_commit_reply,
    parse_networks,
)
from dvdexit_cli.receive.store import InstanceStore
from dvdexit_cli.relay.forward import forwarder_for
from dvdexit_cli.tls import receiver_contexts

__all__ = ["receive_command"]


class _ReceiveLog:
    """Observer: counts outcomes, and reports what a person should see on stderr."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.studies: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        if isinstance(event, AssociationRefused):
            # Before an association request (a failed TLS handshake) there is no AE title.
            who = (
                f"association from {event.address} as {event.calling_ae!r}"
                if event.calling_ae
                else f"connection from {event.address}"
            )
            err.print(f"rejected: {who}: {event.reason}", markup=False)
        elif isinstance(event, StudyCompleted):
            err.print(
                f"complete: study {event.study_uid} ({event.instances} instance(s), "
                f"by {event.completed_by})",
                markup=False,
            )
        elif isinstance(event, HookFinished):
            if event.error:
                err.print(
                    f"hook failed: study {event.study_uid}: {event.error}; "
                    "re-run with 'dvdexit receive --rerun-hooks'",
                    markup=False,
                )
        elif isinstance(event, StudyForwarded):
            err.print(
                f"forward {event.outcome}: study {event.study_uid} to {event.peer}"
                + (f": {event.reason}" if event.reason else ""),
                markup=False,
            )
        elif isinstance(event, InstanceReceived):
            with self._lock:
                self.counts[event.outcome] += 1
                if event.study_uid and event.outcome == "stored":
                    self.studies.add(event.study_uid)
            if event.outcome in ("conflict", "refused"):
                err.print(
                    f"{event.outcome}: instance {event.sop_instance_uid or '(invalid UID)'} "
                    f"from {event.calling_ae} answered {event.status:04X}: {event.reason}",
                    markup=False,
                )


@handle_errors
def receive_command(
    port: Annotated[
        int | None, typer.Option("--port", min=1, max=65535, help="TCP port to listen on.")
    ] = None,
    ae: Annotated[
        str | None, typer.Option("--ae", help="Our AE title; callers must use it [DVDEXIT].")
    ] = None,
    store: Annotated[
        Path | None,
        typer.Option("--store", help="Folder for received instances [default: DATA/received]."),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option("--host", help="Address to listen on [0.0.0.0: every interface]."),
    ] = None,
    layout: Annotated[
        str | None,
        typer.Option(
            "--layout",
            help="Path template below the store: fields {study} {series} {sop} {study_date} "
            "{received_date} only [{study}/{series}/{sop}.dcm].",
        ),
    ] = None,
    allow_ae: Annotated[
        list[str] | None,
        typer.Option("--allow-ae", help="Accept only this calling AE title (repeatable)."),
    ] = None,
    allow_from: Annotated[
        list[str] | None,
        typer.Option("--allow-from", help="Accept only this address or CIDR (repeatable)."),
    ] = None,
    max_associations: Annotated[
        int | None,
        typer.Option("--max-associations", min=1, help="Concurrent associations [10]."),
    ] = None,
    max_instance_size: Annotated[
        int | None,
        typer.Option(
            "--max-instance-size",
            parser=options.size,
            metavar=options.SIZE,
            help="Refuse larger instances (A700), e.g. 4G.",
        ),
    ] = None,
    min_free: Annotated[
        int | None,
        typer.Option(
            "--min-free",
            parser=options.size,
            metavar=options.SIZE,
            help="Answer A700 below this much free disk, e.g. 10G [0].",
        ),
    ] = None,
    durability: Annotated[
        str | None,
        typer.Option(
            "--durability",
            help="full: fsync before answering [default]; os: leave it to the OS (faster; "
            "a power cut can lose instances already answered).",
        ),
    ] = None,
    idle_timeout: Annotated[
        float | None,
        typer.Option(
            "--idle-timeout",
            parser=options.positive_duration,
            metavar=options.DURATION,
            help="Study complete after this long idle [60s].",
        ),
    ] = None,
    on_complete: Annotated[
        str | None,
        typer.Option("--on-complete", help="Command run once per complete study."),
    ] = None,
    commit_reply: Annotated[
        list[str] | None,
        typer.Option(
            "--commit-reply",
            help="AE=HOST:PORT: where to send a storage commitment report when the "
            "requester closed its association (repeatable).",
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option("--tls-cert", help="Our TLS certificate (PEM); enables TLS.")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="Its private key.")] = None,
    tls_ca: Annotated[
        Path | None,
        typer.Option("--tls-ca", help="CA bundle: clients must present a certificate it signed."),
    ] = None,
    require_tls: Annotated[
        bool | None,
        typer.Option("--require-tls", help="Refuse to start without --tls-cert."),
    ] = None,
    forward_to: Annotated[
        str | None,
        typer.Option("--forward-to", help="Forward complete studies to this peer (local PACS)."),
    ] = None,
    reconcile: Annotated[
        Path | None,
        typer.Option(
            "--reconcile",
            help="CSV or TOML mapping of sender Patient IDs to local ones, for forwarding; "
            "studies without a mapping are held.",
        ),
    ] = None,
    rerun_hooks: Annotated[
        bool,
        typer.Option(
            "--rerun-hooks",
            help="Run the --on-complete command again for studies whose hook failed, and exit.",
        ),
    ] = False,
    from_peer: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Pull from this peer instead of listening: --study UID (WADO-RS, C-GET or "
            "C-MOVE), or --list.",
        ),
    ] = None,
    pull_study: Annotated[
        list[str] | None,
        typer.Option("--study", help="With --from: the Study Instance UID to pull (repeatable)."),
    ] = None,
    list_only: Annotated[
        bool,
        typer.Option("--list", help="With --from: list matching studies, retrieve nothing."),
    ] = False,
    patient_id: Annotated[
        str | None, typer.Option("--patient-id", help="With --list: match this Patient ID.")
    ] = None,
    accession: Annotated[
        str | None, typer.Option("--accession", help="With --list: match this Accession Number.")
    ] = None,
    study_date: Annotated[
        str | None,
        typer.Option("--study-date", help="With --list: YYYYMMDD or a range YYYYMMDD-YYYYMMDD."),
    ] = None,
    move_dest: Annotated[
        str | None,
        typer.Option(
            "--move-dest",
            help="With --from a DIMSE peer: C-MOVE to this AE title (our running receiver, "
            "known to the peer) instead of C-GET.",
        ),
    ] = None,
    sr_to_pdf: Annotated[
        bool | None,
        typer.Option(
            "--sr-to-pdf",
            help="Also store each received structured report (Basic Text, Enhanced, "
            "Comprehensive SR) rendered as an Encapsulated PDF in its study.",
        ),
    ] = None,
    group: Annotated[
        str | None,
        typer.Option(
            "--group",
            metavar="NAME",
            help="Let this group read the store (files 0640, folders 2750) and the drop "
            "folder's done/ and rejected/; without it they are owner-only.",
        ),
    ] = None,
    watch: Annotated[
        Path | None,
        typer.Option(
            "--watch",
            help="Import transfer packages that appear in this drop folder instead of "
            "listening; each goes to DIR/done/ or DIR/rejected/ (with a reason file).",
        ),
    ] = None,
    interval: Annotated[
        float,
        typer.Option(
            "--interval",
            parser=options.positive_duration,
            metavar=options.DURATION,
            help="With --watch: time between passes [5s].",
        ),
    ] = 5.0,
    settle: Annotated[
        float,
        typer.Option(
            "--settle",
            parser=options.duration,
            metavar=options.DURATION,
            help="With --watch: take a package only when nothing in it changed for this "
            "long [10s].",
        ),
    ] = 10.0,
    once: Annotated[
        bool,
        typer.Option(
            "--once",
            help="With --watch: one pass over the drop folder, then exit (for cron). Exit 7 "
            "when a package was rejected as not intact, 6 when an import failed.",
        ),
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Receive studies over DICOM (C-STORE) until stopped, pull them from a peer (--from),
    or import packages from a drop folder (--watch)."""
    home = resolve_paths()
    config = ReceiveConfig.merge(
        {
            "port": port, "ae": ae, "store": store, "host": host, "layout": layout,
            "allow_ae": allow_ae, "allow_from": allow_from, "max_associations": max_associations,
            "max_instance_size": max_instance_size, "min_free": min_free,
            "durability": durability, "idle_timeout": idle_timeout, "on_complete": on_complete,
            "commit_reply": commit_reply, "tls_cert": tls_cert, "tls_key": tls_key,
            "tls_ca": tls_ca, "require_tls": require_tls, "forward_to": forward_to,
            "reconcile": reconcile, "sr_to_pdf": sr_to_pdf, "group": group,
        },
        load_receive_table(home.peers_file),
    )  # fmt: skip
    access = _access(config, from_option=group is not None)
    config.check()
    if from_peer is not None:
        pull_from(
            home,
            from_peer,
            studies=tuple(pull_study or ()),
            store=config.store,
            list_only=list_only,
            query=(patient_id, accession, study_date),
            move_dest=move_dest,
            json_output=json_output,
            access=access,
            layout=config.layout,
            fsync=config.fsync,
            sr_to_pdf=config.sr_to_pdf,
        )
        return
    _only_with_from(pull_study, list_only, patient_id, accession, study_date, move_dest)
    if rerun_hooks:
        _rerun_hooks(home.journal_file, config.on_complete)
        return
    book = PeerBook(home.peers_file)
    peer = book.get_any(config.forward_to) if config.forward_to else None
    if peer is not None and not isinstance(peer, DimsePeer):
        raise UsageError(f"--forward-to {config.forward_to}: only DIMSE peers can be forwarded to")
    if config.reconcile and peer is None:
        raise UsageError("--reconcile applies to forwarding: give --forward-to as well")
    mapping = load_mapping(config.reconcile) if config.reconcile else None
    store_dir = (config.store or home.default_store).resolve()
    if watch is not None:
        if port is not None:
            raise UsageError("--watch imports packages instead of listening: drop --port")
        _watch_drop_folder(
            home,
            watch,
            store=store_dir,
            config=config,
            forward_to=peer,
            mapping=mapping,
            interval=interval,
            settle=settle,
            once=once,
            json_output=json_output,
            access=access,
        )
        return
    if once:
        raise UsageError("--once applies only with --watch DIR")
    if not isinstance(config.port, int) or not 0 < config.port < 65536:
        raise UsageError("--port is required (or 'port' in the [receive] table)")
    context, client = _tls_contexts(config)
    settings = ReceiveSettings(
        host=config.host,
        port=config.port,
        ae_title=config.ae,
        store=store_dir,
        fsync=config.fsync,
        allow_ae=config.allow_ae,
        allow_from=parse_networks(config.allow_from),
        layout=config.layout,
        max_associations=config.max_associations,
        max_instance_size=(
            units.parse_size(config.max_instance_size, what="[receive] max_instance_size")
            if config.max_instance_size is not None
            else None
        ),
        # Options arrive parsed; only a [receive] value can still be refused here.
        min_free=units.parse_size(config.min_free, what="[receive] min_free"),
        idle_timeout=config.idle_timeout,
        on_complete=config.on_complete,
        commit_reply=parse_commit_reply(config.commit_reply),
        ssl_context=context,
        client_ssl_context=client,
        forward_to=peer,
        reconcile=mapping,
        staging=home.data_dir / "forward-staging",
        audit_file=audit_path(home),
        sr_to_pdf=config.sr_to_pdf,
        access=access,
        max_pdu=book.local.max_pdu,
    )
    _listen(home, settings)


def _access(config: ReceiveConfig, *, from_option: bool) -> Access:
    """Owner-only modes, or the ``--group`` / ``[receive] group`` ones."""
    if not config.group:
        return PRIVATE
    return group_access(config.group, where="--group" if from_option else "[receive] group")


def _only_with_from(*pull_options: object) -> None:
    if any(pull_options):
        raise UsageError(
            "--study, --list, --patient-id, --accession, --study-date and --move-dest "
            "apply only with --from PEER"
        )


def _tls_contexts(config: ReceiveConfig) -> tuple[Any, Any]:
    """The server's TLS context, and the one for reports on associations we open."""
    if config.tls_cert is None:
        return None, None
    # Our private key (inside the certificate when there is no key file) is checked there:
    # a copy would let anyone on this machine pose as this receiver.
    tls = receiver_contexts(
        cert=config.tls_cert, key=config.tls_key, ca=config.tls_ca, prefix="--tls-"
    )
    return tls.server, tls.client


def _listen(home: Paths, settings: ReceiveSettings) -> None:
    """Listen until SIGTERM or Ctrl-C, then report what was received."""
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    log = _ReceiveLog()
    with Journal(home.journal_file) as journal:
        forwarder = forwarder_for(
            settings.forward_to,
            journal=journal,
            staging=home.data_dir / "forward-staging",
            mapping=settings.reconcile,
            audit_file=settings.audit_file,
            ae_title=settings.ae_title,
            observer=log,
        )
        server = StorageServer(settings, journal=journal, observer=log, forwarder=forwarder)
        server.start()
        previous = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            if server.swept:
                err.print(
                    f"dvdexit receive: removed {server.swept} temporary file(s) left by an "
                    "interrupted run",
                    markup=False,
                )
            err.print(
                f"dvdexit receive: listening on {settings.host}:{server.port} as "
                f"{settings.ae_title}{' (TLS)' if settings.ssl_context else ''}, storing in "
                f"{settings.store} (stop with Ctrl-C or SIGTERM)",
                markup=False,
            )
            while not stop.wait(0.5):
                pass
            err.print("dvdexit receive: stopping; finishing associations in progress")
            aborted = server.stop()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            server.stop()
    c = log.counts
    err.print(
        f"dvdexit receive: stopped; {c['stored']} instance(s) stored in {len(log.studies)} "
        f"stud{'y' if len(log.studies) == 1 else 'ies'}, {c['duplicate']} duplicate, "
        f"{c['conflict']} conflict, {c['refused']} refused"
        + (f"; {aborted} association(s) aborted at shutdown" if aborted else ""),
        markup=False,
    )


def _watch_drop_folder(
    home: Paths,
    drop: Path,
    *,
    store: Path,
    config: ReceiveConfig,
    forward_to: DimsePeer | None,
    mapping: PatientMapping | None,
    interval: float,
    settle: float,
    once: bool,
    json_output: bool,
    access: Access,
) -> None:
    """``receive --watch DIR``: import packages from a drop folder, once or until stopped."""
    if not drop.is_dir():
        raise UsageError(f"--watch {drop}: not a folder", hint="create the drop folder first")
    log = _ReceiveLog()
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    def filed(name: str, where: str, reason: str | None) -> None:
        err.print(
            f"package {name}: {where}" + (f": {reason}" if reason else ""),
            markup=False,
        )

    total = DropResult()
    # This importer in the journal, as a listener is AE@HOST:PORT STORE (receive/scp.py).
    receiver = f"{config.ae}@watch:{drop.resolve()} {store}"
    with Journal(home.journal_file) as journal:
        if config.fsync:
            journal.sync_every_commit()  # as durable as the fsynced instances it records
        completion = completion_stack(
            journal,
            on_complete=config.on_complete,
            forwarder=forwarder_for(
                forward_to,
                journal=journal,
                staging=home.data_dir / "forward-staging",
                mapping=mapping,
                audit_file=audit_path(home),
                ae_title=config.ae,
                observer=log,
            ),
            idle_timeout=3600.0,  # never used: packages complete when imported
            observer=log,
            audit=ReceiveAuditor(
                AuditTrail(audit_path(home), process="dvdexit receive --watch"),
                local_ae=config.ae,
                kind="import",
            ),
        )
        instance_store = InstanceStore(
            store, fsync=config.fsync, layout=config.layout, access=access
        )
        try:
            instance_store.make_root()
        except OSError as exc:
            raise ConfigError(
                f"cannot create the store {store}: {exc.strerror}",
                hint="choose another --store, or fix its permissions",
            ) from exc
        completion.start(receiver, idle=False)
        previous = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            if not once:
                err.print(
                    f"dvdexit receive: watching {drop} every {interval:g} s, storing in "
                    f"{store} (stop with Ctrl-C or SIGTERM)",
                    markup=False,
                )
            while True:
                result = process_drop_folder(
                    drop,
                    store=instance_store,
                    journal=journal,
                    on_package=filed,
                    settle=settle,
                    tracker=completion.tracker,
                    sr_to_pdf=config.sr_to_pdf,
                    receiver=receiver,
                )
                _merge(total, result)
                if once or stop.wait(interval):
                    break
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            # Hooks and forwards of the packages imported are let finish (or stay journaled).
            completion.stop(60.0)
    code = ExitCode.OK
    if total.not_intact:
        code = ExitCode.VERIFY_FAILED
    elif total.rejected or total.conflicts:
        code = ExitCode.PARTIAL_FAILURE
    if json_output:
        print_json(total.to_json() | {"exit_code": int(code)})
    err.print(
        f"dvdexit receive: {len(total.done)} package(s) imported ({total.stored} instance(s) "
        f"stored, {total.duplicates} duplicate, {total.conflicts} conflict), "
        f"{len(total.rejected)} rejected"
        + (f", {len(total.waiting)} still being written" if total.waiting else ""),
        markup=False,
    )
    if code != ExitCode.OK:
        raise typer.Exit(int(code))


def _merge(total: DropResult, result: DropResult) -> None:
    total.done += result.done
    total.rejected += result.rejected
    total.studies += result.studies
    total.stored += result.stored
    total.duplicates += result.duplicates
    total.conflicts += result.conflicts
    total.not_intact += result.not_intact
    total.waiting = result.waiting  # what the last pass left


def _rerun_hooks(journal_file: Path, hook: object) -> None:
    if not hook:
        raise UsageError("--rerun-hooks needs --on-complete (or on_complete in [receive])")
    with Journal(journal_file) as journal:
        runner = HookRunner(str(hook), journal=journal)
        studies = journal.studies_with_failed_hooks()
        failed = 0
        for study in studies:
            run_id = journal.start_hook_run(study.study_uid, runner.command)
            ok = runner.run(study, run_id)
            failed += not ok
            err.print(
                f"hook {'succeeded' if ok else 'failed'}: study {study.study_uid}", markup=False
            )
    err.print(f"dvdexit receive: re-ran the hook for {len(studies)} stud(ies), {failed} failed")
    if failed:
        # Like a send with failed instances: partial failure, the journal holds them.
        raise typer.Exit(int(ExitCode.PARTIAL_FAILURE))
