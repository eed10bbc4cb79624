"""A DICOMweb URL with credentials in it (``http://user:secret@host/...``) is refused.

Kept, the secret would sit in peers.toml and the journal and be shown by ``peers list``,
``peers show`` and ``-v`` logs. It is refused with exit 3 (a credentials problem), by
``peers add`` and when a hand-edited peers.toml holds one, and never printed or written.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from peers import free_port, run_dvdexit

from dvdexit_cli.samples import make_sample_dvd

SECRET = "secret"


def _no_secret_anywhere(
    home: Path, *results: subprocess.CompletedProcess[str], but: Path | None = None
) -> None:
    """Neither output nor any file under ``home`` (other than ``but``) holds the secret."""
    for result in results:
        assert SECRET not in result.stdout
        assert SECRET not in result.stderr
    for path in home.rglob("*"):
        if path.is_file() and path != but:
            assert SECRET.encode() not in path.read_bytes(), path


@pytest.mark.parametrize(
    "netloc", [f"user:{SECRET}@127.0.0.1:{{port}}", f"{SECRET}@127.0.0.1:{{port}}"]
)
def test_peers_add_refuses_a_url_with_credentials_and_points_to_the_keyring(
    dvdexit_home: Path, netloc: str
) -> None:
    port = free_port()
    url = f"http://{netloc.format(port=port)}/dicom-web"

    added = run_dvdexit("-v", "peers", "add", "w", "--dicomweb", url, home=dvdexit_home)

    assert added.returncode == 3, added.stderr
    message = " ".join(added.stderr.split())
    assert f"http://127.0.0.1:{port}/dicom-web" in message
    assert "--auth basic --user NAME" in message
    assert "dvdexit peers login w" in message
    assert not (dvdexit_home / "peers.toml").exists()
    listed = run_dvdexit("peers", "list", home=dvdexit_home)
    assert "w" not in listed.stdout.split()
    _no_secret_anywhere(dvdexit_home, added, listed)


def test_a_hand_edited_peers_toml_with_a_credential_url_stops_every_command_without_showing_it(
    tmp_path: Path, dvdexit_home: Path
) -> None:
    port = free_port()
    (dvdexit_home / "peers.toml").write_text(
        f'[peers.w]\nkind = "dicomweb"\nurl = "https://user:{SECRET}@pacs.example.org:{port}'
        '/dicom-web"\n'
    )
    study = make_sample_dvd(tmp_path / "dvd", ct_slices=1, sc_images=1).root
    results = [
        run_dvdexit("-v", "peers", "list", home=dvdexit_home),
        run_dvdexit("-v", "peers", "show", "w", home=dvdexit_home),
        run_dvdexit("-v", "peers", "list", "--json", home=dvdexit_home),
        run_dvdexit("-v", "send", study, "--to", "w", home=dvdexit_home),
    ]
    for result in results:
        assert result.returncode == 3, (result.args, result.stdout, result.stderr)
        message = " ".join(result.stderr.split())
        assert f"https://pacs.example.org:{port}/dicom-web" in message, message
        assert "peers login w" in message
    # The file is the user's to fix; nothing else (journal, audit) may repeat the secret.
    _no_secret_anywhere(dvdexit_home, *results, but=dvdexit_home / "peers.toml")
