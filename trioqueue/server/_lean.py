"""A lean HTTP/1.1 (and websocket) server for the ASGI app, on plain Trio streams.

It does only what the app needs, at a fraction of a generic ASGI server's cost per
request: one task per connection, keep-alive, one ``send_all`` per response, and
websockets (``/events``) through wsproto on the same port.  Requests are parsed by
httptools (llhttp, the parser of Node.js, as uvicorn uses it) with none of its
leniencies, fed the bytes as they come; the server adds only the checks llhttp does not
make, and the limits.

Its parts: this module accepts connections, keeps their count under the cap and stops
(:class:`Server`, :func:`serve_lean`); :mod:`._h1` serves one HTTP/1.1 connection (the
parser's callbacks, the checks, the deadlines); :mod:`._ws` one websocket; :mod:`._wire`
holds what they share (the request the app reads and answers, the error responses).

What it speaks:

- HTTP/1.1 and 1.0 requests (505 for any other version); a ``Content-Length`` body or a
  chunked one (httpx streams bodies of unknown size chunked); 501 for a
  ``Transfer-Encoding`` other than ``chunked``, 400 for one on HTTP/1.0 or beside a
  ``Content-Length``; 400 without a ``Host`` (1.1) or with two; ``Expect:
  100-continue`` is answered with ``100 Continue`` when the app first waits for the body
  (so a 413 on the declared length goes out without the body being sent), any other
  ``Expect`` gets 417.
- Keep-alive by default (HTTP/1.1), ``Connection: close`` honoured both ways, pipelined
  requests answered in order (CR and LF bytes before a request line are skipped, as
  llhttp does).  A body the app did not read is never read from the
  socket: if it had all arrived already the connection goes on, else the response says
  ``connection: close`` and the connection ends (so is a response the app marks so).
- A websocket upgrade (``GET``) goes to wsproto; another ``Upgrade`` offer is ignored
  (the request is served as HTTP) unless the request has a body (400); ``CONNECT`` gets
  405.
- A malformed request, a framing error in a body (a bad chunk size, chunk data without
  its CRLF, a bad trailer) and a body that stops short get an error response from this
  server (the app sees ``http.disconnect``; what it answers is dropped), and the
  connection closes: nothing after a framing error is parsed.
- Deadlines: an idle keep-alive connection closes after :data:`._h1.KEEP_ALIVE_TIMEOUT`; a
  request head must be complete within :data:`._h1.HEAD_TIMEOUT` of its first byte (else 408);
  a body within :data:`._h1.BODY_TIMEOUT` in all (not per read) of the app's first wait for it
  (else 408).
- Sizes: a head at :data:`._h1.MAX_HEAD` bytes and :data:`._h1.MAX_HEADERS` fields (431); chunk
  framing and trailers, the bytes of a body that carry no data, at :data:`._h1.MAX_HEAD` (400);
  the body at ``max_body`` (413 from the app, and here as a backstop); a websocket message
  at :data:`._ws.WS_MAX_MESSAGE` (close 1009).
- Connections: at most ``max_connections`` open at once.  A new connection past the cap
  takes the place of the one that has waited longest on its client (an idle keep-alive
  connection or one closing first, then the oldest slow head or body), which is closed;
  only when every connection is busy in the app (or a websocket) is the new one answered
  503 and closed (its request read and dropped for up to :data:`REFUSE_LINGER`, so that
  the 503 is not lost to a reset; :data:`REFUSING_MAX` such answers at once, then a
  reset).  A response that waits for its client to read it counts as waiting on the
  client (and ends after :data:`._h1.SEND_TIMEOUT`).  So slow or idle clients cannot keep
  ``/healthz`` from an answer (they would, were new connections left to wait).
  The soft open-file limit is raised to fit the cap (up to the hard limit); a cap that
  still does not fit is kept under it (less :data:`FD_RESERVE`).  Accept errors
  (``EMFILE``...) close a connection as at the cap and are logged as one warning per
  :data:`WARN_INTERVAL` with a count, never a traceback per connection.
- Memory: a response is written whole from memory, and stays there until its client has
  read it (up to :data:`._h1.SEND_TIMEOUT`).  Responses of
  :data:`._wire.LARGE_RESPONSE` bytes or more (a ``GET /jobs`` page is up to 8 MiB) count
  against ``response_budget`` (:data:`RESPONSE_BUDGET`) from when the app hands over the
  body until it is written or the connection ends; one that would take the total past it
  takes the place of held ones whose clients have fallen behind (read nothing for
  :data:`._budget.GRACE`, or too slowly to finish within :data:`._h1.SEND_TIMEOUT`), whose
  connections are reset, or else is dropped and answered 503 with ``Retry-After``
  (:meth:`Server.send_large`, :mod:`._budget`).  Smaller responses (probes, metrics, a job
  of ordinary size) are never counted nor refused.  Request bodies past their first
  :data:`._wire.BODY_COUNTED_FROM` bytes count against ``body_budget``
  (:data:`BODY_BUDGET`) until their request ends; past it a body is read on only by the
  connection that has held bytes longest, the others waiting (TCP holds their clients
  back), and clients stalled in their bodies are closed to make room
  (:class:`._budget.BodyBudget`).
- Cost: a keep-alive request already in the socket when its connection looks (nearly
  every one under load) is read with ``os.read`` at once, with no deadline scope and no
  schedule point, and a response the socket takes whole is written with ``os.write``,
  then one checkpoint: one schedule point per request where Trio's ``receive_some`` and
  ``send_all`` make two (:meth:`._h1.Connection.send`).  Otherwise, and on streams that
  are not plain sockets (tests use memory streams), the stream's own calls.
- Shutdown: when ``shutdown_trigger`` returns, listening stops, idle connections close,
  requests in progress finish (each then closes), and whatever is left after
  :data:`GRACEFUL_TIMEOUT` is cancelled.

The ASGI scope has the fields Hypercorn gave (``type``, ``asgi``, ``http_version``,
``method``, ``scheme``, ``path``, ``raw_path``, ``query_string``, ``root_path``,
``headers`` as lower-cased byte pairs, ``client``, ``server``, ``extensions``).
"""


