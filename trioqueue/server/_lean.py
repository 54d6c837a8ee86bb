"""A lean HTTP/1.1 (and websocket) server for the ASGI app, on plain Trio streams.

It does only what the app needs, at a fraction of a generic ASGI server's cost per
request: one task per connection, keep-alive, one ``send_all`` per response, and
websockets (``/events``) through wsproto on the same port.  Requests are parsed by
httptools (llhttp, the parser of Node.js, as uvicorn uses it) with none of its
leniencies, fed the bytes as they come; this module adds only the checks llhttp does not
make, and the limits.

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
- Deadlines: an idle keep-alive connection closes after :data:`KEEP_ALIVE_TIMEOUT`; a
  request head must be complete within :data:`HEAD_TIMEOUT` of its first byte (else 408);
  a body within :data:`BODY_TIMEOUT` in all (not per read) of the app's first wait for it
  (else 408).
- Sizes: a head at :data:`MAX_HEAD` bytes and :data:`MAX_HEADERS` fields (431); chunk
  framing and trailers, the bytes of a body that carry no data, at :data:`MAX_HEAD` (400);
  the body at ``max_body`` (413 from the app, and here as a backstop); a websocket message
  at :data:`WS_MAX_MESSAGE` (close 1009).
- Connections: at most ``max_connections`` open at once.  A new connection past the cap
  takes the place of the one that has waited longest on its client (an idle keep-alive
  connection or one closing first, then the oldest slow head or body), which is closed;
  only when every connection is busy in the app (or a websocket) is the new one answered
  503 and closed at once.  So slow or idle clients cannot keep ``/healthz`` from an
  answer (they would, were new connections left to wait), and a refusal costs no task.
  The soft open-file limit is raised to fit the cap (up to the hard limit); a cap that
  still does not fit is kept under it (less :data:`FD_RESERVE`).  Accept errors
  (``EMFILE``...) close a connection as at the cap and are logged as one warning per
  :data:`WARN_INTERVAL` with a count, never a traceback per connection.
- Shutdown: when ``shutdown_trigger`` returns, listening stops, idle connections close,
  requests in progress finish (each then closes), and whatever is left after
  :data:`GRACEFUL_TIMEOUT` is cancelled.

The ASGI scope has the fields Hypercorn gave (``type``, ``asgi``, ``http_version``,
``method``, ``scheme``, ``path``, ``raw_path``, ``query_string``, ``root_path``,
``headers`` as lower-cased byte pairs, ``client``, ``server``, ``extensions``).
"""

from __future__ import annotations

import errno
import json
import logging
import math
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import trio
from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)

from ._http import ASGIApp, Message, Scope

log = logging.getLogger("trioqueue.http")


KEEP_ALIVE_TIMEOUT = 5.0
"""Seconds an idle keep-alive connection is kept (Hypercorn's default too)."""
HEAD_TIMEOUT = 10.0
"""Seconds from the first byte of a request head to its end (else 408 and the close)."""
BODY_TIMEOUT = 30.0
"""Seconds, in all, for a request body once the app waits for it (else 408)."""
GRACEFUL_TIMEOUT = 5.0
"""Seconds requests in progress get once the server begins to stop."""
MAX_CONNECTIONS = 1000
"""Default of ``serve_lean(max_connections=)``: connections open at once."""
MAX_HEAD = 64 * 1024
"""Bytes of a request head; also of a body's chunk framing and trailers in a row."""
MAX_HEADERS = 100
"""Header fields of a request (and trailer fields of a chunked body)."""
READ_SIZE = 65536
WS_MAX_MESSAGE = 64 * 1024
LINGER_TIMEOUT = 2.0
LINGER_MAX = 16 * 1024 * 1024
"""After a closing response, what the peer still sends is read (and dropped) that long."""
WS_CLOSE_TIMEOUT = 2.0
"""Seconds to wait for the peer's close frame after ours before hanging up."""
WARN_INTERVAL = 10.0
"""At most one warning this often for each kind of refused or failed connection."""
ACCEPT_RETRY_DELAY = 0.1
"""Seconds between accept attempts while the process is out of file descriptors."""
FD_RESERVE = 64
"""File descriptors left to the rest of the process when the open-file limit (soft
``RLIMIT_NOFILE``) caps ``max_connections``."""

