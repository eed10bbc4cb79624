"""Report and note options refuse bad input clearly, before anything is journaled or sent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from peers import run_dvdexit

from dvdexit_cli.samples import write_study


@pytest.fixture
def setup(tmp_path: Path, dvdexit_home: Path) -> tuple[Path, Path, Path]:
    write_study(tmp_path / "ct", n_instances=1, seed="report-usage")
    drop = tmp_path / "drop"
    drop.mkdir()
    assert run_dvdexit("peers", "add", "drop", "--folder", drop, home=dvdexit_home).returncode == 0
    return tmp_path / "ct", drop, dvdexit_home


def _nothing_happened(drop: Path, home: Path) -> None:
    assert list(drop.iterdir()) == []
    status = run_dvdexit("status", "--json", home=home)
    assert json.loads(status.stdout).get("transfers", []) == []
    assert list(home.rglob("attached-*")) == []


@pytest.mark.parametrize(
    ("make_args", "code", "message"),
    [
        (lambda t: ["--report", t / "fake.pdf"], 4, "not a PDF"),
        (lambda t: ["--report", t / "absent.pdf"], 4, "not found"),
        (lambda t: ["--report", f"1.2.3.4={t / 'real.pdf'}"], 2, "inputs do not hold"),
        (lambda t: ["--report", f"not-a-uid={t / 'nofile.pdf'}"], 2, "not a Study Instance UID"),
        (lambda t: ["--report-text", t / "empty.txt"], 4, "empty"),
        (lambda t: ["--note-as-sr"], 2, "--note-as-sr needs"),
    ],
)
def test_bad_report_options_fail_clearly_and_send_nothing(
    tmp_path: Path,
    setup: tuple[Path, Path, Path],
    make_args: object,
    code: int,
    message: str,
) -> None:
    study, drop, home = setup
    (tmp_path / "fake.pdf").write_text("plain text, not a PDF")
    (tmp_path / "real.pdf").write_bytes(b"%PDF-1.4\n%%EOF\n")
    (tmp_path / "empty.txt").write_text("\n  \n")

    done = run_dvdexit(
        "send",
        study,
        "--to",
        "drop",
        *make_args(tmp_path),
        home=home,  # type: ignore[operator]
    )

    assert done.returncode == code, done.stderr
    assert message in done.stderr
    _nothing_happened(drop, home)


def test_report_options_do_not_apply_to_a_replay(setup: tuple[Path, Path, Path]) -> None:
    _, drop, home = setup
    done = run_dvdexit("send", "--retry-failed", "--note-as-sr", "--note", "x", home=home)
    assert done.returncode == 2
    assert "not to --retry-failed" in done.stderr
    _nothing_happened(drop, home)


def test_a_report_goes_into_the_folder_package_with_the_images(
    tmp_path: Path, setup: tuple[Path, Path, Path]
) -> None:
    study, drop, home = setup
    (tmp_path / "r.pdf").write_bytes(b"%PDF-1.4\n%%EOF\n")

    done = run_dvdexit("send", study, "--to", "drop", "--report", tmp_path / "r.pdf", home=home)
    dry = run_dvdexit(
        "send", study, "--report", tmp_path / "r.pdf", "--dry-run", "--json", home=home
    )

    assert done.returncode == 0, done.stderr
    (package,) = list(drop.iterdir())
    manifest = json.loads((package / "MANIFEST.JSON").read_text())
    classes = [i["sop_class_uid"] for s in manifest["studies"] for i in s["instances"]]
    assert sorted(classes) == ["1.2.840.10008.5.1.4.1.1.104.1", "1.2.840.10008.5.1.4.1.1.2"]
    assert run_dvdexit("verify", package, home=home).returncode == 0
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["instances"] == 2  # the dry run counts the report too
    assert list(home.rglob("attached-*")) == []  # ... and keeps nothing
