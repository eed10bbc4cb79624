"""Plain helpers for tests that talk to real peers on loopback.

Fixtures in ``conftest.py`` wrap these; tests may also import them directly
(``from peers import free_port, run_dcmsend``). Every process started here is stopped
by its PID, and all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = [
    "DEBIAN_PACKAGES",
    "LOOPBACK",
    "ORTHANC_DICOMWEB_PLUGIN",
    "REPO_ROOT",
    "DvdexitReceiver",
    "OrthancPeer",
    "StorageSCP",
    "dcmtk_env",
    "dvdexit_env",
    "free_port",
    "require_tool",
    "run_dcmsend",
    "run_dvdexit",
    "start_orthanc",
    "stop_process",
    "wait_for_port",
]

LOOPBACK = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent

#: Which Debian package ships each external tool the tests use.
DEBIAN_PACKAGES: Mapping[str, str] = {
    "storescp": "dcmtk",
    "storescu": "dcmtk",
    "dcmsend": "dcmtk",
    "echoscu": "dcmtk",
    "findscu": "dcmtk",
    "dcmdump": "dcmtk",
    "dciodvfy": "dicom3tools",
    "Orthanc": "orthanc",
}


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
    return port


def require_tool(name: str) -> str:
    """Return the path of an external tool; skip the test without it (fail under CI=true)."""
    path = shutil.which(name)
    if path:
        return path
    package = DEBIAN_PACKAGES.get(name, name)
    message = (
        f"{name} missing: install Debian package {package} "
        f"(apt-get install {package}, or run scripts/ensure-peers.sh as root)"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _read_text(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def wait_for_port(
    port: int,
    timeout: float = 15.0,
    proc: subprocess.Popen[bytes] | None = None,
    *,
    stderr_path: Path | None = None,
    settle: float = 0.2,
) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:``port``.

    With ``proc``, also require that it is still running ``settle`` seconds after the port
    answered: a server that lost the race for its port exits at once, while another
    program may be the one answering. Raises RuntimeError if ``proc`` exits (with its
    stderr, read from ``stderr_path`` when given) and TimeoutError after ``timeout`` s.
    """

    def check_alive(when: str) -> None:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"process {proc.pid} ({proc.args!r}) exited with {proc.returncode} "
                f"{when} on port {port}:\n{_read_text(stderr_path)}"
            )

    deadline = time.monotonic() + timeout
    while True:
        check_alive("before listening")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                pass
        except OSError:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"nothing listening on {LOOPBACK}:{port} after {timeout} s"
                ) from None
            time.sleep(0.05)
            continue
        if proc is not None:
            time.sleep(settle)
            check_alive("just after something answered")
        return


def stop_process(
    proc: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, timeout: float = 5.0
) -> tuple[int, bool]:
    """Stop ``proc`` by its PID: ``sig``, wait ``timeout`` s, then SIGKILL.

    Returns (return code, whether SIGKILL was needed). Safe to call twice.
    """
    if proc.poll() is not None:
        return proc.returncode, False
    # poll() has not reaped it, so the PID still belongs to our child.
    os.kill(proc.pid, sig)
    try:
        return proc.wait(timeout=timeout), False
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        return proc.wait(timeout=30), True


def dcmtk_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for any DCMTK process: TCP_NODELAY=1 (see PEERS.md)."""
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    env.update(extra or {})
    return env


def dvdexit_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a dvdexit process: its own DVDEXIT_HOME, nothing inherited."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DVDEXIT_")}
    env["DVDEXIT_HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    # Works from a checkout even when the package is not installed in this interpreter.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class StorageSCP:
    """A running DCMTK ``storescp``; unpacks as ``port, ae, outdir, proc``."""

    port: int
    ae: str
    outdir: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def __iter__(self) -> Iterator[object]:
        return iter((self.port, self.ae, self.outdir, self.proc))

    def stored_files(self) -> list[Path]:
        """Files storescp has written so far (excluding its temporary files)."""
        return sorted(p for p in self.outdir.rglob("*") if p.is_file())


@dataclass
class DvdexitReceiver:
    """A running ``dvdexit receive``; ``stop()`` fills in returncode, stdout and stderr."""

    port: int
    ae: str
    store: Path
    home: Path
    proc: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    killed: bool = False
    _stopped: bool = field(default=False, repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, *, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Stop the receiver by PID (``sig``, then SIGKILL after ``timeout`` s); idempotent."""
        if not self._stopped:
            self.returncode, self.killed = stop_process(self.proc, sig=sig, timeout=timeout)
            self.stdout = _read_text(self.stdout_path)
            self.stderr = _read_text(self.stderr_path)
            self._stopped = True
        assert self.returncode is not None
        return self.returncode


