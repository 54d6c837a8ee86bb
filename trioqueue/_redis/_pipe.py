"""A lean pipelined Redis connection for the scripts: RESP by hiredis over a Trio socket.

Why not coredis for these calls: a coredis round trip costs ~250 µs of client CPU here
whatever it carries (its request objects, retry policy, anyio streams, a writer and a
reader task per connection), which capped a node at prefetch 0; this one costs ~40 µs
(docs/redis-design.md, "The client", has the figures and how they were measured).  It
carries only non-blocking commands (the scripts, EVALSHA/EVAL); blocking calls stay on
coredis' lane (:mod:`._client`).

What it guarantees, as the adapter's coredis path does:

* **Pipelined, in order.**  Every task writes its command to one socket at once (no
  lock; a partial write is queued and drained by a task of its own, so commands never
  interleave) and parks; a reader task parses the replies (``hiredis.Reader``) and hands
  each to the task that sent the request at its position.  A task cancelled while it
  waits leaves its place: its reply is read and dropped.
* **Never hangs.**  A watchdog fails the connection when requests wait and no reply came
  for ``stream_timeout`` seconds; connecting is bounded by ``connect_timeout``.
* **Re-sends.**  A lost connection (``CLIENT KILL``, a restart, a reset, a timeout) fails
  every request waiting on it; each is sent again on a fresh connection, at most
  :data:`ATTEMPTS` times in all, 10 ms apart, as coredis' default policy does (so a
  command may run twice: every script is idempotent).  Then :class:`RedisUnavailable`.
* Error replies come back as values (:func:`reply_error`: ``ResponseError`` as coredis
  decodes them, nested ones too); the caller decides (:class:`NoScript`: load, retry).
"""

from __future__ import annotations

import errno
import socket
from collections import deque
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import unquote, urlparse

import hiredis
import outcome
import trio
from coredis.exceptions import ResponseError

ATTEMPTS = 3
"""Sends of one command at most (the first and two re-sends), as coredis' default."""

RESEND_PAUSE = 0.01
"""Seconds between two sends of one command."""


class NoScript(ResponseError):
    """A NOSCRIPT answer: the server does not have the script (load it and retry)."""


_ERROR_CODES = frozenset((
    "ASK", "BUSYGROUP", "CLUSTERDOWN", "CROSSSLOT", "ERR", "EXECABORT", "LOADING", "MOVED",
    "NOAUTH", "NOGROUP", "NOKEY", "NOPERM", "NOPROTO", "NOTBUSY", "READONLY", "TRYAGAIN",
    "UNBLOCKED", "WRONGPASS", "WRONGTYPE",
))
"""Error prefixes coredis 6.9.0 takes off a message (its parser's table): an error reads
the same on both."""


class Refused(ResponseError):
    """The server refused the command before running any of it (:data:`REFUSALS`): out
    of memory, loading its data, busy with a long script, a replica, and the like.
    Nothing was done; the same command may succeed later."""


REFUSALS = frozenset((
    "OOM", "LOADING", "BUSY", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN",
    "NOREPLICAS",
))
"""Error codes of refusals before a command runs (:class:`Refused`).  A script is refused
for memory (OOM) at a command that adds data only while it has written nothing yet
(Redis' ``scriptVerifyOOM``: it does not stop a script midway), so a refused script did
nothing either."""


def reply_error(message: str) -> ResponseError:
    """An error reply as coredis decodes it (top level or nested): ``ResponseError`` with
    the message less its known code (:class:`NoScript` for NOSCRIPT), or
    :class:`Refused` with the whole message."""
    code, _, rest = message.partition(" ")
    if code == "NOSCRIPT":
        return NoScript(rest)
    if code in REFUSALS or (code == "NOPERM" and "'eval" in rest):
        # (NOPERM for EVALSHA or EVAL itself: a user whose ACL does not let it run
        # scripts, refused before any ran.  One from inside a script may follow writes.)
        return Refused(message)
    return ResponseError(rest if code in _ERROR_CODES else message)


class Lost(Exception):
    """The connection a request was on is gone (or never came): send it again.
    ``sent``: the request was written to a connection (Redis may have run it); false
    when no send of it reached a socket (no connection: nothing was done)."""

    def __init__(self, message: str, *, sent: bool = True) -> None:
        super().__init__(message)
        self.sent = sent


