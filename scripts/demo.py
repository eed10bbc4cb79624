"""dvdexit in one minute: a patient's DVD, sent to a receiver on this machine, then verified.

Run with ``make demo`` (or ``.venv/bin/python scripts/demo.py``). Everything happens on
127.0.0.1 with synthetic data; the files stay in ./demo-out/ to look at afterwards.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Works from a checkout even when dvdexit is not installed in this interpreter.
sys.path.insert(0, str(REPO))

from dvdexit_cli.samples import make_sample_dvd  # noqa: E402

OUT = REPO / "demo-out"
AE = "DVDEXIT-DEMO"
PEER = "demo"


@dataclass
class Step:
    name: str
    returncode: int


def say(text: str = "") -> None:
    print(text, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def child_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["DVDEXIT_HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def dvdexit(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "dvdexit_cli", *map(str, args)]


def run_step(steps: list[Step], name: str, args: list[str], env: dict[str, str]) -> int:
    """Run one CLI command with its output going straight to the terminal."""
    say()
    say(f"--- {name}")
    say("$ dvdexit " + " ".join(args[3:]))
    returncode = subprocess.run(args, env=env, stdin=subprocess.DEVNULL, check=False).returncode
    if returncode != 0:
        say(f"!!! '{name}' exited with {returncode}")
    steps.append(Step(name, returncode))
    return returncode


def wait_for_receiver(proc: subprocess.Popen[bytes], port: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc.poll() is None
        except OSError:
            time.sleep(0.1)
    return False


def stop_receiver(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM by PID, let it finish in-flight work, SIGKILL if it will not stop."""
    if proc.poll() is not None:
        return proc.returncode
    os.kill(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return -signal.SIGKILL


def count_dicom_files(folder: Path) -> int:
    """Files with the DICM marker of a DICOM Part 10 file (stdlib only)."""
    count = 0
    for path in folder.rglob("*") if folder.is_dir() else ():
        if path.is_file() and path.stat().st_size >= 132:
            with path.open("rb") as f:
                f.seek(128)
                count += f.read(4) == b"DICM"
    return count


def show_log(path: Path) -> None:
    text = path.read_text(encoding="utf-8", errors="replace").strip() if path.exists() else ""
    if text:
        say(f"    (last lines of {path.relative_to(REPO)})")
        for line in text.splitlines()[-15:]:
            say(f"    | {line}")


def main() -> int:
    say("dvdexit demo: a patient arrives with a DVD; we send it to another hospital's")
    say("gateway (here: a receiver on this machine) and check that all of it arrived.")

    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir()
    home, store, logs = OUT / "home", OUT / "received", OUT / "logs"
    for folder in (home, store, logs):
        folder.mkdir()
    env = child_env(home)

    say()
    say("--- 1. Burn a sample DVD (synthetic patient DEMO^PATIENT)")
    media = make_sample_dvd(OUT / "dvd")
    say(f"    {media.root.relative_to(REPO)}/ holds a DICOMDIR and {media.instance_count} images")
    say(f"    in {len(media.study_uids)} studies (a CT and scanned documents), plus README.TXT")
    say("    and AUTORUN.INF, which are not DICOM and must be skipped by the sender.")

    port = free_port()
    receive = dvdexit(
        "receive", "--host", "127.0.0.1", "--port", str(port), "--ae", AE, "--store", store
    )
    say()
    say(f"--- 2. Start the receiving gateway on 127.0.0.1:{port} (AE title {AE})")
    say("$ dvdexit " + " ".join(receive[3:]) + " &")
    steps: list[Step] = []
    stderr_log = logs / "receiver.stderr.log"
    with (logs / "receiver.stdout.log").open("wb") as out, stderr_log.open("wb") as err:
        receiver = subprocess.Popen(
            receive, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err
        )
    try:
        if not wait_for_receiver(receiver, port):
            say(f"!!! the receiver did not start listening (pid {receiver.pid})")
            show_log(stderr_log)
            steps.append(Step("2. Start the receiver", 1))
        else:
            say(f"    listening (pid {receiver.pid}); its log: {stderr_log.relative_to(REPO)}")
            peer_add = dvdexit("peers", "add", PEER, "--dimse", f"127.0.0.1:{port}", "--ae", AE)
            run_step(steps, "3. Add the receiver to the address book", peer_add, env)
            send = dvdexit("send", media.root, "--to", PEER)
            run_step(steps, "4. Send the whole DVD", send, env)
            verify = dvdexit("verify", store)
            run_step(steps, "5. Verify what arrived", verify, env)
            run_step(steps, "6. The journal at a glance", dvdexit("status"), env)
    finally:
        say()
        if receiver.poll() is None:
            say(f"--- 7. Stop the receiver (SIGTERM to pid {receiver.pid})")
            code = stop_receiver(receiver)
            say(f"    receiver exited with {code}")
            if code != 0:
                show_log(stderr_log)
            steps.append(Step("7. Stop the receiver", code))
        elif steps and steps[0].name.startswith("2."):
            pass  # it never started; its log is shown above
        else:
            say(
                f"!!! the receiver (pid {receiver.pid}) stopped by itself "
                f"with exit {receiver.returncode}"
            )
            show_log(stderr_log)
            steps.append(Step("7. Receiver kept running", receiver.returncode or 1))

    failed = [step for step in steps if step.returncode != 0]
    results = {step.name.split(".")[0]: step.returncode for step in steps}
    sent, verified = results.get("4"), results.get("5")
    say()
    say("=== Summary")
    if sent == 0:
        say(f"    instances sent:  {media.instance_count} of {media.instance_count}")
    elif sent is None:
        say(f"    instances sent:  none (0 of {media.instance_count}): the send did not run")
    else:
        say(f"    instances sent:  not all of {media.instance_count}: send exited {sent}")
    say(f"    stored in:       {store} ({count_dicom_files(store)} DICOM files)")
    if verified is None:
        say("    verification:    not run")
    elif verified == 0:
        say("    verification:    passed: what was sent is what arrived")
    else:
        say(f"    verification:    FAILED (exit {verified})")
    say(f"    demo files:      {OUT} (the DVD, DVDEXIT_HOME, logs)")
    if failed:
        say()
        for step in failed:
            say(f"FAILED: {step.name} (exit {step.returncode})")
        return 1
    say()
    say("All steps succeeded.")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