def run_dcmsend(
    files_or_dir: Path | str | Sequence[Path | str],
    port: int,
    *,
    called_ae: str,
    calling_ae: str = "DCMSEND",
    extra: Sequence[str] = (),
    timeout: float = 300.0,
) -> subprocess.CompletedProcess[str]:
    """Send files (or folders, scanned recursively) to 127.0.0.1:``port`` with dcmsend.

    Each file keeps its own transfer syntax (``--decompress-never``). Does not raise on a
    non-zero exit: check ``returncode``.
    """
    exe = require_tool("dcmsend")
    items = [files_or_dir] if isinstance(files_or_dir, str | Path) else list(files_or_dir)
    args = [exe, "--decompress-never", "-aet", calling_ae, "-aec", called_ae]
    if any(Path(item).is_dir() for item in items):
        args += ["--scan-directories", "--recurse"]
    args += [*extra, LOOPBACK, str(port), *map(str, items)]
    return subprocess.run(
        args,
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_dvdexit(
    *args: str | Path,
    home: Path,
    input: str | None = None,
    timeout: float = 120.0,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m dvdexit_cli ARGS`` with DVDEXIT_HOME=``home``; never raises on exit code."""
    return subprocess.run(
        [sys.executable, "-m", "dvdexit_cli", *map(str, args)],
        env=dvdexit_env(home, env),
        input=input,
        # No input means a closed stdin: the CLI must not wait for a prompt.
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        check=False,
    )


# -- Orthanc ----------------------------------------------------------------------------

ORTHANC_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


@dataclass
class OrthancPeer:
    """A running Orthanc (DICOM + REST + DICOMweb) on loopback, started for one test."""

    dicom_port: int
    http_port: int
    aet: str
    proc: subprocess.Popen[bytes]
    workdir: Path
    log: Path
    auth: tuple[str, str] | None = None

    @property
    def rest_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.rest_url}/dicom-web"

    def rest(self, method: str, path: str, **kwargs: object) -> object:
        """Call Orthanc's REST API; return the decoded JSON (or bytes for non-JSON)."""
        import httpx

        response = httpx.request(
            method,
            self.rest_url + path,
            auth=self.auth,
            timeout=30.0,
            **kwargs,  # type: ignore[arg-type]
        )
        response.raise_for_status()
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.content

    def instance_uids(self) -> dict[str, str]:
        """SOP Instance UID -> Orthanc instance ID, for every instance Orthanc holds."""
        found: dict[str, str] = {}
        for orthanc_id in self.rest("GET", "/instances"):  # type: ignore[union-attr]
            tags = self.rest("GET", f"/instances/{orthanc_id}/simplified-tags")
            found[tags["SOPInstanceUID"]] = orthanc_id  # type: ignore[index]
        return found


def start_orthanc(
    workdir: Path,
    *,
    aet: str = "ORTHANC",
    modalities: Mapping[str, tuple[str, str, int]] | None = None,
    users: Mapping[str, str] | None = None,
    extra_config: Mapping[str, object] | None = None,
    timeout: float = 30.0,
) -> OrthancPeer:
    """Start Orthanc with its own storage in ``workdir`` on free loopback ports.

    ``modalities`` maps a name to (AE title, host, port) for C-MOVE / store targets;
    ``users`` turns on HTTP basic authentication. The DICOMweb plugin is loaded.
    Orthanc checks the called AE title, so a wrong one is rejected.
    """
    import json

    import httpx

    exe = require_tool("Orthanc")
    if not ORTHANC_DICOMWEB_PLUGIN.exists():
        message = "the Orthanc DICOMweb plugin is missing: install Debian package orthanc-dicomweb"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    workdir.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = free_port(), free_port()
    config: dict[str, object] = {
        "Name": "dvdexit-test",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "DicomCheckCalledAet": True,
        "AuthenticationEnabled": bool(users),
        "RegisteredUsers": dict(users or {}),
        "DicomModalities": {
            name: [ae, host, port] for name, (ae, host, port) in (modalities or {}).items()
        },
        "Plugins": [str(ORTHANC_DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "HttpServerEnabled": True,
        "DicomServerEnabled": True,
        **dict(extra_config or {}),
    }
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log = workdir / "orthanc.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [exe, str(config_path)],
            env=dcmtk_env(),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    auth = next(iter((users or {}).items()), None)
    peer = OrthancPeer(dicom_port, http_port, aet, proc, workdir, log, auth)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited ({proc.returncode}): {_read_text(log)[-2000:]}")
        try:
            if httpx.get(f"{peer.rest_url}/system", auth=auth, timeout=2.0).status_code == 200:
                wait_for_port(dicom_port, max(1.0, deadline - time.monotonic()), proc)
                return peer
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            stop_process(proc)
            raise RuntimeError(f"Orthanc did not start: {_read_text(log)[-2000:]}")
        time.sleep(0.2)


# -- a port that records what it is sent --------------------------------------------


class RecordingListener:
    """A DICOM port that records every connection and the bytes it carried.

    With ``reject`` it answers an A-ASSOCIATE-RQ with an A-ASSOCIATE-RJ (permanent, no
    reason), as a peer that does not know us would; without, it closes without a word.
    """

    def __init__(self, *, reject: bool = True) -> None:
        self.reject = reject
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.received: list[bytes] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return  # closed
            with conn:
                conn.settimeout(10)
                data = b""
                try:
                    while len(data) < 6 or len(data) < 6 + int.from_bytes(data[2:6], "big"):
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    if data[:1] == b"\x01" and self.reject:
                        conn.sendall(b"\x03\x00" + (4).to_bytes(4, "big") + b"\x00\x01\x01\x01")
                        conn.recv(1)  # until the requestor closes
                except OSError:
                    pass
                self.received.append(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.server.close()
        self._thread.join(timeout=10)


def recording_hook(
    tmp_path: Path,
    name: str = "hook",
    fields: Sequence[str] = ("STUDY_UID", "INSTANCE_COUNT", "COMPLETED_BY"),
) -> tuple[str, Path]:
    """An ``--on-complete`` command that appends its ``DVDEXIT_*`` fields to a marker file.

    Returns the command and the marker; ``hook_runs`` reads the runs back.
    """
    script = tmp_path / f"{name}.sh"
    line = "|".join(f"${{DVDEXIT_{field}}}" for field in fields)
    script.write_text(f'#!/bin/sh\necho "{line}" >> "$1"\n')
    marker = tmp_path / f"{name}-runs.txt"
    return f"sh {script} {marker}", marker


def hook_runs(marker: Path) -> list[list[str]]:
    """Each run of a ``recording_hook``: its fields, in order."""
    if not marker.exists():
        return []
    return [line.split("|") for line in marker.read_text().splitlines()]


def wait_for_hook_runs(marker: Path, count: int, *, timeout: float = 30.0) -> list[list[str]]:
    """The runs, once there are ``count``; fails after ``timeout`` (a hang guard)."""
    deadline = time.monotonic() + timeout
    while len(found := hook_runs(marker)) < count:
        assert time.monotonic() < deadline, f"the hook ran {len(found)} time(s), not {count}"
        time.sleep(0.1)
    return found