class Endpoint:
    """Where and how to connect: parsed from a ``redis://`` or ``unix://`` URL."""

    def __init__(self, url: str, client_name: str) -> None:
        u = urlparse(url)
        if u.scheme not in ("redis", "unix"):
            raise ValueError(f"the lean connection takes redis:// or unix://, not {url!r}")
        query = {key: unquote(value) for key, _, value in
                 (part.partition("=") for part in u.query.split("&") if "=" in part)}
        self.unix = u.scheme == "unix"
        self.path = unquote(u.path) if self.unix else ""
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 6379
        db = query.get("db") or ("" if self.unix else u.path.lstrip("/"))
        self.db = int(db) if db else 0
        # As redis-py reads a URL: the user and password of the netloc, else of the query
        # (``unix://`` has no other place for them).
        self.username = unquote(u.username) if u.username else query.get("username")
        self.password = unquote(u.password) if u.password else query.get("password")
        self.client_name = client_name

    def handshake(self) -> list[tuple[str | int, ...]]:
        """Commands sent first on every new connection (each must answer OK)."""
        out: list[tuple[str | int, ...]] = []
        if self.password is not None:
            out.append(("AUTH", self.username, self.password) if self.username
                       else ("AUTH", self.password))
        if self.db:
            out.append(("SELECT", self.db))
        if self.client_name:
            out.append(("CLIENT", "SETNAME", self.client_name))
        return out


class _Call:
    """One request waiting for its reply; ``task`` is None once its caller left."""

    __slots__ = ("task",)

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task: trio.lowlevel.Task | None = task

    def abort(self, raise_cancel: Any) -> trio.lowlevel.Abort:
        self.task = None  # the reply is read and dropped
        return trio.lowlevel.Abort.SUCCEEDED


class Connection:
    """One socket: :meth:`call` writes a command and waits for its reply."""

    def __init__(self, sock: socket.socket, nursery: trio.Nursery) -> None:
        self.sock = sock
        self.nursery = nursery
        self.reader = hiredis.Reader(encoding="utf-8", replyError=reply_error)
        self.waiting: deque[_Call] = deque()
        self.replies = 0
        self.dead: BaseException | None = None
        self._unsent: list[bytes] | None = None

    async def call(self, data: bytes) -> Any:
        """Send ``data`` (one packed command) and return its reply; :class:`Lost` if the
        connection fails first."""
        if self.dead is not None:
            raise Lost(str(self.dead), sent=False)
        if self._unsent is not None:
            self._unsent.append(data)  # after the bytes already waiting, in order
        else:
            try:
                sent = self.sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self.fail(exc)
                raise Lost(str(exc), sent=False) from None
            if sent < len(data):
                self._unsent = [data[sent:]]
                self.nursery.start_soon(self._drain)
        call = _Call(trio.lowlevel.current_task())
        self.waiting.append(call)
        return await trio.lowlevel.wait_task_rescheduled(call.abort)

    async def _drain(self) -> None:
        """Write what a full socket buffer did not take, in order, until the connection
        fails.  It may have failed before this task first ran (this task starts after
        the call that filled the buffer, a large one, which Redis may answer with an
        error and a close at once), and a closed socket has no file descriptor to wait
        on: that ``ValueError`` ended the node."""
        sock = self.sock
        try:
            while self._unsent and self.dead is None:
                await trio.lowlevel.wait_writable(sock)
                data = b"".join(self._unsent)
                try:
                    sent = sock.send(data)
                except BlockingIOError:
                    sent = 0
                self._unsent = [data[sent:]] if sent < len(data) else []
            self._unsent = None
        except (OSError, trio.ClosedResourceError) as exc:
            self.fail(exc)

    async def read_replies(self) -> None:
        """The reader task: each reply to the request at its place, until the end."""
        sock, reader, waiting = self.sock, self.reader, self.waiting
        reschedule, value = trio.lowlevel.reschedule, outcome.Value
        try:
            while True:
                await trio.lowlevel.wait_readable(sock)
                try:
                    data = sock.recv(262_144)
                except BlockingIOError:
                    continue
                if not data:
                    raise ConnectionError("connection closed by the server")
                reader.feed(data)
                while (reply := reader.gets()) is not False:
                    if not waiting:
                        raise ConnectionError("a reply nobody asked for")
                    call = waiting.popleft()
                    self.replies += 1
                    if call.task is not None:
                        reschedule(call.task, value(reply))
        except (OSError, trio.ClosedResourceError, hiredis.HiredisError,
                UnicodeDecodeError) as exc:
            self.fail(exc)
        finally:
            self.fail(ConnectionError("connection closed"))

    def fail(self, exc: BaseException) -> None:
        """Close the connection; every request waiting on it raises :class:`Lost`."""
        if self.dead is not None:
            return
        self.dead = exc
        self._unsent = None  # (what a failed connection never sent is not kept)
        waiting, self.waiting = self.waiting, deque()
        for call in waiting:
            if call.task is not None:
                trio.lowlevel.reschedule(call.task, outcome.Error(Lost(f"{exc}")))
        trio.lowlevel.notify_closing(self.sock)
        self.sock.close()