from __future__ import annotations

import contextlib
import errno
import logging
import math
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from . import _budget
from ._budget import GRACE as BUDGET_GRACE
from ._budget import BodyBudget, ResponseBudget
from ._h1 import Connection, os_write
from ._http import ASGIApp
from ._wire import LARGE_RESPONSE as LARGE_RESPONSE  # (the size the budget counts from)
from ._wire import READ_SIZE, WAIT_CLOSING, HttpRequest, error_response

log = logging.getLogger("trioqueue.http")

GRACEFUL_TIMEOUT = 5.0
"""Seconds requests in progress get once the server begins to stop."""
MAX_CONNECTIONS = 1000
"""Default of ``serve_lean(max_connections=)``: connections open at once."""
REFUSING_MAX = 64
"""Connections answered 503 at once; past that a refused connection is reset."""
REFUSE_LINGER = 1.0
"""Seconds a 503 at the cap may take, its request read and dropped."""
WARN_INTERVAL = 10.0
"""At most one warning this often for each kind of refused or failed connection."""
ACCEPT_RETRY_DELAY = 0.1
"""Seconds between accept attempts while the process is out of file descriptors."""
FD_RESERVE = 64
"""File descriptors left to the rest of the process when the open-file limit (soft
``RLIMIT_NOFILE``) caps ``max_connections``."""
BODY_BUDGET = 64 * 1024 * 1024
"""Default of ``serve_lean(body_budget=)``: bytes of request bodies held at once, across
connections, past each body's first 64 KiB (:class:`._budget.BodyBudget`).  Without it,
900 connections that each sent all but the end of a 1 MiB body held 950 MB for 30 s."""
RESPONSE_BUDGET = 64 * 1024 * 1024
"""Default of ``serve_lean(response_budget=)``: bytes of large responses (of
:data:`._wire.LARGE_RESPONSE` or more) held at once while their clients read them.

Without a budget, 1,000 connections (the default cap) that asked for an 8 MiB ``GET
/jobs`` page and read nothing held 8 GB for :data:`._h1.SEND_TIMEOUT` (300 of them took
a server from 90 MB to 1.2 GB).  A large body is written as the app made it (its head
sent apart, not joined to a copy of it): with 64 MiB, 300 such clients took the server
from 89 MB to 166 MB (264 MB while the head was joined to a copy of the body), while 8
pages of the largest size (64 jobs of the 1 MiB ``max_body``) can
still go out at once; a client reading at 10 MB/s holds its 8 MiB page for under a
second, so legitimate traffic seldom meets the budget, and clients that read nothing hold
their share only until a large answer needs it (:mod:`._budget`).  Raise it for many large
answers to slow clients (payloads or results of megabytes, dashboards over slow links)."""
RESPONSE_RETRY_AFTER = b"retry-after: 1\r\n"
"""A refusal for the budget: a fast client's response leaves it in milliseconds."""
MAX_USER_TIMEOUT_MS = 2**31 - 1
"""The longest ``user_timeout_ms``: ``TCP_USER_TIMEOUT`` holds milliseconds in a C
``int`` (about 24.8 days); ``setsockopt`` refuses more."""

