"""The journal: one SQLite file in WAL mode, written before and after every send.

An item is inserted as ``pending`` before anything is sent, set to ``sending`` (in its
own committed transaction) just before its C-STORE, and to ``sent`` or ``failed`` after
the peer's answer. A ``kill -9`` at any moment therefore leaves a journal that says
exactly which items are done, which are not, and which one was in flight (``sending``:
unknown whether the peer got it). WAL with ``synchronous=NORMAL`` survives a killed
process; a power cut may lose the last few state changes, which then read as not yet
sent and are sent again (the receiver treats an identical resend as a duplicate).
A receiver that fsyncs each instance before answering success commits with
``synchronous=FULL`` instead (``sync_every_commit``): what it answered as stored stays
journaled through a power cut.

A journal is created whole or not at all; an existing file that is empty, cut short
or not a journal is damaged (JournalDamagedError), never taken for a new journal.

Schema changes are numbered migrations applied in order (``PRAGMA user_version``).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sqlite3
import struct
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from dvdexit_cli.dicom.scan import Instance, Rejected
from dvdexit_cli.errors import JournalBusyError, JournalDamagedError, JournalError
from dvdexit_cli.fsmode import PRIVATE

__all__ = [
    "OPEN_STATES",
    "Abandonment",
    "ItemRecord",
    "Journal",
    "ReceivedStudy",
    "TransferSummary",
    "new_claim",
    "utc_now",
]

DEFAULT_LEASE_SECONDS = 300.0
"""How long a claim holds without renewal; a live sender renews it well before."""

_MIGRATIONS: tuple[str, ...] = (
    # 1: transfers, their items, and what the receiver stored
    """
    CREATE TABLE transfers (
        id INTEGER PRIMARY KEY,
        peer TEXT NOT NULL,
        peer_address TEXT NOT NULL,
        created_at TEXT NOT NULL,
        finished_at TEXT,
        outcome TEXT NOT NULL DEFAULT 'running',
        error TEXT,
        note TEXT,
        reason TEXT,
        inputs TEXT NOT NULL
    );
    CREATE TABLE items (
        id INTEGER PRIMARY KEY,
        transfer_id INTEGER NOT NULL REFERENCES transfers(id),
        path TEXT NOT NULL,
        sop_class_uid TEXT,
        sop_instance_uid TEXT,
        study_uid TEXT,
        series_uid TEXT,
        transfer_syntax TEXT,
        size INTEGER,
        digest TEXT,
        state TEXT NOT NULL CHECK (
            state IN ('pending', 'sending', 'sent', 'failed', 'skipped', 'committed')
        ),
        attempts INTEGER NOT NULL DEFAULT 0,
        status INTEGER,
        retryable INTEGER NOT NULL DEFAULT 0,
        reason TEXT,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX items_by_transfer ON items(transfer_id, state);
    CREATE INDEX items_by_sop ON items(sop_instance_uid);
    CREATE TABLE received (
        id INTEGER PRIMARY KEY,
        received_at TEXT NOT NULL,
        calling_ae TEXT NOT NULL,
        peer_address TEXT NOT NULL,
        sop_class_uid TEXT,
        sop_instance_uid TEXT,
        study_uid TEXT,
        series_uid TEXT,
        transfer_syntax TEXT,
        size INTEGER,
        digest TEXT,
        path TEXT,
        outcome TEXT NOT NULL CHECK (outcome IN ('stored', 'duplicate', 'conflict', 'refused')),
        status INTEGER NOT NULL,
        reason TEXT
    );
    CREATE INDEX received_by_sop ON received(sop_instance_uid);
    CREATE INDEX received_by_study ON received(study_uid);
    """,
    # 2: claims with leases, so that overlapping sends and replays never send one item twice
    """
    ALTER TABLE items ADD COLUMN claim TEXT;
    ALTER TABLE items ADD COLUMN lease_expires REAL;
    CREATE INDEX items_by_claim ON items(claim);
    CREATE INDEX items_by_state ON items(state);
    """,
    # 3: received studies (completeness) and the on-complete hook's runs
    """
    CREATE TABLE studies (
        study_uid TEXT PRIMARY KEY,
        calling_ae TEXT NOT NULL,
        peer_address TEXT NOT NULL,
        folder TEXT NOT NULL,
        first_at TEXT NOT NULL,
        last_at TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('receiving', 'complete')),
        commit_requested INTEGER NOT NULL DEFAULT 0,
        completed_by TEXT,
        completed_at TEXT,
        instances INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE hook_runs (
        id INTEGER PRIMARY KEY,
        study_uid TEXT NOT NULL,
        command TEXT NOT NULL,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        outcome TEXT NOT NULL CHECK (outcome IN ('running', 'succeeded', 'failed')),
        exit_status INTEGER,
        error TEXT
    );
    CREATE INDEX hook_runs_by_study ON hook_runs(study_uid, id);
    CREATE TABLE forwards (
        id INTEGER PRIMARY KEY,
        study_uid TEXT NOT NULL,
        peer TEXT NOT NULL,
        at TEXT NOT NULL,
        outcome TEXT NOT NULL CHECK (outcome IN ('sent', 'failed', 'held')),
        transfer_id INTEGER,
        reason TEXT
    );
    CREATE INDEX forwards_by_study ON forwards(study_uid, id);
    """,
    # 4: a forward is journaled as 'pending' before it is queued (found again after a stop)
    """
    CREATE TABLE forwards_new (
        id INTEGER PRIMARY KEY,
        study_uid TEXT NOT NULL,
        peer TEXT NOT NULL,
        at TEXT NOT NULL,
        outcome TEXT NOT NULL CHECK (outcome IN ('pending', 'sent', 'failed', 'held')),
        transfer_id INTEGER,
        reason TEXT
    );
    INSERT INTO forwards_new SELECT id, study_uid, peer, at, outcome, transfer_id, reason
        FROM forwards;
    DROP TABLE forwards;
    ALTER TABLE forwards_new RENAME TO forwards;
    CREATE INDEX forwards_by_study ON forwards(study_uid, id);
    """,
    # 5: the sender's note, reason and recipient for a received study (from a transfer-note
    # SR in the study or a package manifest): untrusted text, shown and passed to the hook
    """
    CREATE TABLE study_notes (
        study_uid TEXT PRIMARY KEY,
        note TEXT,
        reason TEXT,
        recipient TEXT,
        source TEXT NOT NULL CHECK (source IN ('sr', 'manifest')),
        sender_ae TEXT,
        recorded_at TEXT NOT NULL
    );
    """,
    # 6: the recipient of a send, kept with its note and reason so that a replay
    # (send --retry-failed) can name it in its audit records
    """
    ALTER TABLE transfers ADD COLUMN recipient TEXT;
    """,
    # 7: items given up on deliberately (send --abandon): state 'abandoned', with who,
    # when and why; never resent. SQLite cannot change a CHECK: the table is rebuilt.
    """
    CREATE TABLE items_new (
        id INTEGER PRIMARY KEY,
        transfer_id INTEGER NOT NULL REFERENCES transfers(id),
        path TEXT NOT NULL,
        sop_class_uid TEXT,
        sop_instance_uid TEXT,
        study_uid TEXT,
        series_uid TEXT,
        transfer_syntax TEXT,
        size INTEGER,
        digest TEXT,
        state TEXT NOT NULL CHECK (
            state IN ('pending', 'sending', 'sent', 'failed', 'skipped', 'committed',
                      'abandoned')
        ),
        attempts INTEGER NOT NULL DEFAULT 0,
        status INTEGER,
        retryable INTEGER NOT NULL DEFAULT 0,
        reason TEXT,
        updated_at TEXT NOT NULL,
        claim TEXT,
        lease_expires REAL,
        abandoned_at TEXT,
        abandoned_by TEXT,
        abandon_reason TEXT
    );
    INSERT INTO items_new (id, transfer_id, path, sop_class_uid, sop_instance_uid, study_uid,
        series_uid, transfer_syntax, size, digest, state, attempts, status, retryable, reason,
        updated_at, claim, lease_expires)
        SELECT id, transfer_id, path, sop_class_uid, sop_instance_uid, study_uid, series_uid,
        transfer_syntax, size, digest, state, attempts, status, retryable, reason, updated_at,
        claim, lease_expires FROM items;
    DROP TABLE items;
    ALTER TABLE items_new RENAME TO items;
    CREATE INDEX items_by_transfer ON items(transfer_id, state);
    CREATE INDEX items_by_sop ON items(sop_instance_uid);
    CREATE INDEX items_by_claim ON items(claim);
    CREATE INDEX items_by_state ON items(state);
    """,
    # 8: which receiver a study belongs to (its completion, hook and forward); NULL for
    # studies journaled before receivers were told apart: the first receiver adopts them
    """
    ALTER TABLE studies ADD COLUMN receiver TEXT;
    CREATE INDEX studies_by_receiver ON studies(receiver, state);
    """,
)

SCHEMA_VERSION = len(_MIGRATIONS)


def utc_now() -> str:
    """The current time as an ISO 8601 UTC string, as the journal stores it."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class TransferSummary:
    """One transfer with its item counts per state."""

    id: int
    peer: str
    peer_address: str
    created_at: str
    finished_at: str | None
    outcome: str
    error: str | None
    note: str | None
    reason: str | None
    counts: dict[str, int]
    bytes_sent: int
    recipient: str | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class ItemRecord:
    """One item of a transfer as the journal holds it."""

    id: int
    transfer_id: int
    path: str
    sop_instance_uid: str | None
    study_uid: str | None
    digest: str | None
    size: int | None
    state: str
    attempts: int
    status: int | None
    retryable: bool
    reason: str | None
    abandoned_at: str | None = None
    abandoned_by: str | None = None
    abandon_reason: str | None = None


@dataclass(frozen=True)
class Abandonment:
    """What ``Journal.abandon`` did: the items it gave up on, and those it left alone."""

    items: tuple[ItemRecord, ...]
    """The items now ``abandoned`` (as they were just before: state, last reason)."""
    held: int
    """Open items left as they were: a running send or replay holds a live claim on them."""
    transfers: tuple[int, ...]
    """The transfers the abandoned items belong to."""


OPEN_STATES = ("pending", "sending", "failed")
"""Item states a replay may still resend (failed: when retryable)."""


def _item(r: sqlite3.Row) -> ItemRecord:
    return ItemRecord(
        id=int(r["id"]),
        transfer_id=int(r["transfer_id"]),
        path=r["path"],
        sop_instance_uid=r["sop_instance_uid"],
        study_uid=r["study_uid"],
        digest=r["digest"],
        size=r["size"],
        state=r["state"],
        attempts=int(r["attempts"]),
        status=r["status"],
        retryable=bool(r["retryable"]),
        reason=r["reason"],
        abandoned_at=r["abandoned_at"],
        abandoned_by=r["abandoned_by"],
        abandon_reason=r["abandon_reason"],
    )


def new_claim() -> str:
    """A claim token naming this process: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(6)}"


def _claim_is_stale(claim: str, host: str) -> bool:
    """True when ``claim`` belongs to a process of this host that no longer runs."""
    owner, _, rest = claim.rpartition(":")
    owner_host, _, pid_text = owner.rpartition(":")
    if owner_host != host or not rest:
        return False
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    try:  # killed but not yet reaped by its parent: gone all the same
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return False


@dataclass(frozen=True)
class ReceivedStudy:
    """A study the receiver holds, as the journal's ``studies`` table has it."""

    study_uid: str
    calling_ae: str
    peer_address: str
    folder: str
    last_at: str
    state: str
    commit_requested: bool
    completed_by: str | None
    instances: int
    #: The receiver the study belongs to (``StorageServer.receiver_id``), None if unknown.
    receiver: str | None = None


def _stale_claims(db: sqlite3.Connection, now: float) -> list[str]:
    """Claims whose lease still runs but whose process is known to be gone."""
    host = socket.gethostname()
    holders = [
        str(r[0])
        for r in db.execute(
            "SELECT DISTINCT claim FROM items WHERE claim IS NOT NULL AND lease_expires >= ?",
            (now,),
        )
    ]
    return [h for h in holders if _claim_is_stale(h, host)]


def _transfer_outcome(db: sqlite3.Connection, transfer_id: int) -> str:
    """A finished transfer's outcome from its items: partial while any is open, abandoned
    when the only ones not delivered were given up on deliberately, else complete."""
    (open_items, abandoned) = db.execute(
        "SELECT COALESCE(SUM(state IN ('pending', 'sending', 'failed')), 0),"
        " COALESCE(SUM(state = 'abandoned'), 0) FROM items WHERE transfer_id = ?",
        (transfer_id,),
    ).fetchone()
    return "partial" if open_items else "abandoned" if abandoned else "complete"


def _study(row: sqlite3.Row) -> ReceivedStudy:
    return ReceivedStudy(
        study_uid=row["study_uid"],
        calling_ae=row["calling_ae"],
        peer_address=row["peer_address"],
        folder=row["folder"],
        last_at=row["last_at"],
        state=row["state"],
        commit_requested=bool(row["commit_requested"]),
        completed_by=row["completed_by"],
        instances=int(row["instances"]),
        receiver=row["receiver"],
    )


_RECOVERY_HINT = (
    "the journal held what is not yet sent and what was received: move it aside "
    "(mv {path} {path}.damaged) and restore it from a backup, or try "
    "'sqlite3 {path}.damaged .recover | sqlite3 {path}'; only then will dvdexit start a "
    "new journal (items of the damaged one are not resent from it)"
)


def _damaged(path: Path, why: str) -> JournalDamagedError:
    return JournalDamagedError(
        f"journal {path} is damaged: {why}", hint=_RECOVERY_HINT.format(path=path)
    )


def _note_activity(
    db: sqlite3.Connection,
    *,
    study_uid: str,
    calling_ae: str,
    peer_address: str,
    folder: str,
    new: bool,
    receiver: str | None,
) -> None:
    now = utc_now()
    db.execute(
        "INSERT INTO studies (study_uid, calling_ae, peer_address, folder, first_at,"
        " last_at, state, receiver) VALUES (?, ?, ?, ?, ?, ?, 'receiving', ?)"
        " ON CONFLICT(study_uid) DO UPDATE SET last_at = excluded.last_at,"
        " calling_ae = excluded.calling_ae, peer_address = excluded.peer_address,"
        " state = CASE WHEN ? THEN 'receiving' ELSE state END,"
        " completed_by = CASE WHEN ? THEN NULL ELSE completed_by END,"
        " receiver = CASE WHEN ? THEN COALESCE(excluded.receiver, receiver) ELSE receiver END",
        (study_uid, calling_ae, peer_address, folder, now, now, receiver, new, new, new),
    )


def _translate(exc: sqlite3.Error, path: Path) -> JournalError:
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and "locked" in text:
        return JournalBusyError(
            f"journal {path} is locked by another process",
            hint="wait for the other dvdexit process to finish, then retry",
        )
    if isinstance(exc, sqlite3.DatabaseError) and (
        "malformed" in text or "not a database" in text or "corrupt" in text
    ):
        return _damaged(path, text)
    return JournalError(
        f"journal {path} cannot be used: {text}",
        hint="check the disk and permissions; a damaged journal can be moved aside",
    )


def _restrict_journal(path: Path) -> None:
    """Make the journal owner-only (notes, reasons, recipients): SQLite creates the file
    with 0666 less the umask, and its -wal and -shm files with the journal's mode, so
    setting the journal's mode before WAL mode is entered covers them; existing ones (an
    older version's) are tightened too."""
    for name in (path.name, path.name + "-wal", path.name + "-shm"):
        try:
            PRIVATE.restrict(path.with_name(name))
        except FileNotFoundError:
            continue


_SQLITE_MAGIC = b"SQLite format 3\x00"


def _check_file(path: Path) -> None:
    """Refuse a journal file that is plainly damaged, before SQLite takes it for new.

    SQLite treats an empty file as a new database, and reads a file cut short at a page
    boundary (where its header's page count is not checked) as if the rest were never
    there. A journal is never empty (see ``Journal._create``) and always whole pages.
    """
    size = path.stat().st_size
    if size == 0:
        raise _damaged(path, "the file is empty (0 bytes)")
    with path.open("rb") as fh:
        header = fh.read(100)
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        raise _damaged(path, "the file is not an SQLite database")
    wal = path.with_name(path.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        # In use (or left by a killed process): a checkpoint may be writing the file
        # now, and its header may lag; SQLite itself judges the pair.
        return
    (page_size,) = struct.unpack(">H", header[16:18])
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or size % page_size:
        raise _damaged(path, f"the file is cut short ({size} bytes, not whole pages)")
    (pages,) = struct.unpack(">I", header[28:32])
    if header[24:28] == header[92:96] and size < pages * page_size:
        raise _damaged(path, f"the file is cut short ({size} bytes of {pages * page_size})")


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA foreign_keys=ON")
    return db


def _apply_migrations(db: sqlite3.Connection, version: int) -> None:
    for number in range(version, SCHEMA_VERSION):
        db.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have applied it while this one waited for the lock.
            if db.execute("PRAGMA user_version").fetchone()[0] > number:
                db.execute("ROLLBACK")
                continue
            for statement in _MIGRATIONS[number].split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {number + 1}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


class Journal:
    """The SQLite journal. Safe to share between the threads of one process.

    A journal that does not exist is created, whole (see ``_create``); a file that is
    there but empty, cut short or not a journal is damaged: JournalDamagedError, never
    silently taken for a new journal (that would forget every unsent item).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        try:
            PRIVATE.make_dir(path.parent)
            if not path.exists():
                self._create(path)
            _check_file(path)
            _restrict_journal(path)
            self._db = _connect(path)
            self._migrate()
        except sqlite3.Error as exc:
            raise _translate(exc, path) from exc
        except OSError as exc:
            raise JournalError(f"cannot create journal {path}: {exc.strerror}") from exc

    @staticmethod
    def _create(path: Path) -> None:
        """Create a new journal at ``path`` so that no one ever sees it half made.

        SQLite creates a database file empty and writes its first page later: a journal
        seen in between would be 0 bytes, which must mean "damaged". So the journal is
        made under a temporary name (in WAL mode, schema migrated, closed), then linked
        into place: ``os.link`` fails if another process created the journal meanwhile,
        and then that one is used.
        """
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.new")
        try:
            # Owner-only from the start: SQLite gives -wal and -shm the journal's mode.
            PRIVATE.open_new(tmp, exclusive=True).close()
            db = _connect(tmp)
            try:
                _apply_migrations(db, 0)
            finally:
                db.close()
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another process made it first: that one is used
            except OSError:
                # A filesystem without hard links: a rename is as whole, only not
                # exclusive (a journal made meanwhile by another process is replaced).
                os.replace(tmp, path)
        finally:
            for leftover in (
                tmp,
                tmp.with_name(tmp.name + "-wal"),
                tmp.with_name(tmp.name + "-shm"),
            ):
                leftover.unlink(missing_ok=True)

    def sync_every_commit(self) -> None:
        """Make every commit durable (``synchronous=FULL``): for a receiver that fsyncs
        each instance before answering success, so that the journal row of an instance
        answered as stored survives a power cut as the file does."""
        with self._lock:
            try:
                self._db.execute("PRAGMA synchronous=FULL")
            except sqlite3.Error as exc:
                raise _translate(exc, self.path) from exc

    @property
    def synchronous(self) -> str:
        """The SQLite ``synchronous`` level in use: ``normal`` or ``full``."""
        (level,) = self._read("PRAGMA synchronous")[0]
        return {0: "off", 1: "normal", 2: "full", 3: "extra"}.get(int(level), str(level))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise _translate(exc, self.path) from exc

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise _translate(exc, self.path) from exc

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"journal {self.path} has schema {version}, newer than this dvdexit "
                f"understands ({SCHEMA_VERSION})",
                hint="upgrade dvdexit",
            )
        if version == 0 and self._db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]:
            raise _damaged(self.path, "it holds tables but no schema version")
        if version == 0:
            # Made by _create, so never empty: an empty database here lost its content.
            raise _damaged(self.path, "it holds no journal")
        _apply_migrations(self._db, version)

    # -- sending -------------------------------------------------------------------

    def create_transfer(
        self,
        *,
        peer: str,
        peer_address: str,
        inputs: Sequence[Path],
        instances: Iterable[Instance],
        rejected: Iterable[Rejected],
        note: str | None = None,
        reason: str | None = None,
        recipient: str | None = None,
        claim: str | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
    ) -> tuple[int, list[int]]:
        """Record a new transfer with every item pending (or skipped/failed as scanned).

        With ``claim``, the pending items are claimed by it in the same transaction, so
        that no replay running meanwhile can take them. Returns the transfer id and the
        item ids of ``instances``, in order.
        """
        now = utc_now()
        with self._write() as db:
            cur = db.execute(
                "INSERT INTO transfers (peer, peer_address, created_at, note, reason, recipient,"
                " inputs) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    peer,
                    peer_address,
                    now,
                    note,
                    reason,
                    recipient,
                    json.dumps([str(p) for p in inputs]),
                ),
            )
            transfer_id = int(cur.lastrowid or 0)
            ids: list[int] = []
            for inst in instances:
                cur = db.execute(
                    "INSERT INTO items (transfer_id, path, sop_class_uid, sop_instance_uid,"
                    " study_uid, series_uid, transfer_syntax, size, digest, state, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
                    (
                        transfer_id,
                        str(inst.path),
                        inst.sop_class_uid,
                        inst.sop_instance_uid,
                        inst.study_uid,
                        inst.series_uid,
                        inst.transfer_syntax,
                        inst.size,
                        inst.digest,
                        now,
                    ),
                )
                ids.append(int(cur.lastrowid or 0))
            db.executemany(
                "INSERT INTO items (transfer_id, path, sop_instance_uid, state, reason,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (transfer_id, str(r.path), r.sop_instance_uid, r.disposition, r.reason, now)
                    for r in rejected
                ],
            )
            if claim is not None:
                db.execute(
                    "UPDATE items SET claim = ?, lease_expires = ? WHERE transfer_id = ?"
                    " AND state = 'pending'",
                    (claim, time.time() + lease_seconds, transfer_id),
                )
        return transfer_id, ids

    def mark_sending(self, item_id: int, *, claim: str | None = None) -> bool:
        """Record that the item is about to go on the wire (one more attempt).

        With ``claim``, only while the item is still claimed by it: returns False (and
        changes nothing) when the claim was lost, and the item must not be sent.
        """
        sql = (
            "UPDATE items SET state = 'sending', attempts = attempts + 1, updated_at = ?"
            " WHERE id = ?"
        )
        params: list[object] = [utc_now(), item_id]
        if claim is not None:
            sql += " AND claim = ?"
            params.append(claim)
        with self._write() as db:
            return db.execute(sql, params).rowcount == 1

    def record_outcome(
        self,
        item_id: int,
        *,
        state: str,
        status: int | None,
        reason: str | None,
        retryable: bool = False,
    ) -> None:
        """Record the peer's answer (or its absence) for an item."""
        with self._write() as db:
            db.execute(
                "UPDATE items SET state = ?, status = ?, reason = ?, retryable = ?,"
                " updated_at = ? WHERE id = ?",
                (state, status, reason, int(retryable), utc_now(), item_id),
            )

    def finish_transfer(self, transfer_id: int, *, outcome: str, error: str | None) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE transfers SET outcome = ?, error = ?, finished_at = ? WHERE id = ?",
                (outcome, error, utc_now(), transfer_id),
            )

    # -- claims and replay -----------------------------------------------------------

    def renew_claims(self, claim: str, *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> None:
        """Extend the lease of every item ``claim`` holds."""
        with self._write() as db:
            db.execute(
                "UPDATE items SET lease_expires = ? WHERE claim = ?",
                (time.time() + lease_seconds, claim),
            )

    def release_claims(self, claim: str) -> None:
        """Give up every item ``claim`` holds (whatever their state)."""
        with self._write() as db:
            db.execute(
                "UPDATE items SET claim = NULL, lease_expires = NULL WHERE claim = ?", (claim,)
            )

    def claim_replay(
        self,
        claim: str,
        *,
        peer: str | None = None,
        older_than: float = 0.0,
        max_attempts: int | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        include_refused: bool = False,
    ) -> list[tuple[str, ItemRecord]]:
        """Claim every item a replay should resend; return them with their peer's name.

        That is: items ``pending`` or ``sending`` (no answer known), and items that
        ``failed`` retryably, last changed at least ``older_than`` seconds ago, tried
        fewer than ``max_attempts`` times, and not held by a live claim. A claim is live
        until its lease expires, or until its process is known to be gone (same host,
        no such process): a sender killed with -9 frees its items at once.
        ``include_refused`` also takes failures the peer called final (after the peer
        was fixed, say), but never an item whose file could not be read (no digest).
        """
        now = time.time()
        cutoff = (
            datetime.fromtimestamp(now - older_than, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z")
        )
        with self._write() as db:
            stale = _stale_claims(db, now)
            failed = "items.state = 'failed'" + (
                "" if include_refused else " AND items.retryable = 1"
            )
            sql = (
                "SELECT items.*, transfers.peer AS peer FROM items"
                " JOIN transfers ON transfers.id = items.transfer_id"
                f" WHERE (items.state IN ('pending', 'sending') OR ({failed}))"
                " AND items.digest IS NOT NULL AND items.updated_at <= ?"
                " AND (items.claim IS NULL OR items.lease_expires < ?"
                f" OR items.claim IN ({', '.join('?' for _ in stale)}))"
            )
            params: list[object] = [cutoff, now, *stale]
            if peer is not None:
                sql += " AND transfers.peer = ?"
                params.append(peer)
            if max_attempts is not None:
                sql += " AND items.attempts < ?"
                params.append(max_attempts)
            rows = db.execute(sql + " ORDER BY items.id", params).fetchall()
            ids = [int(r["id"]) for r in rows]
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                db.execute(
                    f"UPDATE items SET claim = ?, lease_expires = ?"
                    f" WHERE id IN ({', '.join('?' for _ in chunk)})",
                    [claim, now + lease_seconds, *chunk],
                )
        return [(str(r["peer"]), _item(r)) for r in rows]

    def confirmed_by_peer(self, peer: str, sop_instance_uids: Iterable[str]) -> dict[str, set[str]]:
        """Per SOP Instance UID, the digests ``peer`` confirmed (in any transfer)."""
        found: dict[str, set[str]] = {}
        sql = (
            "SELECT items.sop_instance_uid, items.digest FROM items"
            " JOIN transfers ON transfers.id = items.transfer_id"
            " WHERE items.state IN ('sent', 'committed') AND transfers.peer = ?"
            " AND items.sop_instance_uid IN ({})"
        )
        pending = list(dict.fromkeys(sop_instance_uids))
        for start in range(0, len(pending), 500):
            chunk = pending[start : start + 500]
            for row in self._read(sql.format(", ".join("?" for _ in chunk)), [peer, *chunk]):
                found.setdefault(row[0], set()).add(row[1])
        return found

    def has_open_items_under(self, folder: Path) -> bool:
        """Whether any item not yet sent (pending, sending, failed) lives under ``folder``."""
        prefix = str(folder).rstrip("/") + "/"
        rows = self._read(
            "SELECT 1 FROM items WHERE state IN ('pending', 'sending', 'failed')"
            " AND substr(path, 1, ?) = ? LIMIT 1",
            (len(prefix), prefix),
        )
        return bool(rows)

    def replay_backlog(
        self, *, peer: str | None = None, max_attempts: int | None = None
    ) -> dict[str, int]:
        """What a replay leaves behind: counts of items it cannot or will not resend.

        ``given_up``: retryable, but tried ``max_attempts`` times or more;
        ``not_retryable``: failed for good (a broken file, a peer's A9xx/Cxxx answer);
        ``unanswered``: pending or sending (someone else's live claim, or too recent).
        """
        scope = " JOIN transfers ON transfers.id = items.transfer_id"
        params: list[object] = []
        if peer is not None:
            scope += " AND transfers.peer = ?"
            params.append(peer)
        limit = max_attempts if max_attempts is not None else -1
        (row,) = self._read(
            "SELECT"
            " COALESCE(SUM(items.state = 'failed' AND items.retryable = 1"
            " AND ? >= 0 AND items.attempts >= ?), 0) AS given_up,"
            " COALESCE(SUM(items.state = 'failed' AND items.retryable = 0), 0) AS not_retryable,"
            " COALESCE(SUM(items.state IN ('pending', 'sending')), 0) AS unanswered,"
            " COALESCE(SUM(items.state = 'failed' AND items.retryable = 1), 0) AS retryable"
            " FROM items" + scope,
            [limit, limit, *params],
        )
        return {key: int(row[key]) for key in row.keys()}  # noqa: SIM118 (sqlite3.Row)

    def refresh_outcome(self, transfer_id: int, *, error: str | None = None) -> str:
        """Recompute a transfer's outcome from its items (after a replay); return it.

        ``error``, when given, is what stopped the latest attempt: it replaces the one of
        an earlier attempt, so that the transfer shows its current reason.
        """
        with self._write() as db:
            outcome = _transfer_outcome(db, transfer_id)
            db.execute(
                "UPDATE transfers SET outcome = ?, finished_at = ?,"
                " error = CASE WHEN ? = 'complete' THEN NULL ELSE COALESCE(?, error) END"
                " WHERE id = ?",
                (outcome, utc_now(), outcome, error, transfer_id),
            )
        return outcome

    def note_reason(self, item_ids: Iterable[int], reason: str) -> None:
        """Record why these items are still not sent (their state stays as it is)."""
        ids = list(item_ids)
        now = utc_now()
        with self._write() as db:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                db.execute(
                    f"UPDATE items SET reason = ?, updated_at = ?"
                    f" WHERE id IN ({', '.join('?' for _ in chunk)})",
                    [reason, now, *chunk],
                )

    def open_items(self, *, peer: str) -> int:
        """How many items to ``peer`` are still open (pending, sending or failed)."""
        (row,) = self._read(
            "SELECT COUNT(*) FROM items JOIN transfers ON transfers.id = items.transfer_id"
            " WHERE transfers.peer = ? AND items.state IN ('pending', 'sending', 'failed')",
            (peer,),
        )
        return int(row[0])

    def abandon(
        self,
        *,
        by: str,
        reason: str,
        transfer_id: int | None = None,
        peer: str | None = None,
    ) -> Abandonment:
        """Give up deliberately on the open items of a transfer or of a peer.

        Each becomes ``abandoned`` with who (``by``), when and why (``reason``); a replay
        never resends it. Items that a running send or replay holds (a live claim) are
        left alone and counted in ``held``: that run decides their fate. The outcome of
        each transfer concerned is recomputed.
        """
        if (transfer_id is None) == (peer is None):
            raise ValueError("abandon takes a transfer id or a peer, not both")
        now_ts = time.time()
        now = utc_now()
        with self._write() as db:
            stale = _stale_claims(db, now_ts)
            sql = (
                "SELECT items.* FROM items JOIN transfers ON transfers.id = items.transfer_id"
                " WHERE items.state IN ('pending', 'sending', 'failed')"
            )
            params: list[object] = []
            if transfer_id is not None:
                sql += " AND items.transfer_id = ?"
                params.append(transfer_id)
            else:
                sql += " AND transfers.peer = ?"
                params.append(peer)
            rows = db.execute(sql + " ORDER BY items.id", params).fetchall()
            free = [
                r
                for r in rows
                if r["claim"] is None or (r["lease_expires"] or 0.0) < now_ts or r["claim"] in stale
            ]
            ids = [int(r["id"]) for r in free]
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                db.execute(
                    "UPDATE items SET state = 'abandoned', abandoned_at = ?, abandoned_by = ?,"
                    " abandon_reason = ?, claim = NULL, lease_expires = NULL, updated_at = ?"
                    f" WHERE id IN ({', '.join('?' for _ in chunk)})",
                    [now, by, reason, now, *chunk],
                )
            transfers = sorted({int(r["transfer_id"]) for r in free})
            for tid in transfers:
                db.execute(
                    "UPDATE transfers SET outcome = ?,"
                    " finished_at = COALESCE(finished_at, ?) WHERE id = ?"
                    " AND outcome != 'running'",
                    (_transfer_outcome(db, tid), now, tid),
                )
        return Abandonment(
            items=tuple(_item(r) for r in free),
            held=len(rows) - len(free),
            transfers=tuple(transfers),
        )

    def abandonments(self, transfer_id: int) -> list[dict[str, object]]:
        """Who gave up on items of this transfer, when and why, with how many items each."""
        rows = self._read(
            "SELECT abandoned_by, abandoned_at, abandon_reason, COUNT(*) AS items FROM items"
            " WHERE transfer_id = ? AND state = 'abandoned'"
            " GROUP BY abandoned_by, abandoned_at, abandon_reason ORDER BY abandoned_at",
            (transfer_id,),
        )
        return [
            {
                "by": r["abandoned_by"],
                "at": r["abandoned_at"],
                "reason": r["abandon_reason"],
                "items": int(r["items"]),
            }
            for r in rows
        ]

    # -- reading -------------------------------------------------------------------

    def transfers(
        self,
        *,
        limit: int = 20,
        peer: str | None = None,
        since: str | None = None,
        failed_only: bool = False,
    ) -> list[TransferSummary]:
        """The most recent transfers, newest first, with item counts per state.

        ``peer`` keeps one peer's transfers, ``since`` (an ISO 8601 UTC time as the journal
        writes it) those created at or after it, ``failed_only`` those with a failed item or
        an outcome other than success.
        """
        sql = "SELECT * FROM transfers WHERE 1 = 1"
        params: list[object] = []
        if peer is not None:
            sql += " AND peer = ?"
            params.append(peer)
        if since is not None:
            sql += " AND created_at >= ?"
            params.append(since)
        if failed_only:
            sql += (
                " AND (outcome NOT IN ('complete', 'running') OR EXISTS (SELECT 1 FROM items"
                " WHERE items.transfer_id = transfers.id AND items.state = 'failed'))"
            )
        rows = self._read(sql + " ORDER BY id DESC LIMIT ?", (*params, limit))
        summaries = []
        for row in rows:
            counts = {
                r["state"]: int(r["n"])
                for r in self._read(
                    "SELECT state, COUNT(*) AS n FROM items WHERE transfer_id = ? GROUP BY state",
                    (row["id"],),
                )
            }
            (sent_bytes,) = self._read(
                "SELECT COALESCE(SUM(size), 0) FROM items WHERE transfer_id = ?"
                " AND state IN ('sent', 'committed')",
                (row["id"],),
            )[0]
            summaries.append(
                TransferSummary(
                    id=int(row["id"]),
                    peer=row["peer"],
                    peer_address=row["peer_address"],
                    created_at=row["created_at"],
                    finished_at=row["finished_at"],
                    outcome=row["outcome"],
                    error=row["error"],
                    note=row["note"],
                    reason=row["reason"],
                    recipient=row["recipient"],
                    counts=counts,
                    bytes_sent=int(sent_bytes),
                )
            )
        return summaries

    def transfer_row(self, transfer_id: int) -> sqlite3.Row | None:
        """The ``transfers`` row of one transfer (peer, note, reason, recipient, outcome ...)."""
        rows = self._read("SELECT * FROM transfers WHERE id = ?", (transfer_id,))
        return rows[0] if rows else None

    def audit_items(self, transfer_id: int) -> list[sqlite3.Row]:
        """What the audit trail needs of a transfer's items (study, class, state, reason)."""
        return self._read(
            "SELECT study_uid, sop_instance_uid, sop_class_uid, state, retryable, reason"
            " FROM items WHERE transfer_id = ? ORDER BY id",
            (transfer_id,),
        )

    def received_rows(self, study_uid: str) -> list[sqlite3.Row]:
        """Every ``received`` record of one study (outcome, SOP class, instance UID)."""
        return self._read(
            "SELECT sop_instance_uid, sop_class_uid, outcome, peer_address FROM received"
            " WHERE study_uid = ? ORDER BY id",
            (study_uid,),
        )

    def items(self, transfer_id: int, *, states: Sequence[str] = ()) -> list[ItemRecord]:
        sql = "SELECT * FROM items WHERE transfer_id = ?"
        params: list[object] = [transfer_id]
        if states:
            sql += f" AND state IN ({', '.join('?' for _ in states)})"
            params.extend(states)
        return [_item(r) for r in self._read(sql + " ORDER BY id", params)]

    def items_by_id(self, item_ids: Iterable[int]) -> list[ItemRecord]:
        """The items with these ids, in id order."""
        wanted = sorted(set(item_ids))
        found: list[ItemRecord] = []
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            found.extend(
                _item(r)
                for r in self._read(
                    f"SELECT * FROM items WHERE id IN ({', '.join('?' for _ in chunk)})"
                    " ORDER BY id",
                    chunk,
                )
            )
        return found

    def mark_committed(
        self, sop_instance_uids: Iterable[str], *, transfer_id: int | None = None
    ) -> int:
        """Record that the peer committed to holding these instances (Storage Commitment).

        Items last ``sent`` with these SOP Instance UIDs (in ``transfer_id`` when given)
        become ``committed``; returns how many items changed.
        """
        changed = 0
        now = utc_now()
        pending = list(dict.fromkeys(sop_instance_uids))
        with self._write() as db:
            for start in range(0, len(pending), 500):
                chunk = pending[start : start + 500]
                sql = (
                    "UPDATE items SET state = 'committed', updated_at = ? WHERE state = 'sent'"
                    f" AND sop_instance_uid IN ({', '.join('?' for _ in chunk)})"
                )
                params: list[object] = [now, *chunk]
                if transfer_id is not None:
                    sql += " AND transfer_id = ?"
                    params.append(transfer_id)
                changed += db.execute(sql, params).rowcount
        return changed

    def sent_instances(
        self, *, transfer_id: int | None = None, study_uids: Sequence[str] = ()
    ) -> list[dict[str, str | int | None]]:
        """What was sent (or committed), last record per SOP Instance UID, for verify.

        Each row: path, sop_class_uid, sop_instance_uid, study_uid, transfer_syntax,
        digest, size, transfer_id.
        """
        sql = (
            "SELECT path, sop_class_uid, sop_instance_uid, study_uid, transfer_syntax, digest,"
            " size, transfer_id FROM items WHERE state IN ('sent', 'committed')"
        )
        params: list[object] = []
        if transfer_id is not None:
            sql += " AND transfer_id = ?"
            params.append(transfer_id)
        if study_uids:
            sql += f" AND study_uid IN ({', '.join('?' for _ in study_uids)})"
            params.extend(study_uids)
        latest: dict[str, dict[str, str | int | None]] = {}
        for row in self._read(sql + " ORDER BY id", params):
            latest[row["sop_instance_uid"]] = {key: row[key] for key in row.keys()}  # noqa: SIM118
        return list(latest.values())

    def sent_digests(self, sop_instance_uids: Iterable[str]) -> dict[str, str]:
        """Digest last recorded as sent (or committed) for each of these SOP Instance UIDs."""
        return self._latest_digests(
            "SELECT sop_instance_uid, digest FROM items WHERE state IN ('sent', 'committed')"
            " AND sop_instance_uid IN ({}) ORDER BY id",
            sop_instance_uids,
        )

    def received_digests(self, sop_instance_uids: Iterable[str]) -> dict[str, str]:
        """Digest last stored by the receiver for each of these SOP Instance UIDs."""
        return self._latest_digests(
            "SELECT sop_instance_uid, digest FROM received WHERE outcome IN"
            " ('stored', 'duplicate') AND sop_instance_uid IN ({}) ORDER BY id",
            sop_instance_uids,
        )

    def conflict_digests(self, sop_instance_uids: Iterable[str]) -> dict[str, set[str]]:
        """Digests the receiver kept aside as conflicts, per SOP Instance UID."""
        found: dict[str, set[str]] = {}
        sql = (
            "SELECT sop_instance_uid, digest FROM received WHERE outcome = 'conflict'"
            " AND sop_instance_uid IN ({})"
        )
        for uid, digest in self._rows_for_uids(sql, sop_instance_uids):
            found.setdefault(uid, set()).add(digest)
        return found

    def recorded_instances(self, study_uids: Iterable[str]) -> dict[str, dict[str, str]]:
        """Per study, the SOP Instance UIDs sent or stored here, with their last path."""
        found: dict[str, dict[str, str]] = {}
        pending = list(dict.fromkeys(study_uids))
        for start in range(0, len(pending), 400):
            chunk = pending[start : start + 400]
            marks = ", ".join("?" for _ in chunk)
            rows = self._read(
                "SELECT study_uid, sop_instance_uid, path FROM items"
                f" WHERE state IN ('sent', 'committed') AND study_uid IN ({marks})"
                " UNION ALL SELECT study_uid, sop_instance_uid, path FROM received"
                f" WHERE outcome IN ('stored', 'duplicate') AND study_uid IN ({marks})",
                [*chunk, *chunk],
            )
            for study, sop, path in rows:
                if study and sop:
                    found.setdefault(study, {})[sop] = path
        return found

    def _latest_digests(self, sql: str, uids: Iterable[str]) -> dict[str, str]:
        return dict(self._rows_for_uids(sql, uids))  # rows come oldest first: last one wins

    def _rows_for_uids(self, sql: str, uids: Iterable[str]) -> Iterator[tuple[str, str]]:
        """Run ``sql`` (with ``IN ({})``) over ``uids`` in chunks below SQLite's limit."""
        pending = list(dict.fromkeys(uids))
        for start in range(0, len(pending), 500):
            chunk = pending[start : start + 500]
            for row in self._read(sql.format(", ".join("?" for _ in chunk)), chunk):
                yield row[0], row[1]

    # -- receiving -----------------------------------------------------------------

    def record_received(
        self,
        *,
        calling_ae: str,
        peer_address: str,
        sop_class_uid: str | None,
        sop_instance_uid: str | None,
        study_uid: str | None,
        series_uid: str | None,
        transfer_syntax: str | None,
        size: int | None,
        digest: str | None,
        path: str | None,
        outcome: str,
        status: int,
        reason: str | None,
        study_folder: str | None = None,
        receiver: str | None = None,
    ) -> str:
        """Record what the receiver did with one incoming instance; return the outcome recorded.

        A ``duplicate`` of an instance this journal never recorded as stored is recorded
        as ``stored``: its file was written by a receiver stopped (or refused by a
        journal error) before it journaled it, and was never answered as stored.
        With ``study_folder``, a stored or duplicate instance also counts as activity of
        its study (``note_study_activity``, for ``receiver``) in the same transaction, so
        the instance and its study are journaled together or not at all.
        """
        with self._write() as db:
            if outcome == "duplicate" and sop_instance_uid:
                known = db.execute(
                    "SELECT 1 FROM received WHERE sop_instance_uid = ? AND outcome IN"
                    " ('stored', 'duplicate') LIMIT 1",
                    (sop_instance_uid,),
                ).fetchone()
                if known is None:
                    outcome = "stored"
            db.execute(
                "INSERT INTO received (received_at, calling_ae, peer_address, sop_class_uid,"
                " sop_instance_uid, study_uid, series_uid, transfer_syntax, size, digest, path,"
                " outcome, status, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    utc_now(),
                    calling_ae,
                    peer_address,
                    sop_class_uid,
                    sop_instance_uid,
                    study_uid,
                    series_uid,
                    transfer_syntax,
                    size,
                    digest,
                    path,
                    outcome,
                    status,
                    reason,
                ),
            )
            if study_folder is not None and study_uid and outcome in ("stored", "duplicate"):
                _note_activity(
                    db,
                    study_uid=study_uid,
                    calling_ae=calling_ae,
                    peer_address=peer_address,
                    folder=study_folder,
                    new=outcome == "stored",
                    receiver=receiver,
                )
        return outcome

    def received_summary(self, *, limit: int = 20) -> list[dict[str, object]]:
        """Per study received: instance counts by outcome, calling AE, first and last time."""
        rows = self._read(
            "SELECT study_uid, calling_ae, MIN(received_at) AS first, MAX(received_at) AS last,"
            " SUM(outcome = 'stored') AS stored, SUM(outcome = 'duplicate') AS duplicate,"
            " SUM(outcome = 'conflict') AS conflict, SUM(outcome = 'refused') AS refused,"
            " COALESCE(SUM(CASE WHEN outcome = 'stored' THEN size END), 0) AS bytes"
            " FROM received GROUP BY study_uid, calling_ae ORDER BY last DESC LIMIT ?",
            (limit,),
        )
        return [
            {
                "study_uid": r["study_uid"],
                "calling_ae": r["calling_ae"],
                "first_received_at": r["first"],
                "last_received_at": r["last"],
                "stored": int(r["stored"]),
                "duplicate": int(r["duplicate"]),
                "conflict": int(r["conflict"]),
                "refused": int(r["refused"]),
                "bytes": int(r["bytes"]),
            }
            for r in rows
        ]

    # -- received studies: completeness and hooks -------------------------------------

    def note_study_activity(
        self,
        *,
        study_uid: str,
        calling_ae: str,
        peer_address: str,
        folder: str,
        new: bool,
        receiver: str | None = None,
    ) -> None:
        """Record that an instance of ``study_uid`` arrived at ``receiver``.

        A ``new`` instance (stored, not a duplicate) re-opens a study already complete,
        so that it completes again with its new content, and makes ``receiver`` the
        study's receiver: the one that completes it, runs its hook and forwards it.
        A duplicate changes neither.
        """
        with self._write() as db:
            _note_activity(
                db,
                study_uid=study_uid,
                calling_ae=calling_ae,
                peer_address=peer_address,
                folder=folder,
                new=new,
                receiver=receiver,
            )

    def mark_commit_requested(
        self, study_uids: Iterable[str], *, receiver: str | None = None
    ) -> None:
        """Studies named in a Storage Commitment request complete only by commitment.

        The receiver asked takes the studies over: its sender said the set is complete.
        """
        with self._write() as db:
            db.executemany(
                "UPDATE studies SET commit_requested = 1, receiver = COALESCE(?, receiver)"
                " WHERE study_uid = ?",
                [(receiver, uid) for uid in study_uids],
            )

    def studies(
        self, *, state: str | None = None, receiver: str | None = None
    ) -> list[ReceivedStudy]:
        """Received studies, all or those in ``state`` (receiving, complete).

        With ``receiver``, only that receiver's studies (and those journaled before
        studies had a receiver, which any receiver may adopt).
        """
        sql = "SELECT * FROM studies WHERE 1"
        params: list[object] = []
        if state is not None:
            sql += " AND state = ?"
            params.append(state)
        if receiver is not None:
            sql += " AND (receiver = ? OR receiver IS NULL)"
            params.append(receiver)
        return [_study(r) for r in self._read(sql + " ORDER BY last_at", params)]

    def study(self, study_uid: str) -> ReceivedStudy | None:
        rows = self._read("SELECT * FROM studies WHERE study_uid = ?", (study_uid,))
        return _study(rows[0]) if rows else None

    def complete_study(
        self, study_uid: str, *, completed_by: str, receiver: str | None = None
    ) -> ReceivedStudy | None:
        """Mark a receiving study complete; None when it was not receiving (already done).

        With ``receiver``, only a study of that receiver (or of none) is completed: a
        receiver never completes, hooks or forwards another receiver's study.
        """
        sql = (
            "UPDATE studies SET state = 'complete', completed_by = ?, completed_at = ?,"
            " instances = ?, receiver = COALESCE(?, receiver)"
            " WHERE study_uid = ? AND state = 'receiving'"
        )
        with self._write() as db:
            (count,) = db.execute(
                "SELECT COUNT(DISTINCT sop_instance_uid) FROM received WHERE study_uid = ?"
                " AND outcome IN ('stored', 'duplicate')",
                (study_uid,),
            ).fetchone()
            params: list[object] = [completed_by, utc_now(), count, receiver, study_uid]
            if receiver is not None:
                sql += " AND (receiver = ? OR receiver IS NULL)"
                params.append(receiver)
            if not db.execute(sql, params).rowcount:
                return None
            row = db.execute("SELECT * FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
        return _study(row)

    def stored_instances(self, sop_instance_uids: Iterable[str]) -> dict[str, sqlite3.Row]:
        """The latest stored (or duplicate) record of each SOP Instance UID the store holds."""
        found: dict[str, sqlite3.Row] = {}
        pending = list(dict.fromkeys(sop_instance_uids))
        for start in range(0, len(pending), 500):
            chunk = pending[start : start + 500]
            rows = self._read(
                "SELECT sop_instance_uid, sop_class_uid, study_uid, digest, path FROM received"
                " WHERE outcome IN ('stored', 'duplicate') AND sop_instance_uid IN ({})"
                " ORDER BY id".format(", ".join("?" for _ in chunk)),
                chunk,
            )
            for row in rows:
                found[row["sop_instance_uid"]] = row
        return found

    def study_files(self, study_uid: str) -> list[str]:
        """Paths of the instances of a study the receiver stored (once each)."""
        rows = self._read(
            "SELECT DISTINCT path FROM received WHERE study_uid = ? AND path IS NOT NULL"
            " AND outcome IN ('stored', 'duplicate') ORDER BY path",
            (study_uid,),
        )
        return [str(r["path"]) for r in rows]

    def set_study_note(
        self,
        study_uid: str,
        *,
        note: str | None,
        reason: str | None,
        recipient: str | None,
        source: str,
        sender_ae: str | None = None,
    ) -> None:
        """Record the sender's note for a received study (the latest one wins)."""
        with self._write() as db:
            db.execute(
                "INSERT INTO study_notes (study_uid, note, reason, recipient, source, sender_ae,"
                " recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(study_uid) DO UPDATE SET"
                " note = excluded.note, reason = excluded.reason, recipient = excluded.recipient,"
                " source = excluded.source, sender_ae = excluded.sender_ae,"
                " recorded_at = excluded.recorded_at",
                (study_uid, note, reason, recipient, source, sender_ae, utc_now()),
            )

    def study_note(self, study_uid: str) -> dict[str, str | None] | None:
        """The sender's note for a received study: note, reason, recipient, source, sender_ae."""
        rows = self._read(
            "SELECT note, reason, recipient, source, sender_ae FROM study_notes"
            " WHERE study_uid = ?",
            (study_uid,),
        )
        return dict(rows[0]) if rows else None

    def start_hook_run(self, study_uid: str, command: str) -> int:
        with self._write() as db:
            cursor = db.execute(
                "INSERT INTO hook_runs (study_uid, command, started_at, outcome)"
                " VALUES (?, ?, ?, 'running')",
                (study_uid, command, utc_now()),
            )
            return int(cursor.lastrowid or 0)

    def finish_hook_run(self, run_id: int, *, exit_status: int | None, error: str | None) -> None:
        outcome = "succeeded" if exit_status == 0 and error is None else "failed"
        with self._write() as db:
            db.execute(
                "UPDATE hook_runs SET finished_at = ?, outcome = ?, exit_status = ?, error = ?"
                " WHERE id = ?",
                (utc_now(), outcome, exit_status, error, run_id),
            )

    def hook_runs(self, study_uid: str) -> list[dict[str, object]]:
        rows = self._read("SELECT * FROM hook_runs WHERE study_uid = ? ORDER BY id", (study_uid,))
        return [dict(r) for r in rows]

    def studies_with_failed_hooks(self, *, receiver: str | None = None) -> list[ReceivedStudy]:
        """Complete studies whose latest hook run failed or was cut off (still 'running').

        With ``receiver``, only that receiver's studies (and those of no receiver).
        """
        mine = "" if receiver is None else " AND (s.receiver = ? OR s.receiver IS NULL)"
        rows = self._read(
            "SELECT s.* FROM studies s JOIN hook_runs h ON h.study_uid = s.study_uid"
            " WHERE s.state = 'complete' AND h.id = (SELECT MAX(id) FROM hook_runs"
            " WHERE study_uid = s.study_uid) AND h.outcome IN ('failed', 'running')"
            + mine
            + " ORDER BY s.completed_at",
            () if receiver is None else (receiver,),
        )
        return [_study(r) for r in rows]

    def start_forward(self, study_uid: str, *, peer: str) -> int:
        """Journal a forward as pending before it is queued (found again after a crash)."""
        with self._write() as db:
            cursor = db.execute(
                "INSERT INTO forwards (study_uid, peer, at, outcome) VALUES (?, ?, ?, 'pending')",
                (study_uid, peer, utc_now()),
            )
            return int(cursor.lastrowid or 0)

    def finish_forward(
        self, forward_id: int, *, outcome: str, transfer_id: int | None, reason: str | None
    ) -> None:
        """Record how a forward ended: sent, failed (retryable) or held."""
        with self._write() as db:
            db.execute(
                "UPDATE forwards SET at = ?, outcome = ?, transfer_id = ?, reason = ? WHERE id = ?",
                (utc_now(), outcome, transfer_id, reason, forward_id),
            )

    def pending_forwards(
        self, peer: str, *, receiver: str | None = None
    ) -> list[tuple[int, ReceivedStudy]]:
        """Forwards to ``peer`` queued but never finished (the receiver stopped first).

        With ``receiver``, only forwards of that receiver's studies (and of no receiver's).
        """
        mine = "" if receiver is None else " AND (s.receiver = ? OR s.receiver IS NULL)"
        rows = self._read(
            "SELECT f.id AS forward_id, s.* FROM forwards f JOIN studies s"
            " ON s.study_uid = f.study_uid WHERE f.peer = ? AND f.outcome = 'pending'"
            + mine
            + " ORDER BY f.id",
            (peer,) if receiver is None else (peer, receiver),
        )
        return [(int(r["forward_id"]), _study(r)) for r in rows]

    def forwards(self, study_uid: str | None = None) -> list[dict[str, object]]:
        if study_uid is None:
            rows = self._read("SELECT * FROM forwards ORDER BY id")
        else:
            rows = self._read(
                "SELECT * FROM forwards WHERE study_uid = ? ORDER BY id", (study_uid,)
            )
        return [dict(r) for r in rows]
