"""The SQLite store: one file, stdlib ``sqlite3``, WAL mode.

Every method here blocks; the persistence task calls them through
``trio.to_thread.run_sync`` so the event loop never waits on the disk.  One writer
connection (flushes, pruning; one call at a time) and a pool of reader connections,
one for each read under way (lookups, listing, recovery streaming), whatever thread it
runs in: WAL lets readers see the last commit while a write runs, and lookups from many
tasks run side by side.

The file identifies itself with ``PRAGMA application_id`` and records its schema in
``PRAGMA user_version``; opening anything else raises :class:`StoreError` naming the file
and what is wrong.  Nothing is ever reset silently.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from itertools import chain
from pathlib import Path
from typing import Any

from .._exceptions import StoreError
from .._ids import GENERATED_SHAPE_SQL
from .lockfile import StoreLock
from .schema import APPLICATION_ID as APPLICATION_ID
from .schema import COLUMNS as COLUMNS
from .schema import LIVE as LIVE
from .schema import SCHEMA, SCHEMA_VERSION, describe, locked, tolerant, too_big, upgrade, upsert_sql
from .schema import Row as Row
from .schema import RowTooBig as RowTooBig

log = logging.getLogger("trioqueue.store")

BUSY_TIMEOUT = 30.0
"""Seconds a statement waits for a lock that another connection holds on the file
(SQLite's busy timeout) before it fails with "database is locked"."""
OPEN_WAIT = 30.0
"""Seconds :meth:`SqliteStore.open` waits, in all, for such a lock to be released."""
OPEN_PATIENCE = 0.1
"""Seconds it waits before it says (once, in the log) what it is waiting for."""
LENGTH_LIMIT: int | None = None
"""SQLite's length limit (bytes of a value or a row) on the writer's connection; ``None``
keeps SQLite's own (1,000,000,000 by default).  Tests lower it to reach the limit cheaply."""

MAX_ROWS_PER_STATEMENT = 1024
"""Rows per statement at most (a write of more is several statements in one
transaction).  Every statement hands the GIL back and forth (sqlite3 releases it around
each one): the writer thread waits for a busy event loop to let go of it, and the loop
for the writer to bind the next statement's values.  Against 256 rows a statement,
1,024 gave the bulk enqueue of a store in ``batch`` mode 7-11 % more jobs a second (5 and
8 interleaved pairs, ``noop/trioqueue/sqlite-batch-many-1000``: 101,766 against 95,415;
91,169 against 82,138) and in ``sync`` mode 5-6 % (a noisy machine: 512 and 1,024 could
not be told apart).  A statement of that size takes about 25 ms to prepare (once:
statements are cached by size and shape) and 3-4.5 MB while it is prepared, hence
:data:`MAX_LARGE_STATEMENTS`."""
LARGE_STATEMENT = 256
"""Statements of up to this many rows are made for every size and shape that comes
(about 0.1 MB each, prepared); larger ones are counted against
:data:`MAX_LARGE_STATEMENTS`."""
MAX_LARGE_STATEMENTS = 8
"""Distinct statements of more than :data:`LARGE_STATEMENT` rows a store prepares at most
(about 30 MB in all): a write that would need another uses statements of
:data:`LARGE_STATEMENT` rows, in one transaction."""
MAX_CACHED_UPSERTS = 96
"""Upsert statements kept by size and shape (which columns are bound once); the
connection's own cache of prepared statements holds as many (see :func:`_connect`)."""


def _bucket(n: int) -> int:
    """The statement size that takes ``n`` rows: a power of two up to 256, then a
    multiple of 256, so a couple of dozen cached statements fit every batch."""
    if n <= 256:
        return 1 << (n - 1).bit_length()
    return -(-n // 256) * 256


_SELECT = f"SELECT {', '.join(COLUMNS)} FROM jobs"
_PAYLOAD, _RESULT = COLUMNS.index("payload"), COLUMNS.index("result")


def row_bytes(row: Row) -> int:
    """What a row's payload and result take (the JSON texts): ``newest``'s budget."""
    return len(row[_PAYLOAD]) + len(row[_RESULT] or "")


def _fetch(conn: sqlite3.Connection, sql: str, params: Sequence[Any],
           max_bytes: int | None) -> list[Row]:
    """Every row of a query, or with ``max_bytes`` the rows until their payloads and
    results pass that many bytes (one row at least)."""
    cursor = conn.execute(sql, params)
    try:
        if max_bytes is None:
            return cursor.fetchall()
        rows: list[Row] = []
        size = 0
        while size <= max_bytes and (row := cursor.fetchone()) is not None:
            rows.append(row)
            size += row_bytes(row)
        return rows
    finally:
        cursor.close()  # before another read takes the connection (a failed fetch too)


def _tune(conn: sqlite3.Connection, fsync: bool) -> None:
    conn.execute(f"PRAGMA synchronous = {'FULL' if fsync else 'NORMAL'}")
    conn.execute("PRAGMA cache_size = -16000")  # 16 MiB
    conn.execute("PRAGMA temp_store = MEMORY")
    if LENGTH_LIMIT is not None:
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, LENGTH_LIMIT)


def _connect(path: Path, *, query_only: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path.resolve().as_uri(), uri=True, isolation_level=None, check_same_thread=False,
        timeout=BUSY_TIMEOUT, cached_statements=MAX_CACHED_UPSERTS + 32,
    )
    if query_only:
        conn.execute("PRAGMA query_only = ON")
    return conn


class SqliteStore:
    """A trioqueue store file.  Not thread-safe by itself: the persistence task calls
    the writer methods one at a time, and the reader methods one at a time."""

    def __init__(self, path: Path, writer: sqlite3.Connection, reader: sqlite3.Connection,
                 clean: bool, lock: StoreLock, *, fsync: bool) -> None:
        self.path = path
        self._lock_file = lock
        """``<store>.lock``, held while this store is open."""
        self._w = writer
        self._readers = [reader]
        """Every reader connection: as many as reads ran at once, so lookups run side
        by side (WAL lets readers share the file with the writer).  Not one per thread:
        Trio's idle worker threads end and new ones start, and a connection each kept
        two file descriptors and its caches open for every thread that ever read."""
        self._idle = [reader]
        """The reader connections no read is using now."""
        self.was_clean = clean
        """False when the last process using the file did not close it (a crash)."""
        self._lock = threading.Lock()  # a belt to the persistence task's braces
        limit = writer.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        per = min(MAX_ROWS_PER_STATEMENT, limit // len(COLUMNS))
        self.rows_per_statement = per if per <= 256 else per // 256 * 256
        """Rows in one INSERT at most (a larger write uses several statements)."""
        self._upserts: dict[tuple[int, tuple[bool, ...]], str] = {}
        self._large: set[tuple[int, tuple[bool, ...]]] = set()
        """The sizes and shapes of the statements of more than :data:`LARGE_STATEMENT`
        rows made so far (at most :data:`MAX_LARGE_STATEMENTS`)."""
        self._w_failed = False
        self._fsync = fsync
        self.max_length = writer.getlimit(sqlite3.SQLITE_LIMIT_LENGTH)
        """The most bytes a row may take (SQLite's length limit): a write holding a
        larger row fails whole (:class:`RowTooBig`)."""
        self._readers_lock = threading.Lock()

    # ------------------------------------------------------------------ open, close

    @classmethod
    def open(cls, path: Path, *, fsync: bool = False) -> SqliteStore:
        """Open or create the store at ``path``; raise :class:`StoreError` naming it."""
        where = str(path)
        if path.is_dir():
            raise StoreError(f"{where}: is a directory, not a trioqueue store file")
        lock = StoreLock.take(path)
        try:
            writer = _connect(path)
        except sqlite3.Error as exc:
            lock.release(failed=True)
            raise StoreError(f"{where}: cannot open: {describe(exc)}") from exc
        try:
            clean = cls._prepare_when_free(writer, where, fsync)
            reader = _connect(path, query_only=True)
        except BaseException as exc:
            writer.close()
            lock.release(failed=True)
            if isinstance(exc, sqlite3.DatabaseError):
                raise StoreError(f"{where}: {describe(exc)}") from exc
            raise
        return cls(path, writer, reader, clean, lock, fsync=fsync)

    @classmethod
    def _prepare_when_free(cls, conn: sqlite3.Connection, where: str, fsync: bool) -> bool:
        """:meth:`_prepare`, waiting up to :data:`OPEN_WAIT` seconds for a lock another
        connection holds on the file (an ``sqlite3`` shell with a transaction open, a
        backup tool), and saying so in the log once it has waited
        :data:`OPEN_PATIENCE`.  SQLite's busy handler does the waiting; this only sets
        how long."""
        deadline = time.monotonic() + OPEN_WAIT
        wait = min(OPEN_PATIENCE, OPEN_WAIT)
        told = False
        while True:
            conn.execute(f"PRAGMA busy_timeout = {max(1, round(wait * 1000))}")
            try:
                clean = cls._prepare(conn, where, fsync)
            except sqlite3.OperationalError as exc:
                if not locked(exc):
                    raise
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                wait = deadline - time.monotonic()
                if wait <= 0:
                    raise StoreError(
                        f"{where}: locked by another connection for {OPEN_WAIT:g} s; giving "
                        "up (another program holds a transaction open on the file)"
                    ) from exc
                if not told:
                    log.warning(
                        "%s: locked by another connection; waiting up to %g s for it to "
                        "be released", where, OPEN_WAIT,
                    )
                    told = True
                continue
            conn.execute(f"PRAGMA busy_timeout = {round(BUSY_TIMEOUT * 1000)}")
            if told:
                log.info("%s: the lock was released; opening", where)
            return clean

    @staticmethod
    def _prepare(conn: sqlite3.Connection, where: str, fsync: bool) -> bool:
        """Check (or create) the schema; mark the file open.  Returns the clean flag."""
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
        )]
        if app_id != APPLICATION_ID:
            if tables or app_id != 0 or version != 0:
                shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
                raise StoreError(
                    f"{where}: not a trioqueue store (an SQLite database"
                    + (f" with tables {shown}" if tables else f" with application_id {app_id}")
                    + "); refusing to touch it"
                )
            conn.execute("PRAGMA journal_mode = WAL")
            # One transaction: a crash mid-creation leaves an empty file, not half a schema.
            conn.executescript(
                f"BEGIN IMMEDIATE;{SCHEMA}PRAGMA application_id = {APPLICATION_ID};"
                f"PRAGMA user_version = {SCHEMA_VERSION};COMMIT;"
            )
            version = SCHEMA_VERSION
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{where}: written by a newer trioqueue (schema version {version}; this "
                f"version reads up to {SCHEMA_VERSION}); upgrade trioqueue to open it"
            )
        if version < 1:
            raise StoreError(f"{where}: trioqueue store with unknown schema version {version}")
        missing = {"jobs", "meta"} - set(tables or ["jobs", "meta"])
        if missing:
            raise StoreError(f"{where}: corrupt: table(s) {', '.join(sorted(missing))} missing")
        if version < SCHEMA_VERSION:
            upgrade(conn, where, version)
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":  # pragma: no cover - WAL is refused only on odd filesystems
            raise StoreError(f"{where}: cannot use WAL journal mode (got {mode!r})")
        _tune(conn, fsync)
        check = conn.execute("PRAGMA quick_check(3)").fetchall()
        if check != [("ok",)]:
            raise StoreError(f"{where}: corrupt: {'; '.join(r[0] for r in check)}")
        row = conn.execute("SELECT value FROM meta WHERE key = 'clean'").fetchone()
        clean = row is None or row[0] == "1"
        conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('clean', '0')")
        return clean

    def close(self) -> None:
        """Mark the file cleanly closed, fold the WAL back in, close both connections."""
        with self._lock:
            try:
                self._w.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('clean', '1')")
                self._w.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: cannot close cleanly: {describe(exc)}") from exc
            finally:
                self._close_all()

    def meta_with(self, prefix: str) -> dict[str, str]:
        """The ``meta`` entries whose key starts with ``prefix``, the prefix taken off."""
        rows = self._read("SELECT key, value FROM meta WHERE substr(key, 1, ?) = ?",
                          (len(prefix), prefix))
        return {key[len(prefix):]: value for key, value in rows}

    def set_meta(self, key: str, value: str) -> None:
        """One ``meta`` entry, committed at once (on the writer's connection)."""
        with self._lock:
            try:
                self._w.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                                (key, value))
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: cannot write: {describe(exc)}") from exc

    def abandon(self) -> None:
        """Close the connections without marking the file clean."""
        self._close_all()

    def _close_all(self) -> None:
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
        self._w.close()
        self._lock_file.release()

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        """An idle reader connection (a new one when every one is in use), for one read."""
        with self._readers_lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            try:
                conn = _connect(self.path, query_only=True)
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: cannot open: {describe(exc)}") from exc
            with self._readers_lock:
                self._readers.append(conn)
        try:
            yield conn
        finally:
            with self._readers_lock:
                self._idle.append(conn)

    def reader_connections(self) -> int:
        """Test hook: the reader connections open."""
        with self._readers_lock:
            return len(self._readers)

    # ------------------------------------------------------------------ writing

    def write(self, rows: Sequence[Row]) -> None:
        """Upsert ``rows`` (latest state of each job, :data:`COLUMNS` in order) in one
        transaction."""
        width = len(COLUMNS)
        for row in rows:
            if len(row) != width:
                raise ValueError(f"write: a row of {len(row)} values, not {width} ({row[:1]})")
        self.write_values(list(chain.from_iterable(rows)))

    def write_values(self, values: Sequence[Any]) -> None:
        """Upsert rows given one after another in a flat sequence, ``len(COLUMNS)``
        values per row, in one transaction.  (The persistence task builds one flat tuple:
        a tuple per row, kept alive until the write ends, made the cyclic GC run several
        times per flush.)

        Up to :data:`MAX_ROWS_PER_STATEMENT` rows go in *one* statement, padded to a
        cached size by repeating the last row (upserting a row twice is harmless), with
        no BEGIN/COMMIT around it when one statement holds them all (a statement larger
        than :data:`LARGE_STATEMENT` rows of a size and shape not seen yet, past
        :data:`MAX_LARGE_STATEMENTS`, is made of statements of that many rows).  The point is the
        GIL: sqlite3 releases it around each statement and each BEGIN/COMMIT, and a
        writer thread must win it back from a busy event loop every time, which takes
        up to the interpreter's switch interval (lowered to 200 us while the store
        writes; 5 ms by default).  Measured against a busy thread at 5 ms: one row per
        statement (``executemany``) 4,600 rows/s; 512 rows per statement 46,000; one
        statement per 4,096 rows 181,000.

        A column whose value is the same in every row of a statement (the task, the
        status of a batch of new jobs, the NULLs of a job not yet run) is bound once, as
        a numbered parameter that every row names, not once per row: ``sqlite3`` binds
        under the GIL, where each bound value is time taken from a busy event loop, while
        finding those columns is a slice and a count per column, in C.
        """
        width = len(COLUMNS)
        n = len(values) // width
        if n * width != len(values):
            raise ValueError(f"write_values: {len(values)} values is not a whole number "
                             f"of {width}-column rows")
        with self._lock:
            if self._w_failed:
                self._reopen_writer()
            conn = self._w
            per = self.rows_per_statement
            statements: list[tuple[str, list[Any]]] = []
            first = 0
            while first < n:
                count = min(per, n - first)
                made = self._statement(values[first * width : (first + count) * width],
                                       count, min(_bucket(count), per))
                if made is None:  # too many large statements already: smaller ones
                    count = min(LARGE_STATEMENT, count)
                    made = self._statement(values[first * width : (first + count) * width],
                                           count, min(_bucket(count), LARGE_STATEMENT))
                    assert made is not None
                statements.append(made)
                first += count
            try:
                if len(statements) > 1:
                    conn.execute("BEGIN")
                for statement in statements:
                    conn.execute(*statement)
                if conn.in_transaction:
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                if too_big(exc):  # one row's data, not the disk: the connection is fine
                    raise RowTooBig(f"{self.path}: cannot write {n} job(s): a row passes "
                                    f"the length limit of {self.max_length:,} bytes") from exc
                # After an I/O error SQLite may keep refusing on this connection even once
                # the disk has room again: the next write starts on a fresh one.
                self._w_failed = True
                raise StoreError(
                    f"{self.path}: cannot write {n} job(s): {describe(exc)}"
                ) from exc

    @property
    def large_statements(self) -> int:
        """How many statements of more than :data:`LARGE_STATEMENT` rows this store has
        made (at most :data:`MAX_LARGE_STATEMENTS`)."""
        return len(self._large)

    def _statement(self, part: Sequence[Any], count: int,
                   size: int) -> tuple[str, list[Any]] | None:
        """The upsert of ``count`` rows (flat ``part``) as one statement of ``size``
        rows, and its parameters: the columns the same in every row bound once, the
        others per row, the last row's repeated to fill up to ``size``.  ``None`` for a
        statement of more than :data:`LARGE_STATEMENT` rows that would be one too many
        (:data:`MAX_LARGE_STATEMENTS`)."""
        width = len(COLUMNS)
        columns = [part[i::width] for i in range(width)]
        shared = tuple([col.count(col[0]) == count for col in columns])
        if size > LARGE_STATEMENT:
            key = (size, shared)
            if key not in self._large:
                if len(self._large) >= MAX_LARGE_STATEMENTS:
                    return None
                self._large.add(key)
        params = [col[0] for col, one in zip(columns, shared, strict=True) if one]
        varying = [col for col, one in zip(columns, shared, strict=True) if not one]
        if varying:
            params.extend(chain.from_iterable(zip(*varying, strict=True)))
            if size > count:  # the last row's values, repeated to fill up
                params.extend([col[-1] for col in varying] * (size - count))
        return self._upsert(size, shared), params

    def pragma(self, name: str) -> Any:
        """The writer connection's setting ``PRAGMA name`` (diagnostics and tests: what
        ``fsync`` set, say).  ``name`` must be a plain identifier."""
        if not name.isidentifier():
            raise ValueError(f"name: expected a PRAGMA name, got {name!r}")
        with self._lock:
            return self._w.execute(f"PRAGMA {name}").fetchone()[0]

    def probe(self) -> None:
        """A small real write, to find out whether writing works again."""
        with self._lock:
            if self._w_failed:
                self._reopen_writer()
            try:
                self._w.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES ('probe', ?)",
                    (str(time.time()),),
                )
            except sqlite3.Error as exc:
                self._w_failed = True
                raise StoreError(f"{self.path}: cannot write: {describe(exc)}") from exc

    def _reopen_writer(self) -> None:
        try:
            conn = _connect(self.path)
            _tune(conn, self._fsync)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot reopen: {describe(exc)}") from exc
        self._w.close()
        self._w = conn
        self._upserts.clear()
        self._w_failed = False

    def _upsert(self, n: int, shared: tuple[bool, ...]) -> str:
        key = (n, shared)
        sql = self._upserts.get(key)
        if sql is None:
            if len(self._upserts) >= MAX_CACHED_UPSERTS:
                self._upserts.clear()
            sql = self._upserts[key] = upsert_sql(n, shared)
        return sql

    def write_all(self, rows: Iterable[Row], chunk: int = 10_000) -> int:
        """Upsert many rows in chunks of ``chunk`` per transaction (bulk loads, tests)."""
        n = 0
        batch: list[Row] = []
        for row in rows:
            batch.append(row)
            if len(batch) >= chunk:
                self.write(batch)
                n += len(batch)
                batch = []
        if batch:
            self.write(batch)
            n += len(batch)
        return n

    def prune(self, finished_before: float, limit: int) -> list[str]:
        """Delete up to ``limit`` finished jobs that finished before the given time;
        return their ids.  Read as bytes: an id that is not UTF-8 (another program wrote
        it) failed the fetch part way, and left the statement, and with it a transaction
        on the writer, open (writes were never committed)."""
        with self._lock:
            try:
                return [row[0].decode("utf-8", "surrogateescape") for row in self._w.execute(
                    "DELETE FROM jobs WHERE rowid IN (SELECT rowid FROM jobs "
                    "WHERE finished_at IS NOT NULL AND finished_at < ? LIMIT ?) "
                    "RETURNING CAST(id AS BLOB)",
                    (finished_before, limit),
                )]
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: cannot prune: {describe(exc)}") from exc

    # ------------------------------------------------------------------ reading

    def _read(self, sql: str, params: Sequence[Any] = (),
              max_bytes: int | None = None) -> list[Row]:
        """The rows of a query (``max_bytes``: see :meth:`newest`).  A row whose text is
        not UTF-8 (another program wrote it) fails the fetch: the query then runs again
        with such text read as ``bytes`` (:func:`~.schema.tolerant`), which
        :func:`~trioqueue._local.rows.record_of` reports as an unreadable row."""
        try:
            with self._reader() as conn:
                return tolerant(conn, partial(_fetch, conn, sql, params, max_bytes))
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot read: {describe(exc)}") from exc

    def get(self, job_id: str) -> Row | None:
        rows = self._read(f"{_SELECT} WHERE id = ?", (job_id,))
        return rows[0] if rows else None

    def given_ids(self) -> list[str]:
        """The id of every stored job whose id is not of the generated shape
        (:func:`~trioqueue._ids.generated_shape`): ids a caller chose (read once, at
        open)."""
        return [row[0] for row in self._read(
            f"SELECT id FROM jobs WHERE NOT {GENERATED_SHAPE_SQL}")]

    def newest(self, status: str | None, limit: int, task: str | None = None,
               before: str | None = None, max_bytes: int | None = None) -> list[Row]:
        """Up to ``limit`` jobs, newest first (by rowid: the order they were first
        written, which is the order they were made), only those in ``status``, of
        ``task``, and made before the job ``before`` if given: before its rowid, or,
        when it is not stored (pruned), with a lower id (generated ids sort by creation
        time).  The table's own b-tree serves the order and the rowid bound.

        With ``max_bytes``, the rows stop once their payloads and results pass that many
        bytes (one row at least): the caller tells such a stop from the end of the rows
        by their :func:`row_bytes`, which then pass ``max_bytes``."""
        where: list[str] = []
        params: list[Any] = []
        if before is not None:
            found = self._read("SELECT rowid FROM jobs WHERE id = ?", (before,))
            if found:
                where.append("rowid < ?")
                params.append(found[0][0])
            else:
                where.append("id < ?")
                params.append(before)
        for clause, value in (("status = ?", status), ("task = ?", task)):
            if value is not None:
                where.append(clause)
                params.append(value)
        sql = _SELECT + (" WHERE " + " AND ".join(where) if where else "")
        return self._read(f"{sql} ORDER BY rowid DESC LIMIT ?", (*params, limit), max_bytes)

    def live(self, status: str) -> list[Row]:
        """Every job in ``status`` (used for processing and scheduled jobs at recovery)."""
        return self._read(f"{_SELECT} WHERE status = ? AND {LIVE} ORDER BY rowid", (status,))

    def queued_span(self, priority: int) -> tuple[int, int]:
        """How many jobs of ``priority`` are queued, and the highest rowid among them."""
        rows = self._read(
            "SELECT count(*), coalesce(max(rowid), 0) FROM jobs "
            f"WHERE status = 'queued' AND {LIVE} AND priority = ?",
            (priority,),
        )
        count, top = rows[0]
        return int(count), int(top)

    def queued(self, priority: int, after: int, upto: int, limit: int) -> list[Row]:
        """Queued jobs of ``priority`` with ``after < rowid <= upto``, oldest first; each
        row ends with its rowid."""
        return self._read(
            f"SELECT {', '.join(COLUMNS)}, rowid FROM jobs WHERE status = 'queued' "
            f"AND {LIVE} AND priority = ? AND rowid > ? AND rowid <= ? ORDER BY rowid LIMIT ?",
            (priority, after, upto, limit),
        )
