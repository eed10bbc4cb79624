"""Shared fixtures: real peers on free loopback ports, a private DVDEXIT_HOME, sample media.

Every process a fixture starts is stopped by its PID at teardown (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pytest

# conftest.py's folder is on sys.path (rootdir-relative "prepend" import mode).
from peers import (
    LOOPBACK,
    DvdexitReceiver,
    OrthancPeer,
    StorageSCP,
    dcmtk_env,
    dvdexit_env,
    free_port,
    require_tool,
    start_orthanc,
    stop_process,
    wait_for_port,
)

if TYPE_CHECKING:
    from dvdexit_cli.samples import SampleMedia

# A port picked by free_port() can be taken before the server binds it; retry that race.
_START_ATTEMPTS = 3


class StartStoreSCP(Protocol):
    def __call__(
        self, outdir: Path, *, ae: str = "STORESCP", extra: Sequence[str] = ()
    ) -> StorageSCP: ...


class StartReceiver(Protocol):
    def __call__(
        self,
        store: Path,
        *,
        ae: str = "DVDEXIT",
        extra: Sequence[str] = (),
        home: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> DvdexitReceiver: ...


@pytest.fixture
def storescp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartStoreSCP]:
    """Factory: ``start(outdir, *, ae="STORESCP", extra=())`` runs DCMTK storescp.

    It listens on a free port (bit-preserving ``+B``, all transfer syntaxes ``+xa``) and
    writes into ``outdir``; the result unpacks as ``port, ae, outdir, proc``.
    """
    exe = require_tool("storescp")
    started: list[subprocess.Popen[bytes]] = []

    def start(outdir: Path, *, ae: str = "STORESCP", extra: Sequence[str] = ()) -> StorageSCP:
        outdir = Path(outdir)
        outdir.mkdir(parents=True, exist_ok=True)
        logdir = tmp_path_factory.mktemp("storescp-log")
        error: Exception | None = None
        for attempt in range(_START_ATTEMPTS):
            port = free_port()
            log = logdir / f"storescp-{attempt}.log"
            with log.open("wb") as log_file:
                proc = subprocess.Popen(
                    [exe, "--aetitle", ae, "+B", "+xa", "-od", str(outdir), *extra, str(port)],
                    env=dcmtk_env(),
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                )
            started.append(proc)
            try:
                wait_for_port(port, 15, proc, stderr_path=log)
            except RuntimeError as exc:
                error = exc
                continue
            return StorageSCP(port=port, ae=ae, outdir=outdir, proc=proc, log=log)
        raise RuntimeError(f"storescp did not start after {_START_ATTEMPTS} attempts") from error

    yield start
    for proc in reversed(started):
        stop_process(proc, timeout=5.0)


@pytest.fixture
def dvdexit_home(tmp_path: Path) -> Path:
    """A fresh, empty DVDEXIT_HOME for one test."""
    home = tmp_path / "dvdexit-home"
    home.mkdir()
    return home


@pytest.fixture
def dvdexit_receiver(
    dvdexit_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StartReceiver]:
    """Factory: ``start(store, *, ae="DVDEXIT", extra=(), home=None, env=None)``.

    Runs ``python -m dvdexit_cli receive`` on a free loopback port with DVDEXIT_HOME set
    (the test's ``dvdexit_home`` unless ``home`` is given) and waits until it listens.
    At teardown, or earlier through ``receiver.stop()``, it gets SIGTERM, 10 s to finish,
    then SIGKILL; its return code, stdout and stderr are recorded on the receiver.
    """
    started: list[DvdexitReceiver] = []

    def start(
        store: Path,
        *,
        ae: str = "DVDEXIT",
        extra: Sequence[str] = (),
        home: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> DvdexitReceiver:
        home = dvdexit_home if home is None else Path(home)
        store = Path(store)
        logdir = tmp_path_factory.mktemp("receiver-log")
        error: Exception | None = None
        for attempt in range(_START_ATTEMPTS):
            port = free_port()
            stdout_path = logdir / f"stdout-{attempt}.log"
            stderr_path = logdir / f"stderr-{attempt}.log"
            args = [
                sys.executable,
                "-m",
                "dvdexit_cli",
                "receive",
                "--host",
                LOOPBACK,
                "--port",
                str(port),
                "--ae",
                ae,
                "--store",
                str(store),
                *extra,
            ]
            with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
                proc = subprocess.Popen(
                    args,
                    env=dvdexit_env(home, env),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                )
            receiver = DvdexitReceiver(
                port=port,
                ae=ae,
                store=store,
                home=home,
                proc=proc,
                stdout_path=stdout_path,
                stderr_path=stderr_path,
            )
            started.append(receiver)
            try:
                wait_for_port(port, 30, proc, stderr_path=stderr_path)
            except RuntimeError as exc:
                receiver.stop()
                error = exc
                # Only a lost race for the port is worth another try.
                if "in use" not in receiver.stderr.lower():
                    raise
                continue
            return receiver
        raise RuntimeError(
            f"dvdexit receive did not start after {_START_ATTEMPTS} attempts"
        ) from error

    yield start
    for receiver in reversed(started):
        receiver.stop(timeout=10.0)


@pytest.fixture
def sample_dvd(tmp_path: Path) -> SampleMedia:
    """A small DVD-like medium (DICOMDIR, CT + secondary-capture study, README.TXT)."""
    from dvdexit_cli.samples import make_sample_dvd

    return make_sample_dvd(tmp_path / "dvd", ct_slices=6, sc_images=2)


@pytest.fixture
def make_dvd(tmp_path: Path) -> Callable[..., SampleMedia]:
    """Factory around ``make_sample_dvd`` writing under the test's tmp_path."""
    from dvdexit_cli.samples import make_sample_dvd

    counter = iter(range(1_000_000))

    def make(*, seed: str = "dvdexit-demo", ct_slices: int = 24, sc_images: int = 4) -> SampleMedia:
        return make_sample_dvd(
            tmp_path / f"dvd-{next(counter)}", seed=seed, ct_slices=ct_slices, sc_images=sc_images
        )

    return make


class StartOrthanc(Protocol):
    def __call__(
        self,
        *,
        aet: str = "ORTHANC",
        modalities: dict[str, tuple[str, str, int]] | None = None,
        users: dict[str, str] | None = None,
        extra_config: dict[str, object] | None = None,
    ) -> OrthancPeer: ...


@pytest.fixture
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartOrthanc]:
    """Factory: ``start(*, aet="ORTHANC", modalities=None, users=None, extra_config=None)``.

    Runs Orthanc (with the DICOMweb plugin, TCP_NODELAY=1) on free loopback ports with
    its own storage; stops it by PID at teardown.
    """
    started: list[OrthancPeer] = []

    def start(
        *,
        aet: str = "ORTHANC",
        modalities: dict[str, tuple[str, str, int]] | None = None,
        users: dict[str, str] | None = None,
        extra_config: dict[str, object] | None = None,
    ) -> OrthancPeer:
        error: Exception | None = None
        for _ in range(_START_ATTEMPTS):
            try:
                peer = start_orthanc(
                    tmp_path_factory.mktemp("orthanc"),
                    aet=aet,
                    modalities=modalities,
                    users=users,
                    extra_config=extra_config,
                )
            except RuntimeError as exc:  # most often: a free port taken meanwhile
                error = exc
                continue
            started.append(peer)
            return peer
        raise RuntimeError(f"Orthanc did not start after {_START_ATTEMPTS} attempts") from error

    yield start
    for peer in reversed(started):
        stop_process(peer.proc, timeout=10.0)