_ACCEPT_CAPACITY_ERRNOS = frozenset(
    getattr(errno, name) for name in ("EMFILE", "ENFILE", "ENOMEM", "ENOBUFS")
    if hasattr(errno, name)
)
_HTTP_ASGI = {"spec_version": "2.1", "version": "3.0"}
_WS_ASGI = {"spec_version": "2.3", "version": "3.0"}
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_METHODS = {m.encode(): m for m in ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS",
                                    "PATCH")}
_WATCHED = frozenset((b"host", b"transfer-encoding", b"content-length", b"expect",
                      b"upgrade"))
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

# What a connection waits for, when it waits on its client (for eviction at the cap).
_IDLE = 0  # the next request, nothing of it received
_CLOSING = 1  # the peer's end after our closing response
_HEAD = 2  # the rest of a request head
_BODY = 3  # the rest of a request body


class BadRequest(Exception):
    """A request this server will not serve: answered with ``status``, then the close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


_EVICTED = BadRequest(503, "closed to make room for a new connection")
"""The error of a request whose connection was closed at the cap: nothing is sent."""

_date_cache: tuple[int, bytes] = (0, b"")


def _date() -> bytes:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode())
    return _date_cache[1]


def _error_response(status: int, message: str, extra: bytes = b"") -> bytes:
    body = json.dumps({"error": message}, separators=(",", ":")).encode()
    return b"".join((
        b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"")),
        b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body),
        extra,
        b"date: " + _date() + b"\r\nconnection: close\r\n\r\n",
        body,
    ))


def _address(addr: Any) -> tuple[str, int] | None:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return (str(addr[0]), int(addr[1]))
    return None


class _BodyTooLarge(Exception):
    pass


class _Throttled:
    """A warning logged at most once per :data:`WARN_INTERVAL`, with how often it happened."""

    __slots__ = ("count", "last")

    def __init__(self) -> None:
        self.count = 0
        self.last = -math.inf

    def __call__(self, message: str, *args: object) -> None:
        self.count += 1
        now = trio.current_time()
        if now - self.last >= WARN_INTERVAL:
            log.warning(message + " (%d times since this was last logged)", *args, self.count)
            self.count = 0
            self.last = now


# ---------------------------------------------------------------------------- the server


class _Server:
    def __init__(self, app: ASGIApp, max_body: int,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        self.app = app
        self.max_body = max_body
        self.max_connections = max_connections
        self.stopping = False
        self.connections: set[_Connection] = set()
        """Connections counted against ``max_connections`` (not those evicted)."""
        self.accept_failed = _Throttled()
        self.refused = _Throttled()
        self.evicted = _Throttled()

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
                    await self._refuse(stream)
                    continue
                conn = _Connection(self, stream)
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
            key = (0 if conn.wait_kind <= _CLOSING else 1, conn.since)
            if key < best:
                best, victim = key, conn
        if victim is None:
            return False
        self.connections.discard(victim)
        victim.evicted = True
        if victim.waiting is not None:
            victim.waiting.cancel()
        self.evicted("%s: closed the connection that waited longest on its client (%s) to "
                     "make room", why, "a slow request" if best[0] else "idle")
        return True

    async def _refuse(self, stream: trio.abc.Stream) -> None:
        """Answer 503 and close at once: every connection is busy in the app."""
        self.refused("max_connections (%d) reached with every connection busy: new "
                     "connections get 503", self.max_connections)
        with trio.move_on_after(1):
            try:
                await stream.send_all(_error_response(
                    503, f"server busy: {self.max_connections} connections open",
                    b"retry-after: 1\r\n"))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        await trio.aclose_forcefully(stream)

    async def handle(self, conn: _Connection) -> None:
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
            await trio.aclose_forcefully(conn.stream)

    def stop(self) -> None:
        self.stopping = True
        for conn in self.connections:
            if conn.waiting is not None and conn.wait_kind <= _CLOSING:
                conn.waiting.cancel()


# ---------------------------------------------------------------------------- requests


class _Request:
    """One request: its head, the body as parsed so far, and the app's response.

    Made by the parser's ``on_message_begin``; ``receive`` and ``send`` are what the app
    is given.
    """

    __slots__ = ("body", "complete", "conn", "continued", "deadline", "delivered", "dropped",
                 "ended", "error", "expect", "has_body", "head_done", "headers", "hosts",
                 "http_version", "keep_alive", "method", "parts", "resp_headers", "rest",
                 "sent", "started", "status", "trailers", "transfer_encoding", "upgrade",
                 "upgrade_to", "url")

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.method = ""
        self.http_version = "1.1"
        self.keep_alive = False
        self.head_done = False
        """The head is parsed and checked: the request can be served."""
        self.complete = False
        """The parser has seen the whole message (the body up to its end)."""
        self.error: BadRequest | None = None
        """Why the request (or its body) cannot be read: answered, then the close."""
        self.body: list[bytes] = []
        """Body bytes parsed and not yet given to the app."""
        self.hosts = 0
        self.trailers = 0
        self.expect: bytes | None = None
        self.has_body = False
        self.transfer_encoding: bytes | None = None
        self.upgrade_to = b""
        self.upgrade = False
        self.rest = b""
        """After an upgrade, the bytes that came after the head."""
        self.continued = True
        """No ``100 Continue`` is owed (none was asked for, or it was sent)."""
        self.deadline = -math.inf
        self.delivered = 0
        self.ended = False
        """The app has been given the last ``http.request`` message."""
        self.started = False
        self.sent = False
        self.dropped = False
        """The server answered for this request: what the app sends is dropped."""
        self.status = 500
        self.resp_headers: list[tuple[bytes, bytes]] = []
        self.parts: list[bytes] = []

    @property
    def ready(self) -> bool:
        return self.head_done or self.error is not None

    # ------------------------------------------------------------------ to the app

    async def receive(self) -> Message:
        if self.ended or self.sent:  # after the response, nothing more is read
            return {"type": "http.disconnect"}
        if self.delivered > self.conn.server.max_body:
            raise _BodyTooLarge
        if not self.body and not self.complete and self.error is None:
            await self.conn.wait_body(self)
        if self.error is not None:
            return await self._broken()
        body = self.body
        data = body[0] if len(body) == 1 else b"".join(body)
        body.clear()
        self.delivered += len(data)
        self.ended = self.complete
        return {"type": "http.request", "body": data, "more_body": not self.complete}

    async def _broken(self) -> Message:
        """The body cannot be read: answer for the app (unless evicted), end the request."""
        self.ended = True
        self.keep_alive = False
        error = self.error
        if not self.sent:
            self.started = self.sent = self.dropped = True
            if error is not _EVICTED and error is not None:
                try:
                    await self.conn.stream.send_all(_error_response(error.status,
                                                                    error.message))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
        return {"type": "http.disconnect"}

    # ------------------------------------------------------------------ from the app

    async def send(self, message: Message) -> None:
        if self.dropped:
            return
        kind = message["type"]
        if kind == "http.response.start" and not self.started:
            self.started = True
            self.status = int(message["status"])
            self.resp_headers = list(message.get("headers", ()))
        elif kind == "http.response.body" and self.started and not self.sent:
            self.parts.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                self.sent = True
                await self.conn.stream.send_all(self._encode())
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")

    def _encode(self) -> bytes:
        status = self.status
        body = self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)
        out = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b""))]
        has_length = said_close = False
        for name, value in self.resp_headers:
            low = name.lower()
            if low == b"content-length":
                has_length = True
            elif low == b"connection" and b"close" in value.lower():
                said_close = True
            out.append(b"%s: %s\r\n" % (name, value))
        no_body = status < 200 or status in (204, 304)
        if not has_length and not no_body:
            out.append(b"content-length: %d\r\n" % len(body))
        # The connection goes on only if the app did not end it, the server is not
        # stopping, and the whole request has been parsed: the unread rest of a body is
        # never read from the socket (its sender may be nobody we want to hear from).
        if said_close or self.conn.server.stopping or not self.complete:
            self.keep_alive = False
        if not self.keep_alive and not said_close:
            out.append(b"connection: close\r\n")
        elif self.keep_alive and self.http_version == "1.0":
            out.append(b"connection: keep-alive\r\n")
        out.append(b"date: " + _date() + b"\r\n\r\n")
        if self.method != "HEAD" and not no_body:
            out.append(body)
        return b"".join(out)


# ---------------------------------------------------------------------------- connections


class _Connection:
    """One connection: the parser's callbacks, the requests it found, the loop serving them.

    The parser is fed only when a request needs more bytes (its head, or its body when
    the app asks), so what is buffered is at most one read ahead of the app.  Requests are
    queued in ``pending`` in order; a parse error is recorded on the request it broke and
    stops the parser for good, so it is answered in its turn and nothing after it is read.
    """

    def __init__(self, server: _Server, stream: trio.abc.HalfCloseableStream) -> None:
        self.server = server
        self.stream = stream
        self.parser = HttpRequestParser(self)
        # llhttp's defaults, said out loud: none of its leniencies (they are how requests
        # get smuggled).  httptools < 0.6.3 has no such call: it bundles llhttp 8, which
        # is lenient and has known smuggling bugs (CVE-2024-27982).
        self.parser.set_dangerous_leniencies(
            lenient_headers=False, lenient_chunked_length=False, lenient_keep_alive=False,
            lenient_transfer_encoding=False, lenient_version=False,
            lenient_data_after_close=False, lenient_optional_lf_after_cr=False,
            lenient_optional_cr_before_lf=False, lenient_optional_crlf_after_chunk=False,
            lenient_spaces_after_chunk_size=False)
        self.pending: deque[_Request] = deque()
        self.current: _Request | None = None
        """The request the parser is in (from its first byte to its end)."""
        self.stopped = False
        """The parser takes no more bytes: after an error, or an upgrade (until resumed)."""
        self.upgrading: _Request | None = None
        self.progress = False
        """Since the last feed began, the parser completed a head, body bytes or a message."""
        self.quiet = 0
        """Bytes fed in a row that completed no head and carried no body bytes."""
        self.head_started: float | None = None
        self.buf = bytearray()
        """Bytes after a websocket handshake, for wsproto."""
        self.linger = False
        """The connection ends after a response: read what the peer still sends."""
        self.evicted = False
        self.waiting: trio.CancelScope | None = None
        """The scope of a read from the client, while waiting on it (see ``_Server.evict``)."""
        self.wait_kind = _IDLE
        self.since = trio.current_time()
        self.fresh = True
        """Accepted, not read from yet: as good as idle for eviction."""
        sock = getattr(stream, "socket", None)
        try:
            self.client = _address(sock.getpeername()) if sock is not None else None
            self.local = _address(sock.getsockname()) if sock is not None else None
        except OSError:
            self.client = self.local = None

    # ------------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        req = self.current = _Request(self)
        self.pending.append(req)

    def on_url(self, url: bytes) -> None:
        req = self.current
        assert req is not None
        req.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self.current
        assert req is not None
        headers = req.headers
        if req.head_done:  # a trailer of a chunked body: checked by llhttp, then dropped
            req.trailers += 1
            if req.trailers > MAX_HEADERS:
                raise self._reject(400, f"trailers: more than {MAX_HEADERS}")
            return
        if len(headers) >= MAX_HEADERS:
            raise self._reject(431, f"headers: more than {MAX_HEADERS}")
        name = name.lower()
        if value and value[-1] in b" \t":
            value = value.rstrip(b" \t")
        headers.append((name, value))
        if name in _WATCHED:
            if name == b"host":
                req.hosts += 1
            elif name == b"transfer-encoding":
                req.has_body = True
                te = req.transfer_encoding
                req.transfer_encoding = value if te is None else te + b", " + value
            elif name == b"content-length":
                req.has_body = req.has_body or value.strip(b"0") != b""
            elif name == b"expect":
                req.expect = value if req.expect is None else req.expect + b", " + value
            else:
                req.upgrade_to = value.lower()

    def on_headers_complete(self) -> None:
        req = self.current
        assert req is not None
        parser = self.parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise self._reject(505, f"HTTP/{version}: only HTTP/1.1 and HTTP/1.0 are "
                                    "supported")
        if req.hosts != 1 and (req.hosts or version == "1.1"):
            raise self._reject(400, "host: missing" if not req.hosts else
                               "host: more than one")
        te = req.transfer_encoding
        if te is not None:
            if version == "1.0":
                raise self._reject(400, "transfer-encoding: not allowed in HTTP/1.0")
            if te.lower() != b"chunked":
                raise self._reject(501, "transfer-encoding: only chunked is supported, got "
                                        f"{te.decode('latin-1')!r}")
        expect = req.expect
        if expect is not None and version == "1.1":  # 1.0: ignored (RFC 9110, 10.1.1)
            if expect.lower() != b"100-continue":
                raise self._reject(417, f"expect: {expect.decode('latin-1')!r} is not "
                                        "supported")
            req.continued = False
        method = parser.get_method()
        req.method = _METHODS.get(method) or method.decode("ascii")
        req.http_version = version
        req.keep_alive = parser.should_keep_alive()
        if parser.should_upgrade():
            req.upgrade = True
            self.upgrading = req
        req.head_done = True
        self.head_started = None
        self.progress = True

    def on_body(self, body: bytes) -> None:
        req = self.current
        assert req is not None
        req.body.append(body)
        self.progress = True

    def on_message_complete(self) -> None:
        req = self.current
        assert req is not None
        req.complete = True
        self.current = None
        self.progress = True

    def _reject(self, status: int, message: str) -> BadRequest:
        """Record why the current request is refused; raise what this returns."""
        exc = BadRequest(status, message)
        if self.current is not None and self.current.error is None:
            self.current.error = exc
        return exc

    # ------------------------------------------------------------------ feeding

    def _feed(self, data: bytes | bytearray) -> None:
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as exc:
            # The head of an upgrade was parsed (llhttp skips its body, if any); what
            # follows it is not HTTP until we decide so.
            self.stopped = True
            if self.upgrading is not None:
                self.upgrading.rest = bytes(data[exc.args[0]:])
            self.progress = False
            return
        except HttpParserError as exc:
            req = self.current
            if req is None or not req.head_done:
                self._fail(BadRequest(400, f"malformed request: {exc}"))
            else:
                self._fail(BadRequest(400, f"malformed body: {exc}"))
            return
        if self.progress:
            self.progress = False
            self.quiet = 0
            return
        # No head completed and no body bytes: a head in the making, or chunk framing or
        # trailers, which llhttp buffers (a header value) or skips.  Bounded here.
        self.quiet += len(data)
        if self.quiet > MAX_HEAD:
            req = self.current
            if req is None or not req.head_done:
                self._fail(BadRequest(431, f"request head: over {MAX_HEAD} bytes"))
            else:
                self._fail(BadRequest(400, f"body: over {MAX_HEAD} bytes of chunk framing "
                                           "and trailers"))

    def _fail(self, error: BadRequest) -> None:
        """The parser is stopped for good; ``error`` goes to the request it was in."""
        self.stopped = True
        self.progress = False
        req = self.current
        if req is None:  # between requests ("data after Connection: close")
            req = self.current = _Request(self)
            self.pending.append(req)
        if req.error is None:
            req.error = error

    async def _read(self, deadline: float, kind: int, since: float) -> bytes | bytearray | None:
        """Read from the client until ``deadline``; None when that passed or we evicted it."""
        self.fresh = False
        if self.evicted:
            return None
        with trio.move_on_at(deadline) as scope:
            self.waiting = scope
            self.wait_kind = kind
            self.since = since
            try:
                return await self.stream.receive_some(READ_SIZE)
            finally:
                self.waiting = None
        return None

    async def _wait_head(self) -> bool:
        """Read until ``pending[0]`` is ready; False when the connection is to end.

        Waiting for a request's first byte ends quietly after KEEP_ALIVE_TIMEOUT (or at
        shutdown); from the first byte on, the head has HEAD_TIMEOUT in all (else 408).
        """
        pending = self.pending
        idle_deadline: float | None = None
        while not (pending and pending[0].ready):
            if self.stopped:  # pragma: no cover - an error or upgrade leaves a ready request
                return False
            if pending or self.head_started is not None:
                if self.head_started is None:
                    self.head_started = trio.current_time()
                data = await self._read(self.head_started + HEAD_TIMEOUT, _HEAD,
                                        self.head_started)
                if data is None:
                    if not self.evicted:
                        await self.stream.send_all(_error_response(
                            408, f"request head: not received within {HEAD_TIMEOUT:g} s"))
                        self.linger = True
                    return False
            else:
                if self.server.stopping:
                    return False
                if idle_deadline is None:
                    now = trio.current_time()
                    idle_deadline = now + KEEP_ALIVE_TIMEOUT
                data = await self._read(idle_deadline, _IDLE, idle_deadline)
                if data is None:
                    return False
                self.head_started = trio.current_time()
            if not data:
                return False
            self._feed(data)
        return True

    async def wait_body(self, req: _Request) -> None:
        """Read until ``req`` has body bytes, is complete, or has an error (set here on a
        deadline, an EOF or an eviction)."""
        if not req.continued:
            req.continued = True
            await self.stream.send_all(_CONTINUE)
        if req.deadline == -math.inf:
            req.deadline = trio.current_time() + BODY_TIMEOUT
        while not req.body and not req.complete and req.error is None:
            if self.stopped:  # pragma: no cover - an error would be on req
                req.error = BadRequest(400, "body: not readable")
                return
            try:
                data = await self._read(req.deadline, _BODY, req.deadline - BODY_TIMEOUT)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if data is None:
                req.error = _EVICTED if self.evicted else BadRequest(
                    408, f"body: not received within {BODY_TIMEOUT:g} s")
            elif not data:
                req.error = BadRequest(400, "body: the connection ended before the body")
            else:
                self._feed(data)

    async def close_slowly(self) -> None:
        """Close after a response the peer may still be sending to (a 413, an error).

        Closing a socket with unread data resets the connection, and the peer may lose the
        response; so shut down our side, then read and drop what comes for a moment (at
        most LINGER_TIMEOUT in all; an evictable wait).
        """
        await self.stream.send_eof()
        dropped = 0
        deadline = trio.current_time() + LINGER_TIMEOUT
        while dropped < LINGER_MAX:
            data = await self._read(deadline, _CLOSING, -math.inf)
            if not data:
                return
            dropped += len(data)

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        pending = self.pending
        while True:
            if not (pending and pending[0].ready) and not await self._wait_head():
                return
            req = pending.popleft()
            if not req.head_done:
                error = req.error
                assert error is not None
                await self.stream.send_all(_error_response(error.status, error.message))
                self.linger = True
                return
            if req.upgrade:
                if req.method == "GET" and b"websocket" in req.upgrade_to:
                    self.buf += req.rest
                    await _WebSocket(self, req).run()
                    return
                if req.method == "CONNECT":
                    await self.stream.send_all(_error_response(
                        405, "method CONNECT is not supported"))
                    self.linger = True
                    return
                if req.has_body:
                    # llhttp skipped the body of the upgrade: what follows cannot be framed.
                    await self.stream.send_all(_error_response(
                        400, "upgrade: only websocket is supported, got "
                             f"{req.upgrade_to.decode('latin-1')!r} with a body"))
                    self.linger = True
                    return
            if not await self._http(req):
                self.linger = True
                return
            if req.upgrade:  # served as plain HTTP (the offer ignored): parse on
                self.stopped = False
                self.upgrading = None
                self._feed(req.rest)

    async def _http(self, req: _Request) -> bool:
        """Answer one request; True if the connection may serve another."""
        raw_path, _, query_string = req.url.partition(b"?")
        path = raw_path.decode("ascii")  # llhttp allows only ASCII in a target
        if "%" in path:
            path = unquote(path)
        scope: Scope = {
            "type": "http",
            "asgi": _HTTP_ASGI,
            "http_version": req.http_version,
            "method": req.method,
            "scheme": "http",
            "path": path,
            "raw_path": raw_path,
            "query_string": query_string,
            "root_path": "",
            "headers": req.headers,
            "client": self.client,
            "server": self.local,
            "extensions": {},
        }
        try:
            await self.server.app(scope, req.receive, req.send)
        except _BodyTooLarge:
            if not req.sent:
                await self.stream.send_all(_error_response(
                    413, f"body: over the limit of {self.server.max_body} bytes"))
            return False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise
        except Exception:
            log.exception("error in the app answering %s %s", req.method, path)
            if not req.sent:
                await self.stream.send_all(_error_response(500, "internal server error"))
            return False
        if not req.sent:
            log.error("the app sent no response to %s %s", req.method, path)
            await self.stream.send_all(_error_response(500, "internal server error"))
            return False
        return req.keep_alive and not req.dropped

    def hang_up(self) -> None:
        """Close the socket now: wakes a task reading this connection."""
        sock = getattr(self.stream, "socket", None)
        if sock is not None:
            sock.close()


class _WebSocket:
    """One websocket connection: wsproto on the stream, ASGI messages to the app."""

    def __init__(self, conn: _Connection, request: _Request) -> None:
        self.conn = conn
        self.request = request
        self.ws = WSConnection(ConnectionType.SERVER)
        self.state = "handshake"  # then "connected", "closed" (by us or the peer)
        self.connect_sent = False
        self.peer_closed = False
        self.close_code = 1006
        self.pending: deque[Message] = deque()
        self.message: list[str] | list[bytes] | None = None
        self.message_size = 0
        self.lock = trio.Lock()
        self.broken = False

    async def run(self) -> None:
        conn = self.conn
        request = self.request
        try:
            self.ws.initiate_upgrade_connection(request.headers, request.url)
            handshake = next(self.ws.events(), None)
            if not isinstance(handshake, Request):
                raise ValueError("no websocket request")
        except Exception as exc:
            await conn.stream.send_all(_error_response(400, f"bad websocket request: {exc}"))
            return
        raw_path, _, query_string = request.url.partition(b"?")
        scope: Scope = {
            "type": "websocket",
            "asgi": _WS_ASGI,
            "http_version": request.http_version,
            "scheme": "ws",
            "path": unquote(raw_path.decode("ascii")),
            "raw_path": raw_path,
            "query_string": query_string,
            "root_path": "",
            "headers": request.headers,
            "client": conn.client,
            "server": conn.local,
            "subprotocols": list(handshake.subprotocols),
            "extensions": {"websocket.http.response": {}},
        }
        try:
            await conn.server.app(scope, self.receive, self.send)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        except Exception:
            log.exception("error in the app on websocket %s", scope["path"])
            if self.state == "handshake":
                await self._write(_error_response(500, "internal server error"))
                return
            if self.state == "connected":
                await self._close(1011, "internal error")
        if self.state == "handshake":  # the app neither accepted nor refused
            await self._write(_error_response(500, "internal server error"))
            return
        if self.state == "connected":  # the app returned without closing
            await self._close(1000, "")
        # Wait (briefly) for the peer's close frame, so that it reads ours before the
        # connection goes: closing with unread data would reset it.
        with trio.move_on_after(WS_CLOSE_TIMEOUT):
            while not self.peer_closed and not self.broken:
                await self._read_events()

    # ------------------------------------------------------------------ to the app

    async def receive(self) -> Message:
        if not self.connect_sent:
            self.connect_sent = True
            return {"type": "websocket.connect"}
        while True:
            if self.pending:
                return self.pending.popleft()
            if self.peer_closed or self.broken:
                return {"type": "websocket.disconnect", "code": self.close_code}
            await self._read_events()

    async def _read_events(self) -> None:
        """Read from the peer once and turn what came into pending ASGI messages."""
        buf = self.conn.buf
        data: bytes | bytearray
        if buf:
            data = bytes(buf)
            buf.clear()
        else:
            try:
                data = await self.conn.stream.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
        if not data:
            self.peer_closed = True
            self.ws.receive_data(None)
            return
        self.ws.receive_data(bytes(data))
        for event in self.ws.events():
            if isinstance(event, (TextMessage, BytesMessage)):
                self.message_size += len(event.data)
                if self.message_size > WS_MAX_MESSAGE:
                    await self._close(1009, "message too big")
                    self.peer_closed = True  # read no more from this peer
                    self.close_code = 1009
                    return
                if self.message is None:
                    self.message = []
                self.message.append(event.data)  # type: ignore[arg-type]
                if event.message_finished:
                    if isinstance(event, TextMessage):
                        text = "".join(self.message)  # type: ignore[arg-type]
                        self.pending.append({"type": "websocket.receive", "text": text})
                    else:
                        data = b"".join(self.message)  # type: ignore[arg-type]
                        self.pending.append({"type": "websocket.receive", "bytes": data})
                    self.message = None
                    self.message_size = 0
            elif isinstance(event, Ping):
                await self._write(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self.close_code = event.code
                self.peer_closed = True
                if self.ws.state is ConnectionState.REMOTE_CLOSING:
                    await self._write(self.ws.send(event.response()))
                self.state = "closed"
                return

    # ------------------------------------------------------------------ from the app

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "websocket.accept" and self.state == "handshake":
            self.state = "connected"
            extra = [(bytes(k), bytes(v)) for k, v in message.get("headers", ())]
            await self._write(self.ws.send(AcceptConnection(
                subprotocol=message.get("subprotocol"), extra_headers=extra)))
        elif kind == "websocket.close" and self.state == "handshake":
            self.state = "closed"
            self.peer_closed = True
            await self._write(_error_response(403, "websocket refused"))
        elif kind == "websocket.send":
            if self.state != "connected":
                return  # the peer went away: the app may still finish
            if message.get("bytes") is not None:
                await self._write(self.ws.send(BytesMessage(data=bytes(message["bytes"]))))
            else:
                await self._write(self.ws.send(TextMessage(data=str(message["text"]))))
        elif kind == "websocket.close":
            if self.state == "connected":
                await self._close(int(message.get("code", 1000)), message.get("reason") or "")
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} in state {self.state}")

    async def _close(self, code: int, reason: str) -> None:
        self.state = "closed"
        if self.ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            await self._write(self.ws.send(CloseConnection(code=code, reason=reason)))

    async def _write(self, data: bytes) -> None:
        """Send ``data``; a send that fails or is cancelled part way ends the connection."""
        if self.broken:
            return
        async with self.lock:
            try:
                await self.conn.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._break()
            except BaseException:
                self._break()  # a frame may be half sent: nothing more can follow it
                raise

    def _break(self) -> None:
        self.broken = True
        self.state = "closed"
        self.conn.hang_up()


def _open_file_limit(wanted: int) -> int | None:
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
            except (OSError, ValueError):  # pragma: no cover - not allowed here
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
    shutdown_trigger: Callable[[], Awaitable[object]],
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``host:port`` until ``shutdown_trigger`` returns, then stop.

    ``task_status.started`` gets the base URL (``http://HOST:PORT``, the actual port).
    ``user_timeout_ms`` sets ``TCP_USER_TIMEOUT`` (Linux) on the listening sockets, which
    accepted ones inherit: a peer that accepts no data that long is disconnected.
    ``max_connections`` caps the connections open at once (see the module docstring for
    what happens past it).  The soft open-file limit is raised to fit it (up to the hard
    limit); a cap that still does not fit is lowered to the limit less
    :data:`FD_RESERVE`, so that slow clients meet the cap, not ``EMFILE``.
    """
    if isinstance(max_connections, bool) or not isinstance(max_connections, int) or (
        max_connections < 1
    ):
        raise ValueError(f"max_connections: expected an integer >= 1, got {max_connections!r}")
    limit = _open_file_limit(max_connections + FD_RESERVE)
    if limit is not None and max_connections > limit - FD_RESERVE:
        capped = max(1, limit - FD_RESERVE)
        log.warning("max_connections %d does not fit the open-file limit of %d (less %d for "
                    "the rest of the process): using %d; raise the limit (ulimit -n, "
                    "LimitNOFILE= under systemd) to allow more", max_connections, limit,
                    FD_RESERVE, capped)
        max_connections = capped
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
    server = _Server(app, max_body, max_connections)
    async with trio.open_nursery() as connections:
        async with trio.open_nursery() as accepting:
            for listener in listeners:  # each closed when its accept loop ends
                accepting.start_soon(server.accept, listener, connections)
            task_status.started(url)
            await shutdown_trigger()
            accepting.cancel_scope.cancel()
        server.stop()
        connections.cancel_scope.deadline = trio.current_time() + GRACEFUL_TIMEOUT
