"""What `dvdexit send` reads from its inputs, seen from the command line (docs/sending.md).

A FIFO nobody writes, a unix socket, links to series kept elsewhere and a zip bomb, each
in front of a real peer (DCMTK ``storescp +B +xa``): the send finishes, says what it
left out and why, sends the rest, and its exit code tells a cron job whether part of a
study is missing. Each send runs as a subprocess with a timeout, so a send that hangs
fails its test instead of hanging the suite.
"""

from __future__ import annotations

import json
import os
import socket
import zipfile
from pathlib import Path
from typing import Any

import pytest
from peers import LOOPBACK, run_dvdexit

from dvdexit_cli.samples import write_study

# Far above what these sends need; reached only by a send that hangs.
_HANG = 60.0


def _add_peer(home: Path, port: int, ae: str) -> None:
    result = run_dvdexit(
        "peers", "add", "pacs", "--dimse", f"{LOOPBACK}:{port}", "--ae", ae, home=home
    )
    assert result.returncode == 0, result.stderr


def _send(home: Path, *paths: Path) -> tuple[int, Any, str]:
    result = run_dvdexit("send", *paths, "--to", "pacs", "--json", home=home, timeout=_HANG)
    try:
        document = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"no JSON document (exit {result.returncode}): {result.stderr}")
    return result.returncode, document, result.stderr


def _arrived(outdir: Path) -> int:
    return sum(1 for p in outdir.rglob("*") if p.is_file())


def test_send_with_a_fifo_and_a_socket_in_the_folder_finishes_names_them_and_sends_the_rest(
    tmp_path: Path, dvdexit_home: Path, storescp: Any
) -> None:
    study = tmp_path / "study"
    files = write_study(study, n_instances=3, seed="fifo-send")
    os.mkfifo(study / "pipe")
    named = tmp_path / "named-pipe"
    os.mkfifo(named)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(study / "sock"))
    scp = storescp(tmp_path / "arrived")
    _add_peer(dvdexit_home, scp.port, scp.ae)

    try:
        code, document, _ = _send(dvdexit_home, study, named)
    finally:
        listener.close()

    assert code == 0, document
    assert document["sent"] == len(files)
    skipped = {s["path"]: s["reason"] for s in document["skipped_files"]}
    assert skipped == {
        str(study / "pipe"): "not a regular file (a FIFO); not read",
        str(study / "sock"): "not a regular file (a socket); not read",
        str(named): "not a regular file (a FIFO); not read",
    }
    assert _arrived(scp.outdir) == len(files)


def test_a_fifo_alone_on_the_command_line_ends_with_nothing_to_send(
    tmp_path: Path, dvdexit_home: Path
) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    _add_peer(dvdexit_home, 104, "NOBODY")

    result = run_dvdexit("send", fifo, "--to", "pacs", home=dvdexit_home, timeout=_HANG)

    assert result.returncode == 4, result.stderr
    assert "not a regular file (a FIFO)" in result.stderr


def test_a_study_assembled_from_links_to_series_kept_elsewhere_exits_6_until_they_are_inputs(
    tmp_path: Path, dvdexit_home: Path, storescp: Any
) -> None:
    kept = tmp_path / "archive"
    ct = write_study(kept / "ct", n_instances=3, seed="linked-send")
    study = tmp_path / "study"
    own = write_study(study / "sc", n_instances=1, seed="linked-send-own", modality="OT")
    (study / "ct").symlink_to(kept / "ct", target_is_directory=True)
    scp = storescp(tmp_path / "arrived")
    _add_peer(dvdexit_home, scp.port, scp.ae)

    code, document, _ = _send(dvdexit_home, study)

    assert code == 6, document
    assert document["sent"] == len(own)
    (failure,) = document["failures"]
    assert failure["path"] == str(study / "ct")
    assert "outside the inputs given" in failure["reason"]
    assert failure["retryable"] is False

    # The way out the reason names: give the link's target as an input too.
    code, document, _ = _send(dvdexit_home, study, kept / "ct")

    assert code == 0, document
    assert document["sent"] == len(ct) + len(own)
    assert document["failures"] == []


def test_a_zip_bomb_fails_alone_leaves_nothing_behind_and_the_next_send_works(
    tmp_path: Path, dvdexit_home: Path, storescp: Any
) -> None:
    files = write_study(tmp_path / "study", n_instances=2, seed="bomb-send")
    archive = tmp_path / "portal-export.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(files[0], "STUDY/IM1")
        with zf.open("STUDY/IM0", "w") as member:
            zeros = bytes(1 << 20)
            for _ in range(64):
                member.write(zeros)
        zf.write(files[1], "STUDY/IM2")
    scp = storescp(tmp_path / "arrived")
    _add_peer(dvdexit_home, scp.port, scp.ae)

    code, document, _ = _send(dvdexit_home, archive)

    assert code == 6, document
    assert document["sent"] == len(files)
    (failure,) = document["failures"]
    assert failure["path"] == f"{archive}!/STUDY/IM0"
    assert "times its compressed size" in failure["reason"]
    assert failure["retryable"] is False
    unpacked = dvdexit_home / "unpacked"
    assert not [p for p in unpacked.rglob("IM0")]
    assert _arrived(scp.outdir) == len(files)

    later = write_study(tmp_path / "later", n_instances=2, seed="after-bomb")
    code, document, _ = _send(dvdexit_home, tmp_path / "later")
    assert code == 0, document
    assert document["sent"] == len(later)
