"""``dvdexit verify``: prove that files are what the journal says was sent or received."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dvdexit_cli.cli import options
from dvdexit_cli.cli.errors import handle_errors
from dvdexit_cli.cli.options import JsonOption
from dvdexit_cli.cli.render import err, out, print_json
from dvdexit_cli.config import (
    DicomWebPeer,
    DimsePeer,
    FolderPeer,
    LocalSettings,
    PeerBook,
    resolve_paths,
)
from dvdexit_cli.errors import ConfigError, InputError, UsageError
from dvdexit_cli.exitcodes import ExitCode
from dvdexit_cli.journal import Journal
from dvdexit_cli.package import is_package, verify_package
from dvdexit_cli.verify.local import VERDICTS, verify_paths
from dvdexit_cli.verify.remote import (
    REMOTE_VERDICTS,
    Expected,
    RemoteVerifyResult,
    expected_from_journal,
    expected_from_paths,
    verify_remote,
    verify_remote_dicomweb,
)

__all__ = ["verify_command"]

_LISTED = 20


@handle_errors
def verify_command(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Files or folders to check.", show_default=False),
    ] = None,
    peer: Annotated[
        str | None,
        typer.Option(
            "--peer",
            metavar="NAME",
            help="Verify what this peer holds (C-FIND, Storage Commitment, C-GET and "
            "compare) instead of local files.",
        ),
    ] = None,
    transfer: Annotated[
        int | None,
        typer.Option(
            "--transfer",
            metavar="ID",
            help="With --peer: the instances of this transfer ('dvdexit status' lists them).",
        ),
    ] = None,
    study: Annotated[
        list[str] | None,
        typer.Option(
            "--study",
            metavar="UID",
            help="With --peer: the sent instances of this study (repeatable).",
        ),
    ] = None,
    listen_port: Annotated[
        int | None,
        typer.Option(
            "--listen-port",
            min=1,
            max=65535,
            help="With --peer: our port for the "
            "peer's Storage Commitment report (default: [local] port in peers.toml).",
        ),
    ] = None,
    commit_timeout: Annotated[
        float,
        typer.Option(
            "--commit-timeout",
            parser=options.positive_duration,
            metavar=options.DURATION,
            help="How long to wait for the Storage Commitment report (30, 2m).",
        ),
    ] = 30.0,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            parser=options.positive_duration,
            metavar=options.DURATION,
            help="Time allowed per DIMSE exchange; for a DICOMweb peer, to connect and "
            "between two reads.",
        ),
    ] = 30.0,
    json_output: JsonOption = False,
) -> None:
    """Check files against the journal, or (--peer) what a peer holds against what was sent."""
    paths = paths or []
    for path in paths:
        if not path.exists():
            raise InputError(f"path does not exist: {path}")
    if peer is not None:
        _verify_peer(
            peer,
            paths=paths,
            transfer=transfer,
            studies=study or [],
            listen_port=listen_port,
            commit_timeout=commit_timeout,
            timeout=timeout,
            json_output=json_output,
        )
        return
    if transfer is not None or study:
        raise UsageError("--transfer and --study go with --peer NAME")
    if not paths:
        raise UsageError("give files or folders to verify, or --peer NAME with what to verify")
    packages = [p for p in paths if is_package(p)]
    if packages:
        if len(packages) != len(paths):
            raise UsageError("verify transfer packages on their own, not with other paths")
        _verify_packages(packages, json_output=json_output)
        return
    with Journal(resolve_paths().journal_file) as journal:
        result = verify_paths(paths, journal=journal)
    if json_output:
        print_json(result.to_json())
        raise typer.Exit(int(result.exit_code))
    table = Table("study", *VERDICTS, "status")
    status = result.study_status()
    for study_uid, per_study in sorted(result.studies().items()):
        table.add_row(study_uid, *(str(per_study[k]) for k in VERDICTS), status[study_uid])
    if result.files:
        out.print(table)
    problems = [f for f in result.files if f.verdict != "identical"]
    for f in problems[:_LISTED]:
        out.print(f"  {f.verdict}: {f.path}: {f.reason}", markup=False)
    if len(problems) > _LISTED:
        out.print(f"  ... and {len(problems) - _LISTED} more (--json lists them all)")
    total = len(result.files)
    verdict = "all identical" if result.exit_code == 0 else "NOT verified"
    out.print(
        f"verified {total} instance(s): {result.count('identical')} identical, "
        f"{result.count('different')} different, {result.count('conflict')} conflict, "
        f"{result.count('missing')} missing, "
        f"{result.count('unknown')} unknown, "
        f"{result.count('invalid')} invalid; {len(result.ignored)} non-DICOM file(s) ignored "
        f"-> {verdict}",
        markup=False,
    )
    if result.elsewhere:
        out.print(
            f"{len(result.elsewhere)} instance(s) of these studies were sent or stored from "
            "elsewhere (such as reports and notes generated for a send) and are not judged "
            "here; 'dvdexit verify --peer PEER --study UID' checks what the peer holds "
            "(--json lists them)",
            markup=False,
        )
    raise typer.Exit(int(result.exit_code))


def _verify_peer(
    name: str,
    *,
    paths: list[Path],
    transfer: int | None,
    studies: list[str],
    listen_port: int | None,
    commit_timeout: float,
    timeout: float,
    json_output: bool,
) -> None:
    chosen = sum((bool(paths), transfer is not None, bool(studies)))
    if chosen != 1:
        raise UsageError("with --peer, give exactly one of --transfer ID, --study UID or PATH...")
    home = resolve_paths()
    book = PeerBook(home.peers_file)
    target = book.get_any(name)
    if isinstance(target, FolderPeer):
        raise ConfigError(
            f"peer {name!r} is a folder: it cannot be verified remotely",
            hint="verify the folder's files locally: dvdexit verify PATH",
        )
    local = book.local if listen_port is None else replace(book.local, port=listen_port)
    with Journal(home.journal_file) as journal:
        expected: list[Expected]
        if paths:
            expected = expected_from_paths(paths)
        else:
            expected = expected_from_journal(journal, transfer_id=transfer, study_uids=studies)

        result = remote_verify(
            target,
            expected,
            local=local,
            journal=journal,
            transfer_id=transfer,
            timeout=timeout,
            commit_timeout=commit_timeout,
            quiet=json_output,
        )
    if json_output:
        print_json(result.to_json())
        raise typer.Exit(int(result.exit_code))
    render_remote(result)
    raise typer.Exit(int(result.exit_code))


def remote_verify(
    target: DimsePeer | DicomWebPeer,
    expected: list[Expected],
    *,
    local: LocalSettings,
    journal: Journal,
    transfer_id: int | None,
    timeout: float = 30.0,
    commit_timeout: float = 30.0,
    quiet: bool = False,
) -> RemoteVerifyResult:
    """The strongest remote verify the peer supports (also run by ``send --verify``)."""

    def on_check(check: str) -> None:
        if not quiet:
            err.print(f"checking: {check}")

    if isinstance(target, DicomWebPeer):
        return verify_remote_dicomweb(target, expected, timeout=timeout, on_check=on_check)
    return verify_remote(
        target,
        expected,
        local=local,
        journal=journal,
        transfer_id=transfer_id,
        timeout=timeout,
        commit_timeout=commit_timeout,
        on_check=on_check,
    )


def render_remote(result: RemoteVerifyResult) -> None:
    """Human output of a remote verify."""
    for check, why in result.checks_unavailable.items():
        out.print(f"check {check}: unavailable ({why})", markup=False)
    if not result.verifiable:
        out.print(
            f"cannot verify remotely: none of the checks could be used with peer "
            f"{result.peer} -> NOT verified (exit 7)",
            markup=False,
        )
        return
    out.print(f"checks used: {', '.join(result.checks_used)}", markup=False)
    table = Table("study", *REMOTE_VERDICTS)
    for study_uid, counts in sorted(result.studies().items()):
        table.add_row(study_uid, *(str(counts[k]) for k in REMOTE_VERDICTS))
    out.print(table)
    problems = [v for v in result.verdicts if v.verdict not in ("identical",)]
    for v in problems[:_LISTED]:
        out.print(f"  {v.verdict}: {v.sop_instance_uid}: {v.reason}", markup=False)
    if len(problems) > _LISTED:
        out.print(f"  ... and {len(problems) - _LISTED} more (--json lists them all)")
    summary = ", ".join(f"{result.count(k)} {k}" for k in REMOTE_VERDICTS)
    verdict = "verified" if result.exit_code == 0 else "NOT verified"
    committed = sum(v.committed is True for v in result.verdicts)
    out.print(f"{summary}; {committed} committed -> {verdict}", markup=False)


def _verify_packages(packages: list[Path], *, json_output: bool) -> None:
    checks = [verify_package(p) for p in packages]
    code = ExitCode.OK if all(c.verdict == "intact" for c in checks) else ExitCode.VERIFY_FAILED
    if json_output:
        print_json({"packages": [c.to_json() for c in checks], "exit_code": int(code)})
        raise typer.Exit(int(code))
    for check in checks:
        count = len(check.manifest.entries) if check.manifest else 0
        out.print(
            f"package {check.path}: {check.verdict} ({check.checked} of {count} instance(s) "
            f"checked against the manifest)",
            markup=False,
        )
        for kind, name, reason in check.problems[:_LISTED]:
            out.print(f"  {kind}: {name}: {reason}", markup=False)
        if len(check.problems) > _LISTED:
            out.print(f"  ... and {len(check.problems) - _LISTED} more (--json lists them all)")
    raise typer.Exit(int(code))
