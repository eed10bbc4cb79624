"""``dvdexit verify``: prove that files are what the journal says was sent or received."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dvdexit_cli.cli.errors import handle_errors
from dvdexit_cli.cli.options import JsonOption
from dvdexit_cli.cli.render import out, print_json
from dvdexit_cli.config import resolve_paths
from dvdexit_cli.engine import VERDICTS, verify_paths
from dvdexit_cli.errors import InputError
from dvdexit_cli.journal import Journal

__all__ = ["verify_command"]

_LISTED = 20


@handle_errors
def verify_command(
    paths: Annotated[
        list[Path], typer.Argument(help="Files or folders to check.", show_default=False)
    ],
    json_output: JsonOption = False,
) -> None:
    """Check that each file parses and that its digest equals the journal's record."""
    for path in paths:
        if not path.exists():
            raise InputError(f"path does not exist: {path}")
    with Journal(resolve_paths().journal_file) as journal:
        result = verify_paths(paths, journal=journal)
    if json_output:
        print_json(result.to_json())
        raise typer.Exit(int(result.exit_code))
    table = Table("study", *VERDICTS)
    for study, counts in sorted(result.studies().items()):
        table.add_row(study, *(str(counts[k]) for k in VERDICTS))
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
        f"{result.count('unknown')} unknown, "
        f"{result.count('invalid')} invalid; {len(result.ignored)} non-DICOM file(s) ignored "
        f"-> {verdict}",
        markup=False,
    )
    raise typer.Exit(int(result.exit_code))
