"""``dvdexit peers``: the address book of peers (peers.toml) and their secrets."""

from __future__ import annotations

import getpass
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dvdexit_cli.cli import options
from dvdexit_cli.cli.errors import JsonErrorsCommand, handle_errors
from dvdexit_cli.cli.options import JsonOption
from dvdexit_cli.cli.render import err, out, print_json
from dvdexit_cli.cli.status import render_diagnosis
from dvdexit_cli.config import (
    AUTH_KINDS,
    DEFAULT_CALLING_AE,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MIN_RATE,
    DEFAULT_READ_TIMEOUT,
    MAX_WORKERS,
    AnyPeer,
    DicomWebPeer,
    DimsePeer,
    FolderPeer,
    PeerBook,
    parse_host_port,
    resolve_paths,
    validate_dicomweb,
)
from dvdexit_cli.credentials import (
    Secret,
    delete_secret,
    env_var_name,
    keyring_status,
    lookup_secret,
    secret_source,
    store_secret,
)
from dvdexit_cli.diagnose import diagnose
from dvdexit_cli.errors import ConfigError, UsageError
from dvdexit_cli.journal import Journal
from dvdexit_cli.tls import check_key_file

__all__ = ["app"]

app = typer.Typer(
    help="Add, list, show, test and remove peers; store their secrets.", no_args_is_help=True
)


def _book() -> PeerBook:
    return PeerBook(resolve_paths().peers_file)


def _file(value: Path | None, option: str) -> str | None:
    if value is None:
        return None
    if not value.is_file():
        raise ConfigError(f"{option} {value}: no such file")
    return str(value.resolve())


def _summary(peer: AnyPeer) -> str:
    if isinstance(peer, DimsePeer):
        tls = " over TLS" if peer.uses_tls else ""
        return f"{peer.called_ae}@{peer.address}{tls} (we call as {peer.calling_ae})"
    if isinstance(peer, DicomWebPeer):
        who = f", user {peer.user}" if peer.user else ""
        cert = ", client certificate" if peer.client_cert else ""
        return f"{peer.url} ({peer.auth} auth{who}{cert})"
    return f"folder {peer.path}"


