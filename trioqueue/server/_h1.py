"""HTTP/1.1 connections of the lean server: llhttp's callbacks, the checks it does not
make, the limits, and the loop that serves a connection's requests in order (see
:mod:`._lean` for what it speaks)."""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import unquote

import trio
from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

from ._http import Scope, loggable
from ._wire import (
    BODY_COUNTED_FROM,
    EVICTED,
    READ_SIZE,
    WAIT_BODY,
    WAIT_CLOSING,
    WAIT_HEAD,
    WAIT_IDLE,
    WAIT_SEND,
    BadRequest,
    BodyTooLarge,
    HttpRequest,
    check_head,
    error_response,
    peer_address,
)
from ._ws import WebSocket

if TYPE_CHECKING:
    from ._budget import Hold
    from ._lean import Server

log = logging.getLogger("trioqueue.http")

KEEP_ALIVE_TIMEOUT = 5.0
"""Seconds an idle keep-alive connection is kept (Hypercorn's default too)."""
HEAD_TIMEOUT = 10.0
"""Seconds from the first byte of a request head to its end (else 408 and the close)."""
BODY_TIMEOUT = 30.0
"""Seconds, in all, for a request body once the app waits for it (else 408)."""
MAX_HEAD = 64 * 1024
"""Bytes of a request head; also of a body's chunk framing and trailers in a row."""
MAX_HEADERS = 100
"""Header fields of a request (and trailer fields of a chunked body)."""
SEND_TIMEOUT = 30.0
"""Seconds, in all, a response may wait for its client to read it (else the close)."""
LINGER_TIMEOUT = 2.0
LINGER_MAX = 16 * 1024 * 1024
"""After a closing response, what the peer still sends is read (and dropped) that long."""

_HTTP_ASGI = {"spec_version": "2.1", "version": "3.0"}
_METHODS = {m.encode(): m for m in ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS",
                                    "PATCH")}
_WATCHED = frozenset((b"host", b"transfer-encoding", b"content-length", b"expect",
                      b"upgrade"))
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

_DIRECT_IO = os.name == "posix"
"""Whether a socket's bytes are read and written with ``os.read`` and ``os.write`` on its
file descriptor where that need not wait (see :meth:`Connection.send`)."""
_CLOSED_ERRNOS = frozenset((errno.EBADF, errno.ENOTSOCK))
os_read = os.read
os_write = os.write


def stream_error(exc: OSError) -> trio.ClosedResourceError | trio.BrokenResourceError:
    """An error of ``os.read`` or ``os.write`` on a socket as Trio's streams raise it."""
    if exc.errno in _CLOSED_ERRNOS:
        return trio.ClosedResourceError("this socket was already closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")




# ---------------------------------------------------------------------------- connections