_ACCEPT_CAPACITY_ERRNOS = frozenset(
    getattr(errno, name) for name in ("EMFILE", "ENFILE", "ENOMEM", "ENOBUFS")
    if hasattr(errno, name)
)

class Throttled:
    """A log line written at most once per :data:`WARN_INTERVAL`, with how often it
    happened (a warning of ``trioqueue.http`` unless told otherwise)."""

    __slots__ = ("count", "last", "level", "logger")

    def __init__(self, logger: logging.Logger = log, level: int = logging.WARNING) -> None:
        self.count = 0
        self.last = -math.inf
        self.logger = logger
        self.level = level

    def __call__(self, message: str, *args: object) -> None:
        self.count += 1
        now = trio.current_time()
        if now - self.last >= WARN_INTERVAL:
            self.logger.log(self.level, message + " (%d times since this was last logged)",
                            *args, self.count)
            self.count = 0
            self.last = now


# ---------------------------------------------------------------------------- the server


class Server:
    def __init__(self, app: ASGIApp, max_body: int,
                 max_connections: int = MAX_CONNECTIONS,
                 response_budget: int = RESPONSE_BUDGET,
                 body_budget: int = BODY_BUDGET) -> None:
        self.app = app
        self.max_body = max_body
        self.max_connections = max_connections
        self.response_budget = response_budget
        self.budget = ResponseBudget(response_budget)
        self.bodies = BodyBudget(body_budget)
        self.stopping = False
        self.connections: set[Connection] = set()
        """Connections counted against ``max_connections`` (not those evicted)."""
        self.refusing = 0
        """Connections being answered 503 (each a task, REFUSING_MAX at most)."""
        self.accept_failed = Throttled()
        self.refused = Throttled()
        self.evicted = Throttled()
        self.busy = Throttled()
        self.preempting = Throttled()

    async def accept(self, listener: trio.abc.Listener[Any],
                     nursery: trio.Nursery) -> None:
        """Accept connections from ``listener`` and serve each in ``nursery``, until cancelled.

        Our own loop rather than ``trio.serve_listeners``: it counts connections before
        their tasks start (a burst cannot pass the cap), makes room at the cap, and
        reports accept errors without a traceback each.
        """
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                        raise
                    # Out of file descriptors (or memory): the connection waits in the
                    # listen backlog.  Closing a connection we would close at the cap
                    # frees a descriptor for it.
                    self.accept_failed("accept failed: %s, with %d connections open; "
                                       "retrying every %g s", exc, len(self.connections),
                                       ACCEPT_RETRY_DELAY)
                    self.evict(f"accept failed ({errno.errorcode.get(exc.errno or 0)})")
                    await trio.sleep(ACCEPT_RETRY_DELAY)
                    continue
                if len(self.connections) >= self.max_connections and not self.evict(
                    f"max_connections ({self.max_connections}) reached"
                ):
                    self.refused("max_connections (%d) reached with every connection busy: "
                                 "new connections get 503", self.max_connections)
                    if self.refusing < REFUSING_MAX:
                        self.refusing += 1
                        nursery.start_soon(self.refuse, stream)
                    else:  # a flood: no task more, the connection reset
                        await trio.aclose_forcefully(stream)
                    continue
                conn = Connection(self, stream)
                self.connections.add(conn)
                nursery.start_soon(self.handle, conn)

    def evict(self, why: str) -> bool:
        """Close the connection that has waited longest on its client; False if none does.

        Idle, new and closing connections go first (nothing is lost), then the oldest slow
        head or body (a slow client, or an attacker holding the connection open).  A
        connection inside the app (but for a body read) or on a websocket is never taken.
        """
        victim = None
        best = (2, math.inf)
        for conn in self.connections:
            if conn.waiting is None and not conn.fresh:
                continue
            key = (0 if conn.wait_kind <= WAIT_CLOSING else 1, conn.since)
            if key < best:
                best, victim = key, conn
        if victim is None:
            return False
        self.drop(victim)
        self.evicted("%s: closed the connection that waited longest on its client (%s) to "
                     "make room", why, "a slow request" if best[0] else "idle")
        return True

    def drop(self, conn: Connection) -> None:
        """End ``conn`` from outside its task (at the cap, for a budget): it no longer
        counts against ``max_connections``, its reads and sends give up (``evicted``: no
        lingering close), and a wait on its client ends now."""
        self.connections.discard(conn)
        conn.evicted = True
        if conn.waiting is not None:
            conn.waiting.cancel()

    def evict_stalled_body(self, conn: Connection) -> None:
        """Close ``conn``, whose client stalled in a large body while the body budget is
        spent (:meth:`._budget.BodyBudget.wait`): its request is dropped unanswered."""
        self.drop(conn)
        self.bodies.evicted += 1
        self.evicted("body budget (%d bytes) spent: closed a connection whose client "
                     "stalled in its body for %g s, to make room", self.bodies.limit,
                     _budget.GRACE)

    async def refuse(self, stream: trio.abc.HalfCloseableStream) -> None:
        """Answer 503 and close: every connection is busy in the app.  The request is
        read and dropped for a moment after the answer (at most REFUSE_LINGER), since
        closing a socket with unread data resets the connection and the client would
        lose the 503."""
        try:
            with trio.move_on_after(REFUSE_LINGER):
                await stream.send_all(error_response(
                    503, f"server busy: {self.max_connections} connections open",
                    b"retry-after: 1\r\n"))
                await stream.send_eof()
                dropped = 0
                while dropped < READ_SIZE:
                    data = await stream.receive_some(READ_SIZE)
                    if not data:
                        break
                    dropped += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.refusing -= 1
            await trio.aclose_forcefully(stream)

    @property
    def held_bytes(self) -> int:
        """Bytes of large responses being sent now, counted against ``response_budget``
        (see :meth:`send_large`)."""
        return self.budget.held

    @property
    def responses_refused(self) -> int:
        """Large responses answered 503 for the budget, since the start."""
        return self.budget.refused

    @property
    def responses_preempted(self) -> int:
        """Large responses whose clients fell behind, reset to make room, since the start."""
        return self.budget.preempted

    async def send_large(self, req: HttpRequest, head: bytes, body: bytes) -> None:
        """Send the response to ``req``, ``head`` then ``body`` (of ``LARGE_RESPONSE``
        bytes or more, written as the app gave it: no copy joined to its head), counted
        in :attr:`held_bytes` until it has been written or the connection has failed (a
        timeout, an eviction, a cancellation: the ``finally``).

        If the count would pass ``response_budget``, held responses whose clients have
        fallen behind make room (:meth:`._budget.ResponseBudget.admit`: their connections
        are reset); if they cannot, the response is dropped and the request answered 503
        with ``Retry-After`` and ``connection: close`` (:attr:`responses_refused` counts
        them).  A response that waited for room instead would still hold its body while it
        waits, so that the budget would bound nothing; dropping it frees the memory at
        once.
        """
        budget = self.budget
        preempted = budget.preempted
        # (the answer to a request that may have changed something always goes out)
        must = req.method not in ("GET", "HEAD")
        hold = budget.admit(req.conn, len(head) + len(body), must=must)
        if hold is None:
            await self._refuse_large(req)
            return
        if budget.preempted != preempted:
            self.preempting("response_budget (%d bytes) reached: reset %d connections whose "
                            "clients fell behind reading large responses (%g s), to make room",
                            self.response_budget, budget.preempted - preempted, BUDGET_GRACE)
        try:
            await req.conn.send(head, hold)
            await req.conn.send(body, hold)
        finally:
            budget.release(hold)

    async def _refuse_large(self, req: HttpRequest) -> None:
        held = self.budget.held
        self.busy("response_budget (%d bytes) reached: %d bytes of responses wait for "
                  "their clients to read them; large responses get 503",
                  self.response_budget, held)
        req.keep_alive = False  # the connection closes after the refusal
        req.status = 503  # what the access log shows (the app's status was not sent)
        refusal = error_response(
            503, f"server busy: {held} bytes of responses are waiting for their clients "
                 f"to read them (response budget {self.response_budget}); retry later",
            RESPONSE_RETRY_AFTER)
        # Written now or never, and with no schedule point: the app and the request
        # hold the dropped body until this returns, and every request that runs before
        # this task does again would hold its own (uncounted): a refusal that yielded
        # let a crowd of clients asking for large pages keep one built page each alive
        # (300 of them: 1.2 GB).  Returning at once, the app lets go of the body before
        # the task's next schedule point (the connection's close).  A socket takes these
        # few hundred bytes at once unless its client has stopped reading; then it gets
        # part of them, or none, and the close.  (A stream that is not a plain POSIX
        # socket takes nothing without a schedule point: it gets a moment.)
        req.parts.clear()
        sock = req.conn.direct
        if sock is not None:
            with contextlib.suppress(OSError):  # (BlockingIOError: the client reads nothing)
                os_write(sock.fileno(), refusal)
            return
        with trio.move_on_after(REFUSE_LINGER):
            await req.conn.send(refusal)

    async def handle(self, conn: Connection) -> None:
        try:
            await conn.run()
            if conn.linger and not conn.evicted:
                await conn.close_slowly()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            log.exception("error on an HTTP connection")
        finally:
            self.connections.discard(conn)
            if conn.counted:  # bodies of requests never served (pipelined, refused)
                self.bodies.give_back(conn, conn.counted)
            await trio.aclose_forcefully(conn.stream)

    def stop(self) -> None:
        self.stopping = True
        for conn in self.connections:
            if conn.waiting is not None and conn.wait_kind <= WAIT_CLOSING:
                conn.waiting.cancel()


