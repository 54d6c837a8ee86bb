"""What a trioqueue store file holds: its schema, the upsert that writes its rows, the
versions it had and how a file of an older one is upgraded, and what SQLite's errors
about a file mean to its user (and how a read gets past text that is not UTF-8)."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from typing import Any

from .._exceptions import StoreError

log = logging.getLogger("trioqueue.store")

APPLICATION_ID = 0x74727175  # "trqu"
SCHEMA_VERSION = 2
"""1: the first schema; 2: ``jobs.progress`` (a file of version 1 is upgraded at open)."""

COLUMNS = (
    "id", "task", "payload", "priority", "status", "attempts", "max_retries", "timeout",
    "created_at", "scheduled_for", "started_at", "finished_at", "result", "error", "traceback",
    "progress",
)
"""The column order of every row tuple the store takes and gives."""

Row = tuple[Any, ...]

LIVE = "(status = 'queued' OR status = 'scheduled' OR status = 'processing')"
"""The condition of the ``jobs_live`` index: a query on the jobs not finished names it
word for word (SQLite uses a partial index only for a query that repeats its WHERE).
Finished jobs, most rows, have no entry in it: a job's last write (completed, failed,
cancelled) takes its entry out and puts none in, where a full index on ``(status,
priority)`` moved it, about 15 % of the row's cost (callgrind: an upsert that completes
a stored job 30,200 instructions -> 25,700, a completed job written at once 24,400 ->
20,000)."""

SCHEMA = f"""
CREATE TABLE jobs (
    id            TEXT PRIMARY KEY,
    task          TEXT NOT NULL,
    payload       TEXT NOT NULL,            -- JSON
    priority      INTEGER NOT NULL,         -- 0 high, 1 medium, 2 low
    status        TEXT NOT NULL,            -- queued, scheduled, processing, completed, ...
    attempts      INTEGER NOT NULL,
    max_retries   INTEGER NOT NULL,
    timeout       REAL,                     -- seconds per attempt, NULL for none
    created_at    REAL NOT NULL,            -- seconds since the epoch
    scheduled_for REAL,
    started_at    REAL,
    finished_at   REAL,
    result        TEXT,                     -- JSON, NULL for none
    error         TEXT,
    traceback     TEXT,
    progress      TEXT                      -- JSON (fraction, note), NULL for none
);
CREATE INDEX jobs_live ON jobs(status, priority) WHERE {LIVE};
CREATE INDEX jobs_by_finished ON jobs(finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

NULLABLE_TEXT = ("result", "error", "traceback", "progress")
"""Text columns where an empty string is stored as NULL (see :data:`NULLABLE`)."""

NULLABLE = tuple(c in NULLABLE_TEXT for c in COLUMNS)
"""Rows may give NULL as ``None``, but the store's writer gives NaN in the REAL columns
(SQLite stores a NaN as NULL) and ``""`` in :data:`NULLABLE_TEXT`, which the statement
turns back into NULL (``NULLIF(?, '')``): ``sqlite3`` binds an exact float or str in C,
while each ``None`` takes a detour through its adapter registry (a tuple built and two
attribute lookups): a typical row of seven NULLs took 34,600 instructions to bind and
write that way, against 22,800 then."""


_ON_CONFLICT = " ON CONFLICT(id) DO UPDATE SET " + ", ".join(
    f"{c} = excluded.{c}" for c in COLUMNS[3:]
)


def upsert_sql(n: int, shared: tuple[bool, ...] | None = None) -> str:
    """An upsert of ``n`` rows in one statement.  ``shared[i]``: column ``i`` has one
    value for every row, bound once: the parameters are the shared columns' values (in
    column order), then each row's own values, row after row.

    The shared columns come first in the statement's column list, as ``?1``, ``?2``, ...
    in every row, and each row's own values are plain ``?``: SQLite numbers those on
    from the highest number seen, and looks a repeated ``?N`` up among the numbered
    parameters only (a ``?N`` per value made preparing a statement of 1,792 rows take
    200 ms, against 80 ms for plain ``?``)."""
    if shared is None:
        shared = (False,) * len(COLUMNS)
    first = [(c, nullable) for c, nullable, one in zip(COLUMNS, NULLABLE, shared,
                                                        strict=True) if one]
    own = [(c, nullable) for c, nullable, one in zip(COLUMNS, NULLABLE, shared,
                                                      strict=True) if not one]
    exprs = [f"NULLIF(?{k}, '')" if nullable else f"?{k}"
             for k, (_, nullable) in enumerate(first, 1)]
    exprs += ["NULLIF(?, '')" if nullable else "?" for _, nullable in own]
    row = "(" + ",".join(exprs) + ")"
    names = ", ".join(c for c, _ in first + own)
    return f"INSERT INTO jobs({names}) VALUES " + ",".join([row] * n) + _ON_CONFLICT


UPGRADES: dict[int, str] = {
    1: "ALTER TABLE jobs ADD COLUMN progress TEXT;DROP INDEX IF EXISTS jobs_by_status;"
       f"CREATE INDEX jobs_live ON jobs(status, priority) WHERE {LIVE};",
}
"""The schema step from each version to the next."""


def upgrade(conn: sqlite3.Connection, where: str, version: int) -> None:
    """Bring a store of an older schema ``version`` up to :data:`SCHEMA_VERSION`, all
    steps in one transaction: a crash midway leaves the file as it was."""
    steps = "".join(UPGRADES[v] for v in range(version, SCHEMA_VERSION))
    try:
        conn.executescript(
            f"BEGIN IMMEDIATE;{steps}PRAGMA user_version = {SCHEMA_VERSION};COMMIT;"
        )
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if locked(exc):
            raise
        raise StoreError(
            f"{where}: cannot upgrade the store from schema version {version} to "
            f"{SCHEMA_VERSION}: {describe(exc)}"
        ) from exc
    log.info("%s: upgraded from schema version %d to %d", where, version, SCHEMA_VERSION)


def locked(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` is SQLite's "another connection holds the lock" (BUSY or LOCKED)."""
    code = getattr(exc, "sqlite_errorcode", None)  # set on every error SQLite raised
    return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def too_big(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` is SQLite's "string or blob too big": a value or a row past the
    connection's length limit, which is about one row's data, not about the file."""
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_TOOBIG


class RowTooBig(StoreError):
    """A write that SQLite refused because a row in it passes the length limit
    (``SqliteStore.max_length``); nothing of it was written."""


def undecodable(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` is ``sqlite3``'s "Could not decode to UTF-8": a row holds text that
    is not UTF-8 (another program wrote it), which fails the whole fetch."""
    return isinstance(exc, sqlite3.OperationalError) and str(exc).startswith(
        "Could not decode to UTF-8")


def text_or_bytes(raw: bytes) -> str | bytes:
    """A TEXT value as ``str``, or as its ``bytes`` when they are not UTF-8."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw


def tolerant(conn: sqlite3.Connection, fetch: Callable[[], list[Row]]) -> list[Row]:
    """``fetch()`` (a read on ``conn``).  When a row's text is not UTF-8, which fails the
    fetch of every row with it, ``fetch()`` again with such text read as ``bytes``
    (:func:`text_or_bytes`): the row is then reported as unreadable by whoever makes
    it a record, and the others are read.  Only then: a Python ``text_factory`` is
    called for every text value read, and would slow every read down."""
    try:
        return fetch()
    except sqlite3.OperationalError as exc:
        if not undecodable(exc):
            raise
    conn.text_factory = text_or_bytes
    try:
        return fetch()
    finally:
        conn.text_factory = str


def describe(exc: sqlite3.Error) -> str:
    """SQLite's error ``exc`` in words that say what is wrong with the file, and what to
    check where that is known."""
    text = str(exc)
    if "file is not a database" in text:
        return "not a trioqueue store (not an SQLite database, or encrypted)"
    if "malformed" in text:
        return f"corrupt ({text})"
    if "readonly" in text or "read-only" in text:
        return f"read-only ({text}); check the file's and its directory's permissions"
    if "unable to open" in text:
        return f"{text}; check that the directory exists and is writable"
    if "disk is full" in text or "database or disk is full" in text:
        return f"disk full ({text})"
    return text