class Pipe:
    """A pipelined connection, opened on first use and again after a loss.

    :meth:`execute` sends one packed command (``hiredis.pack_command``) and returns its
    reply, re-sending it on a fresh connection after a loss (:data:`ATTEMPTS` sends in
    all); raises :class:`Lost` when every send failed.  Runs its reader tasks and its
    watchdog in ``nursery``.
    """

    def __init__(self, endpoint: Endpoint, nursery: trio.Nursery, *,
                 connect_timeout: float, stream_timeout: float) -> None:
        self.endpoint = endpoint
        self._nursery = nursery
        self._connect_timeout = connect_timeout
        self._stream_timeout = stream_timeout
        self._conn: Connection | None = None
        self._lock = trio.Lock()
        self._failed: tuple[float, str] | None = None
        """When the last attempt to connect failed (trio time), and why."""
        self.connects = 0
        self._watching = False
        self._closed = False

    async def execute(self, data: bytes) -> Any:
        lost = Lost("not sent", sent=False)
        sent = False
        for attempt in range(ATTEMPTS):
            if attempt:
                await trio.sleep(RESEND_PAUSE)
            if self._closed:
                raise Lost("the client is closed", sent=sent)
            try:
                conn = self._conn
                if conn is None or conn.dead is not None:
                    conn = await self._connect()
                return await conn.call(data)
            except Lost as exc:
                lost = exc
                sent = sent or exc.sent
        lost.sent = sent
        raise lost

    async def _connect(self) -> Connection:
        """The connection, opened if need be: by one caller at a time; those that waited
        for an attempt that failed take its failure rather than try again each (against a
        Redis that accepts connections and answers nothing, 20 calls waited 5 s each in
        turn, the last for minutes)."""
        asked = trio.current_time()
        async with self._lock:
            conn = self._conn
            if conn is not None and conn.dead is None:
                return conn
            failed = self._failed
            if failed is not None and failed[0] >= asked:  # it failed while we waited
                raise Lost(failed[1], sent=False)
            conn = None
            try:
                with trio.move_on_after(self._connect_timeout):
                    conn = await self._open()
            except Lost as exc:
                self._failed = (trio.current_time(), str(exc))
                raise
            if conn is None:
                why = f"no connection within {self._connect_timeout} s"
                self._failed = (trio.current_time(), why)
                raise Lost(why, sent=False)
            self._failed = None
            self._conn = conn
            self.connects += 1
            if not self._watching:
                self._watching = True
                self._nursery.start_soon(self._watchdog)
            return conn

    async def _open(self) -> Connection:
        ep = self.endpoint
        try:
            if ep.unix:
                sock = await _connect_sock(socket.AF_UNIX, ep.path)
            else:
                sock = await _connect_tcp(ep.host, ep.port)
        except OSError as exc:
            raise Lost(f"cannot connect: {exc}", sent=False) from None
        conn = Connection(sock, self._nursery)
        self._nursery.start_soon(conn.read_replies)
        handshake = ep.handshake()
        if handshake:
            try:
                replies = [await conn.call(pack(cmd)) for cmd in handshake]
            except BaseException as exc:
                conn.fail(ConnectionError("handshake cut short"))
                if isinstance(exc, Lost):
                    exc.sent = False  # (the handshake's, not the request's)
                raise
            for cmd, reply in zip(handshake, replies, strict=True):
                if isinstance(reply, ResponseError):
                    conn.fail(reply)
                    raise Lost(f"{cmd[0]} refused: {reply}", sent=False)
        return conn

    async def _watchdog(self) -> None:
        """Fail the connection when requests wait and no reply came for
        ``stream_timeout`` (checked every quarter of it: never a hang, and nothing per
        call)."""
        tick = self._stream_timeout / 4
        last: tuple[Connection | None, int] = (None, -1)
        stalled = 0.0
        while True:
            await trio.sleep(tick)
            conn = self._conn
            if conn is None or conn.dead is not None or not conn.waiting:
                stalled = 0.0
                last = (None, -1)
                continue
            now = (conn, conn.replies)
            stalled = stalled + tick if now == last else 0.0
            last = now
            if stalled >= self._stream_timeout:
                conn.fail(TimeoutError(f"no reply in {self._stream_timeout} s"))

    def close(self) -> None:
        """Fail the connection (its waiting requests raise :class:`Lost`); every later
        :meth:`execute` raises :class:`Lost`."""
        self._closed = True
        if self._conn is not None:
            self._conn.fail(ConnectionError("closed"))


async def _connect_tcp(host: str, port: int) -> socket.socket:
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    error = OSError(f"no address for {host!r}")
    for family, _, _, _, addr in infos:
        try:
            sock = await _connect_sock(family, addr)
        except OSError as exc:
            error = exc
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise error


async def _connect_sock(family: int, addr: Any) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        try:
            sock.connect(addr)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, f"connect to {addr!r}: {errno.errorcode.get(err, err)}"
                              ) from None
    except BaseException:
        trio.lowlevel.notify_closing(sock)
        sock.close()
        raise
    return sock


pack = cast(Callable[[tuple[str | int, ...]], bytes], hiredis.pack_command)
"""One command, RESP-encoded (``hiredis.pack_command``: its stub types a 1-tuple)."""