def check_count(name: str, value: object, least: int, most: int | None = None) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is an integer (not a bool) of
    at least ``least`` (and at most ``most``): the server's limits, given to
    :func:`serve_lean` or to ``ServerSettings``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least or (
            most is not None and value > most):
        expected = f">= {least}" if most is None else f"{least}..{most}"
        raise ValueError(f"{name}: expected an integer {expected}, got {value!r}")


def open_file_limit(wanted: int) -> int | None:
    """The soft limit on open files of this process, first raised towards ``wanted``
    as far as the hard limit allows (as Go's runtime does at start: the soft limit is a
    default of 1024 on many systems, a leftover of select(), which Trio does not use).
    ``None`` if unlimited or unknown."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not Unix
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if raised > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
                soft = raised
            except (OSError, ValueError, OverflowError):  # not allowed here, or past a C long
                pass
    return None if soft == resource.RLIM_INFINITY else soft


async def serve_lean(
    app: ASGIApp,
    host: str,
    port: int,
    *,
    max_body: int,
    user_timeout_ms: int = 0,
    max_connections: int = MAX_CONNECTIONS,
    response_budget: int = RESPONSE_BUDGET,
    body_budget: int = BODY_BUDGET,
    shutdown_trigger: Callable[[], Awaitable[object]],
    listeners: list[trio.SocketListener] | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``host:port`` until ``shutdown_trigger`` returns, then stop.

    ``listeners``: sockets bound already (``trio.open_tcp_listeners``), served instead of
    binding ``host:port`` (which are then unused), so that a caller can find a port in
    use before it starts anything else; they are closed when this returns.

    ``task_status.started`` gets the base URL (``http://HOST:PORT``, the actual port).
    ``user_timeout_ms`` sets ``TCP_USER_TIMEOUT`` (Linux) on the listening sockets, which
    accepted ones inherit: a peer that accepts no data that long is disconnected.
    ``max_connections`` caps the connections open at once (see the module docstring for
    what happens past it).  The soft open-file limit is raised to fit it (up to the hard
    limit); a cap that still does not fit is lowered to the limit less
    :data:`FD_RESERVE`, so that slow clients meet the cap, not ``EMFILE``.
    ``response_budget`` bounds the bytes of large responses held at once for their
    clients (:meth:`Server.send_large`), ``body_budget`` those of large request bodies
    (:class:`._budget.BodyBudget`).
    """
    check_count("max_connections", max_connections, 1)
    check_count("user_timeout_ms", user_timeout_ms, 0, MAX_USER_TIMEOUT_MS)
    check_count("response_budget", response_budget, 0)
    check_count("body_budget", body_budget, 0)
    limit = open_file_limit(max_connections + FD_RESERVE)
    if limit is not None and max_connections > limit - FD_RESERVE:
        capped = max(1, limit - FD_RESERVE)
        log.warning("max_connections %d does not fit the open-file limit of %d (less %d for "
                    "the rest of the process): using %d; raise the limit (ulimit -n, "
                    "LimitNOFILE= under systemd) to allow more", max_connections, limit,
                    FD_RESERVE, capped)
        max_connections = capped
    if listeners is None:
        listeners = await trio.open_tcp_listeners(port, host=host)
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    for listener in listeners:
        sock = listener.socket
        if option is not None and user_timeout_ms > 0 and sock.family in (
            socket.AF_INET, socket.AF_INET6
        ):
            sock.setsockopt(socket.IPPROTO_TCP, option, user_timeout_ms)
    name = listeners[0].socket.getsockname()
    bound = f"[{name[0]}]" if ":" in name[0] else name[0]
    url = f"http://{bound}:{name[1]}"
    server = Server(app, max_body, max_connections, response_budget, body_budget)
    async with trio.open_nursery() as connections:
        async with trio.open_nursery() as accepting:
            for listener in listeners:  # each closed when its accept loop ends
                accepting.start_soon(server.accept, listener, connections)
            task_status.started(url)
            await shutdown_trigger()
            accepting.cancel_scope.cancel()
        server.stop()
        connections.cancel_scope.deadline = trio.current_time() + GRACEFUL_TIMEOUT