@app.command("add", cls=JsonErrorsCommand)
@handle_errors
def add_command(
    name: Annotated[str, typer.Argument(help="A short name for the peer, used with --to.")],
    dimse: Annotated[
        str | None, typer.Option("--dimse", metavar="HOST:PORT", help="The peer's DICOM address.")
    ] = None,
    ae: Annotated[
        str | None, typer.Option("--ae", metavar="CALLED_AE", help="The peer's AE title.")
    ] = None,
    calling_ae: Annotated[
        str, typer.Option("--calling-ae", metavar="AE", help="Our AE title towards this peer.")
    ] = DEFAULT_CALLING_AE,
    tls_ca: Annotated[
        Path | None,
        typer.Option("--tls-ca", metavar="FILE", help="DIMSE over TLS: the CA bundle (PEM)."),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option("--tls-cert", metavar="FILE", help="DIMSE over TLS: our certificate."),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option("--tls-key", metavar="FILE", help="DIMSE over TLS: our private key."),
    ] = None,
    max_pdu: Annotated[
        int,
        typer.Option(
            "--max-pdu",
            parser=options.size,
            metavar=options.SIZE,
            help="Largest PDU to accept from and send to this peer (0: [local] max_pdu, "
            "1M unless set).",
        ),
    ] = 0,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            max=MAX_WORKERS,
            help="What 'send' uses without --workers: parallel associations (DIMSE; 1 for a "
            "PACS that accepts only one) or STOW-RS requests in flight (DICOMweb).",
        ),
    ] = None,
    dicomweb: Annotated[
        str | None, typer.Option("--dicomweb", metavar="URL", help="A DICOMweb base URL.")
    ] = None,
    auth: Annotated[
        str, typer.Option("--auth", metavar="|".join(AUTH_KINDS), help="DICOMweb auth kind.")
    ] = "none",
    user: Annotated[
        str | None, typer.Option("--user", metavar="USER", help="DICOMweb basic-auth user.")
    ] = None,
    ca_bundle: Annotated[
        Path | None,
        typer.Option("--ca-bundle", metavar="FILE", help="DICOMweb: CA bundle for https."),
    ] = None,
    client_cert: Annotated[
        Path | None,
        typer.Option(
            "--client-cert", metavar="FILE", help="DICOMweb over https: our certificate (PEM)."
        ),
    ] = None,
    client_key: Annotated[
        Path | None,
        typer.Option(
            "--client-key",
            metavar="FILE",
            help="DICOMweb over https: its private key (PEM; not readable by others).",
        ),
    ] = None,
    connect_timeout: Annotated[
        float,
        typer.Option(
            "--connect-timeout",
            parser=options.positive_duration,
            metavar=options.DURATION,
            help="DICOMweb: time allowed to connect (15s, 1m).",
        ),
    ] = DEFAULT_CONNECT_TIMEOUT,
    read_timeout: Annotated[
        float,
        typer.Option(
            "--read-timeout",
            parser=options.positive_duration,
            metavar=options.DURATION,
            help="DICOMweb: time without progress (reading or writing) before giving up.",
        ),
    ] = DEFAULT_READ_TIMEOUT,
    min_rate: Annotated[
        int,
        typer.Option(
            "--min-rate",
            parser=options.rate,
            metavar=options.RATE,
            show_default="256K",
            help="DICOMweb: slowest average a STOW-RS request may take (256K, 1M); its "
            "budget is connect + read timeout + bytes / min-rate.",
        ),
    ] = DEFAULT_MIN_RATE,
    folder: Annotated[
        Path | None, typer.Option("--folder", metavar="PATH", help="A drop folder.")
    ] = None,
    replace_existing: Annotated[
        bool, typer.Option("--replace", help="Overwrite a peer of that name.")
    ] = False,
) -> None:
    """Add a peer: --dimse HOST:PORT --ae AE, --dicomweb URL, or --folder PATH."""
    chosen = [
        o
        for o, v in (("--dimse", dimse), ("--dicomweb", dicomweb), ("--folder", folder))
        if v is not None
    ]
    if len(chosen) != 1:
        raise UsageError("give exactly one of --dimse HOST:PORT, --dicomweb URL, --folder PATH")
    peer: AnyPeer
    if dimse is not None:
        if ae is None:
            raise UsageError("a DIMSE peer needs --dimse HOST:PORT and --ae CALLED_AE")
        if tls_key is not None and tls_cert is None:
            raise UsageError("--tls-key goes with --tls-cert")
        host, port = parse_host_port(dimse)
        peer = DimsePeer(
            name=name,
            host=host,
            port=port,
            called_ae=ae,
            calling_ae=calling_ae,
            tls_ca=_file(tls_ca, "--tls-ca"),
            tls_cert=_file(tls_cert, "--tls-cert"),
            tls_key=_file(tls_key, "--tls-key"),
            max_pdu=max_pdu,
            workers=workers,
        )
        if peer.tls_cert:  # without tls_key, the key is inside tls_cert
            check_key_file(
                peer.tls_key or peer.tls_cert, what="--tls-key" if peer.tls_key else "--tls-cert"
            )
    elif dicomweb is not None:
        if client_key is not None and client_cert is None:
            raise UsageError("--client-key goes with --client-cert")
        peer = DicomWebPeer(
            name=name,
            url=dicomweb,
            auth=auth,
            user=user,
            ca_bundle=_file(ca_bundle, "--ca-bundle"),
            client_cert=_file(client_cert, "--client-cert"),
            client_key=_file(client_key, "--client-key"),
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            min_rate=min_rate,
            workers=workers,
        )
        validate_dicomweb(peer)
        key = peer.client_key or peer.client_cert
        if key:
            check_key_file(key, what="--client-key" if peer.client_key else "--client-cert")
    else:
        assert folder is not None
        if workers is not None:
            raise UsageError(
                "--workers does not apply to a folder peer: one writer makes its package"
            )
        peer = FolderPeer(name=name, path=str(folder.expanduser().resolve()))
    _book().add(peer, replace=replace_existing)
    err.print(f"peer {name} added: {_summary(peer)}", markup=False)
    if isinstance(peer, DicomWebPeer) and peer.needs_secret:
        err.print(
            f"store its secret with 'dvdexit peers login {name}' (or set "
            f"{env_var_name(name)} for headless use)",
            markup=False,
        )


@app.command("list")
@handle_errors
def list_command(json_output: JsonOption = False) -> None:
    """List the peers."""
    book = _book()
    if json_output:
        print_json({"peers": [p.describe() for p in book]})
        return
    if not len(book):
        err.print(f"no peers yet ({book.path}); add one with 'dvdexit peers add'")
        return
    table = Table("name", "kind", "address", "details")
    for p in book:
        table.add_row(p.name, p.kind, p.address, _summary(p))
    out.print(table)


@app.command("show")
@handle_errors
def show_command(
    name: Annotated[str, typer.Argument(help="The peer to show.")],
    json_output: JsonOption = False,
) -> None:
    """Show one peer's settings, and where its secret would come from (never the secret)."""
    book = _book()
    peer = book.get_any(name)
    document: dict[str, object] = {**peer.describe(), "config_file": str(book.path)}
    if isinstance(peer, DicomWebPeer) and peer.needs_secret:
        document["secret"] = {
            "environment_variable": env_var_name(name),
            "source": secret_source(name),
            "keyring_backend": keyring_status().backend,
        }
    if json_output:
        print_json(document)
        return
    for key, value in document.items():
        if isinstance(value, dict):
            for sub, subvalue in value.items():
                out.print(
                    f"{key}.{sub}: {subvalue if subvalue is not None else 'not set'}", markup=False
                )
        else:
            out.print(f"{key}: {value}", markup=False)