class Connection:
    """One connection: the parser's callbacks, the requests it found, the loop serving them.

    The parser is fed only when a request needs more bytes (its head, or its body when
    the app asks), so what is buffered is at most one read ahead of the app.  Requests are
    queued in ``pending`` in order; a parse error is recorded on the request it broke and
    stops the parser for good, so it is answered in its turn and nothing after it is read.
    """

    def __init__(self, server: Server, stream: trio.abc.HalfCloseableStream) -> None:
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
        self.pending: deque[HttpRequest] = deque()
        self.current: HttpRequest | None = None
        """The request the parser is in (from its first byte to its end)."""
        self.stopped = False
        """The parser takes no more bytes: after an error, or an upgrade (until resumed)."""
        self.upgrading: HttpRequest | None = None
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
        self.counted = 0
        """Bytes of this connection's request bodies counted against the server's body
        budget (:class:`._budget.BodyBudget`), given back as each request ends."""
        self.body_at = -math.inf
        """When counted body bytes of this client's were last read (bytes that waited
        unread while the connection waited for room count when they are read)."""
        self.waiting: trio.CancelScope | None = None
        """The scope of a read from the client, while waiting on it (see ``Server.evict``)."""
        self.wait_kind = WAIT_IDLE
        self.since = trio.current_time()
        self.fresh = True
        """Accepted, not read from yet: as good as idle for eviction."""
        sock = getattr(stream, "socket", None)
        self.direct: trio.socket.SocketType | None = (
            sock if _DIRECT_IO and isinstance(stream, trio.SocketStream) else None)
        """The socket, where its reads and writes that need not wait skip the stream."""
        try:
            self.client = peer_address(sock.getpeername()) if sock is not None else None
            self.local = peer_address(sock.getsockname()) if sock is not None else None
        except OSError:
            self.client = self.local = None

    # ------------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        req = self.current = HttpRequest(self)
        self.pending.append(req)

    def on_url(self, url: bytes) -> None:
        req = self.current
        assert req is not None
        req.url += url
        req.head_size += len(url)
        if req.head_size > MAX_HEAD:
            raise self._reject(431, f"request head: over {MAX_HEAD} bytes")

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
        # Counted here as well as by the bytes fed without progress (_feed): a head that
        # ends in the read after the one that passed MAX_HEAD shows no such run.
        req.head_size += len(name) + len(value) + 4
        if req.head_size > MAX_HEAD:
            raise self._reject(431, f"request head: over {MAX_HEAD} bytes")
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
        try:
            check_head(req, version)
        except BadRequest as exc:
            raise self._reject(exc.status, exc.message) from None
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
        req.received += len(body)
        over = req.received - BODY_COUNTED_FROM
        if over > req.counted:  # past the first BODY_COUNTED_FROM: counted
            self.server.bodies.take(self, over - req.counted)
            req.counted = over
            self.body_at = trio.current_time()

    def give_back(self, req: HttpRequest) -> None:
        """``req`` has ended: its counted body bytes leave the body budget."""
        if req.counted:
            self.server.bodies.give_back(self, req.counted)
            req.counted = 0

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
            req = self.current = HttpRequest(self)
            self.pending.append(req)
        if req.error is None:
            req.error = error

    @contextlib.contextmanager
    def waiting_on_client(self, deadline: float, kind: int, since: float
                          ) -> Iterator[trio.CancelScope]:
        """A wait on the client until ``deadline``, of ``kind`` (``WAIT_*``) since
        ``since``: :meth:`Server.evict` may end it at the cap (by cancelling the scope
        this yields, and setting :attr:`evicted`)."""
        with trio.move_on_at(deadline) as scope:
            self.waiting = scope
            self.wait_kind = kind
            self.since = since
            try:
                yield scope
            finally:
                self.waiting = None

    async def _read(self, deadline: float, kind: int, since: float) -> bytes | bytearray | None:
        """Read from the client until ``deadline``; None when that passed or we evicted it."""
        self.fresh = False
        if self.evicted:
            return None
        with self.waiting_on_client(deadline, kind, since):
            if kind == WAIT_IDLE and self.direct is not None:
                # Nothing was there a moment ago (_read_now): wait, then read.
                return await self._read_when_readable(self.direct)
            return await self.stream.receive_some(READ_SIZE)
        return None

    async def _read_when_readable(self, sock: trio.socket.SocketType) -> bytes:
        """``receive_some`` less the ``recv`` that would find nothing again."""
        while True:
            await trio.lowlevel.wait_readable(sock)
            data = self._read_now()
            if data is not None:
                return data

    def _read_now(self) -> bytes | None:
        """What the client has sent already (``b""`` at its EOF), without waiting or
        yielding; None if nothing is there yet (or the socket is not a plain one).

        The read of a keep-alive request that has arrived while the previous response
        went out: under load, nearly every one.  Trio's ``receive_some`` would cost a
        schedule point and its wrappers on top of the ``recv``; the schedule point each
        request needs is the one after its response (:meth:`send`).
        """
        sock = self.direct
        if sock is None or self.evicted:
            return None
        try:
            data = os_read(sock.fileno(), READ_SIZE)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise stream_error(exc) from exc
        self.fresh = False
        return data

    async def send(self, data: bytes, hold: Hold | None = None) -> None:
        """``stream.send_all(data)``, written at once where the socket takes it all.

        Then one checkpoint, as Trio's own send has (here after the write rather than
        before it): each response is a schedule point and a cancel point, so a client
        pipelining requests cannot keep the others waiting.  ``hold``: the response
        budget's count of a large response (:class:`._budget.Hold`), told what the
        socket takes and when, and marked ``waiting`` while the send waits for its
        client (where the budget may end it).
        """
        sock = self.direct
        sent = 0
        if sock is not None:
            try:
                sent = os_write(sock.fileno(), data)
            except BlockingIOError:
                pass
            except OSError as exc:
                raise stream_error(exc) from exc
            if hold is not None:
                hold.sent += sent
            if sent == len(data):
                await trio.lowlevel.checkpoint()
                return
        await self._send_waiting(memoryview(data)[sent:] if sent else data, hold, sent > 0)

    async def _send_waiting(self, data: bytes | memoryview, hold: Hold | None = None,
                            progressed: bool = False) -> None:
        """The rest of a response, which waits for the client to read: at most
        SEND_TIMEOUT in all, and an evictable wait (a client that pipelines requests and
        reads slowly would otherwise hold its connection past every cap)."""
        if self.evicted:
            raise trio.BrokenResourceError("evicted")
        now = trio.current_time()
        if hold is not None and progressed:
            hold.progressed = now
        with self.waiting_on_client(now + SEND_TIMEOUT, WAIT_SEND, now) as scope:
            if hold is None:
                await self.stream.send_all(data)
            else:
                hold.waiting = True
                try:
                    await self._send_noted(data, hold)
                finally:
                    hold.waiting = False
        if scope.cancelled_caught:  # part of it may be sent: nothing can follow it
            raise trio.BrokenResourceError(
                "evicted" if self.evicted else
                f"the client read no response within {SEND_TIMEOUT:g} s")

    async def _send_noted(self, data: bytes | memoryview, hold: Hold) -> None:
        """``send_all`` as Trio's loop of ``os.write`` and ``wait_writable``, noting in
        ``hold`` each write's bytes and time.  On another stream than a plain socket
        (tests' memory streams) the progress of a wait is not seen: it counts as none
        from the admission on."""
        sock = self.direct
        if sock is None:
            await self.stream.send_all(data)
            hold.sent += len(data)
            return
        view = memoryview(data)
        sent, total = 0, len(view)
        while sent < total:
            await trio.lowlevel.wait_writable(sock)
            try:
                taken = os_write(sock.fileno(), view[sent:])
            except BlockingIOError:
                continue
            except OSError as exc:
                raise stream_error(exc) from exc
            sent += taken
            hold.sent += taken
            hold.progressed = trio.current_time()

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
                data = await self._read(self.head_started + HEAD_TIMEOUT, WAIT_HEAD,
                                        self.head_started)
                if data is None:
                    if not self.evicted:
                        await self.stream.send_all(error_response(
                            408, f"request head: not received within {HEAD_TIMEOUT:g} s"))
                        self.linger = True
                    return False
            else:
                if self.server.stopping:
                    return False
                data = self._read_now()
                if data is None:
                    if idle_deadline is None:
                        idle_deadline = trio.current_time() + KEEP_ALIVE_TIMEOUT
                    data = await self._read(idle_deadline, WAIT_IDLE, idle_deadline)
                    if data is None:
                        return False
                self.head_started = trio.current_time()
            if not data:
                return False
            self._feed(data)
        return True

    async def wait_body(self, req: HttpRequest) -> None:
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
            if self.counted and self.server.bodies.spent(self):
                await self.server.bodies.wait(self, req)
                continue
            try:
                data = await self._read(req.deadline, WAIT_BODY, req.deadline - BODY_TIMEOUT)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if data is None:
                req.error = EVICTED if self.evicted else BadRequest(
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
            data = await self._read(deadline, WAIT_CLOSING, -math.inf)
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
                await self.stream.send_all(error_response(error.status, error.message))
                self.linger = True
                return
            if req.upgrade:
                if req.method == "GET" and b"websocket" in req.upgrade_to:
                    self.buf += req.rest
                    await WebSocket(self, req).run()
                    return
                if req.method == "CONNECT":
                    await self.stream.send_all(error_response(
                        405, "method CONNECT is not supported"))
                    self.linger = True
                    return
                if req.has_body:
                    # llhttp skipped the body of the upgrade: what follows cannot be framed.
                    await self.stream.send_all(error_response(
                        400, "upgrade: only websocket is supported, got "
                             f"{req.upgrade_to.decode('latin-1')!r} with a body"))
                    self.linger = True
                    return
            try:
                served = await self._http(req)
            finally:
                self.give_back(req)
            if not served:
                self.linger = True
                return
            if req.upgrade:  # served as plain HTTP (the offer ignored): parse on
                self.stopped = False
                self.upgrading = None
                self._feed(req.rest)

    async def _http(self, req: HttpRequest) -> bool:
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
            # The response as sent: its ``status`` is what the client got (a large one
            # the response budget refused went out as 503).
            "extensions": {"trioqueue.response": req},
        }
        try:
            await self.server.app(scope, req.receive, req.send)
        except BodyTooLarge:
            if not req.sent:
                await self.stream.send_all(error_response(
                    413, f"body: over the limit of {self.server.max_body} bytes"))
            return False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise
        except Exception:
            log.exception("error in the app answering %s %s", req.method, loggable(path))
            if not req.sent:
                await self.stream.send_all(error_response(500, "internal server error"))
            return False
        if not req.sent:
            log.error("the app sent no response to %s %s", req.method, loggable(path))
            await self.stream.send_all(error_response(500, "internal server error"))
            return False
        return req.keep_alive and not req.dropped

    def hang_up(self) -> None:
        """Close the socket now: wakes a task reading this connection."""
        sock = getattr(self.stream, "socket", None)
        if sock is not None:
            sock.close()
