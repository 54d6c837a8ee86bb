"""What a trioqueue store file holds: its schema, the versions it had and how a file of
an older one is upgraded, and what SQLite's errors about a file mean to its user."""

from __future__ import annotations

import logging
import sqlite3
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