@app.command("remove")
@handle_errors
def remove_command(
    name: Annotated[str, typer.Argument(help="The peer to remove.")],
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Remove it even though the journal holds items not yet sent to it (a replay "
            "then cannot send them: give up on them with 'send --abandon --to NAME').",
        ),
    ] = False,
) -> None:
    """Remove a peer (and its keyring secret, if any); refused while items to it are open."""
    home = resolve_paths()
    book = PeerBook(home.peers_file)
    book.get_any(name)  # an unknown name is an error before anything else
    open_items = 0
    if home.journal_file.exists():
        with Journal(home.journal_file) as journal:
            open_items = journal.open_items(peer=name)
    if open_items and not force:
        raise UsageError(
            f"peer {name} has {open_items} item(s) in the journal not yet sent; removing it "
            "would leave them for 'send --retry-failed', which could never send them",
            hint=f"give up on them with 'dvdexit send --abandon --to {name} --reason TEXT' "
            f"first, or remove it anyway with 'dvdexit peers remove {name} --force'",
        )
    book.remove(name)
    removed = delete_secret(name)
    err.print(f"peer {name} removed" + ("; its keyring secret too" if removed else ""))
    if open_items:
        err.print(
            f"dvdexit: warning: {open_items} item(s) to {name} stay open in the journal; "
            f"'dvdexit send --abandon --to {name} --reason TEXT' gives up on them",
            markup=False,
        )


@app.command("test", cls=JsonErrorsCommand)
@handle_errors
def test_command(
    name: Annotated[str, typer.Argument(help="The peer to test.")],
    contexts: Annotated[
        bool, typer.Option("--contexts", help="DIMSE: also show accepted storage SOP classes.")
    ] = False,
    timeout: options.StageTimeoutOption = 10.0,
    json_output: JsonOption = False,
) -> None:
    """Diagnose a peer stage by stage (same as 'dvdexit status --peer NAME'); exit 0 or 5."""
    diagnosis = diagnose(_book().get_any(name), timeout=timeout, contexts=contexts)
    if json_output:
        print_json(diagnosis.to_json())
    else:
        render_diagnosis(diagnosis)
    raise typer.Exit(int(diagnosis.exit_code))


@app.command("login")
@handle_errors
def login_command(
    name: Annotated[str, typer.Argument(help="The peer whose secret to store.")],
    from_env: Annotated[
        bool,
        typer.Option(
            "--from-env",
            help="Take the secret from the environment variable DVDEXIT_SECRET_<NAME> "
            "instead of a prompt (for provisioning scripts).",
        ),
    ] = False,
) -> None:
    """Store a peer's password or token in the OS keyring (service "dvdexit").

    Prompts without echo, only when stdin is a terminal.
    """
    peer = _book().get_any(name)
    if not isinstance(peer, DicomWebPeer) or not peer.needs_secret:
        raise ConfigError(
            f"peer {name!r} uses no secret",
            hint="only DICOMweb peers with --auth basic or bearer have one",
        )
    variable = env_var_name(name)
    if from_env:
        secret = lookup_secret_from_env(variable)
    elif not sys.stdin.isatty():
        raise ConfigError(
            "cannot ask for the secret: stdin is not a terminal",
            hint=f"run 'dvdexit peers login {name}' in a terminal, use --from-env with "
            f"{variable} set, or set {variable} for the dvdexit process itself",
        )
    else:
        what = "password" if peer.auth == "basic" else "token"
        value = getpass.getpass(
            f"{what} for {name}" + (f" (user {peer.user})" if peer.user else "") + ": "
        )
        if not value:
            raise UsageError("empty secret: nothing stored")
        secret = Secret(value)
    backend = store_secret(name, secret)
    # Read it back through the chain's keyring step: proves the backend really keeps it.
    if lookup_secret(name, environ={}) != secret:
        raise ConfigError(f"the keyring ({backend}) did not keep the secret")
    err.print(f"secret for {name} stored in the OS keyring ({backend})", markup=False)


def lookup_secret_from_env(variable: str) -> Secret:
    import os

    value = os.environ.get(variable)
    if not value:
        raise ConfigError(f"--from-env: {variable} is not set")
    return Secret(value)


@app.command("local", cls=JsonErrorsCommand)
@handle_errors
def local_command(
    ae: Annotated[str | None, typer.Option("--ae", metavar="AE", help="Our AE title.")] = None,
    port: Annotated[
        int | None,
        typer.Option(
            "--port",
            min=1,
            max=65535,
            help="Where peers reach us (Storage Commitment reports, C-MOVE).",
        ),
    ] = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Address to listen on (empty: all).")
    ] = None,
    max_pdu: Annotated[
        int | None,
        typer.Option(
            "--max-pdu",
            parser=options.size,
            metavar=options.SIZE,
            help="Largest PDU we advertise and send (4K to 16M; default 1M).",
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Show or change our own side ([local] in peers.toml)."""
    book = _book()
    settings = (("ae_title", ae), ("port", port), ("host", host), ("max_pdu", max_pdu))
    changes = {k: v for k, v in settings if v is not None}
    if changes:
        book.set_local(replace(book.local, **changes))  # type: ignore[arg-type]
    document = book.local.to_toml()
    if json_output:
        print_json({"local": document})
        return
    for key, value in document.items():
        out.print(f"{key}: {value}", markup=False)
