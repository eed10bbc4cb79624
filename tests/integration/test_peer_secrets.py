"""Peer secrets: env var, then keyring; never in output, logs, journal or files."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
from pathlib import Path
from typing import Any

from peers import REPO_ROOT, run_dvdexit

TESTS = Path(__file__).resolve().parents[1]


def _env(keyring_file: Path, **extra: str) -> dict[str, str]:
    return {
        "PYTHONPATH": os.pathsep.join((str(REPO_ROOT), str(TESTS))),
        "PYTHON_KEYRING_BACKEND": "dvdexit_test_keyring.FileKeyring",
        "TEST_KEYRING_FILE": str(keyring_file),
        **extra,
    }


def test_a_secret_stored_by_login_is_used_and_appears_nowhere(
    tmp_path: Path, dvdexit_home: Path, orthanc: Any
) -> None:
    secret = "pw-" + secrets.token_hex(12)
    pacs = orthanc(users={"alice": secret})
    keyring_file = tmp_path / "os-keyring.json"  # the "OS keyring": outside DVDEXIT_HOME
    env = _env(keyring_file)
    runs: list[subprocess.CompletedProcess[str]] = []

    def dvdexit(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        done = run_dvdexit(*args, home=dvdexit_home, env={**env, **extra})
        runs.append(done)
        return done

    added = dvdexit(
        "peers",
        "add",
        "web",
        "--dicomweb",
        pacs.dicomweb_url,
        "--auth",
        "basic",
        "--user",
        "alice",
    )
    assert added.returncode == 0, added.stderr
    assert "DVDEXIT_SECRET_WEB" in added.stderr

    no_tty = dvdexit("peers", "login", "web")
    no_secret = dvdexit("status", "--peer", "web", "--json")
    stored = dvdexit("peers", "login", "web", "--from-env", DVDEXIT_SECRET_WEB=secret)
    healthy = dvdexit("status", "--peer", "web", "--json")
    verbose = dvdexit("-vv", "peers", "test", "web")
    shown = dvdexit("peers", "show", "web", "--json")
    wrong_env = dvdexit("status", "--peer", "web", "--json", DVDEXIT_SECRET_WEB="not-it")
    listed = dvdexit("peers", "list", "--json")
    journal = dvdexit("status", "--json")

    assert no_tty.returncode == 3
    assert "stdin is not a terminal" in no_tty.stderr
    assert no_secret.returncode == 3
    assert "DVDEXIT_SECRET_WEB" in no_secret.stderr and "peers login web" in no_secret.stderr
    assert stored.returncode == 0, stored.stderr
    assert secret in keyring_file.read_text()  # the test keyring really holds it
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    report = json.loads(healthy.stdout)
    assert [s["stage"] for s in report["stages"]] == ["dns", "tcp", "tls", "auth", "qido"]
    assert verbose.returncode == 0, verbose.stderr
    assert json.loads(shown.stdout)["secret"]["source"] == "keyring"
    assert wrong_env.returncode == 5  # the environment comes first in the chain
    assert json.loads(wrong_env.stdout)["failed_stage"] == "auth"
    assert listed.returncode == journal.returncode == 0

    basic = base64.b64encode(f"alice:{secret}".encode()).decode()
    for done in runs:
        for text in (done.stdout, done.stderr):
            assert secret not in text
            assert basic not in text
    for path in dvdexit_home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert secret.encode() not in data, path
            assert basic.encode() not in data, path


def test_without_a_usable_keyring_login_says_so_and_names_the_headless_ways(
    dvdexit_home: Path,
) -> None:
    env = {"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}
    run_dvdexit(
        "peers",
        "add",
        "web",
        "--dicomweb",
        "https://pacs.example.invalid/dicom-web",
        "--auth",
        "bearer",
        home=dvdexit_home,
    )

    done = run_dvdexit(
        "peers",
        "login",
        "web",
        "--from-env",
        home=dvdexit_home,
        env={**env, "DVDEXIT_SECRET_WEB": "tok-123"},
    )

    assert done.returncode == 3
    assert "no usable OS keyring" in done.stderr
    assert "DVDEXIT_SECRET_WEB" in done.stderr
    assert "keyrings.alt" in done.stderr
    assert "tok-123" not in done.stderr + done.stdout


def test_a_secret_from_the_environment_shows_nowhere_through_send_verify_and_pull(
    tmp_path: Path, dvdexit_home: Path, orthanc: Any
) -> None:
    from dvdexit_cli.samples import make_sample_dvd

    secret = "env-" + secrets.token_hex(12)
    basic = base64.b64encode(f"carol:{secret}".encode()).decode()
    pacs = orthanc(users={"carol": secret})
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=2, sc_images=1)
    store = tmp_path / "pulled"
    env = {"DVDEXIT_SECRET_WEB": secret}
    added = run_dvdexit(
        "peers", "add", "web", "--dicomweb", pacs.dicomweb_url, "--auth", "basic",
        "--user", "carol", home=dvdexit_home,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr

    sent = run_dvdexit(
        "-vv", "send", media.root, "--to", "web", "--json", home=dvdexit_home, env=env
    )
    transfer = str(json.loads(sent.stdout)["transfer_id"])
    runs = [
        sent,
        run_dvdexit("-vv", "verify", "--peer", "web", "--transfer", transfer, "--json",
                    home=dvdexit_home, env=env),
        run_dvdexit("-vv", "receive", "--from", "web", "--study", media.study_uids[0],
                    "--store", store, "--json", home=dvdexit_home, env=env),
        run_dvdexit("-vv", "receive", "--from", "web", "--list", "--patient-id", "DEMO0001",
                    home=dvdexit_home, env=env),
        run_dvdexit("-vv", "send", "--retry-failed", home=dvdexit_home, env=env),
        run_dvdexit("status", "--json", home=dvdexit_home, env=env),
    ]  # fmt: skip

    assert [r.returncode for r in runs] == [0] * len(runs), [r.stderr[-500:] for r in runs]
    assert json.loads(runs[1].stdout)["identical"] == media.instance_count
    assert json.loads(runs[2].stdout)["outcome"] == "complete"
    for done in runs:
        for text in (done.stdout, done.stderr):
            assert secret not in text and basic not in text
    for path in [*dvdexit_home.rglob("*"), *store.rglob("*")]:
        if path.is_file():
            data = path.read_bytes()
            assert secret.encode() not in data and basic.encode() not in data, path
