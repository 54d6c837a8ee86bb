"""What the lean HTTP server's parts share: the request object the app reads and answers
(:class:`HttpRequest`), the refusals (:class:`BadRequest`), and the bytes of an error
response.  See :mod:`._lean` for the server as a whole."""

from __future__ import annotations

import json
import math
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import trio

from ._hosts import origin_form
from ._http import Message

if TYPE_CHECKING:
    from ._h1 import Connection

READ_SIZE = 65536
"""Bytes asked of the socket per read."""
LARGE_RESPONSE = 64 * 1024
"""Responses of this many bytes or more count against the server's response budget while
they are sent (``Server.send_large``); smaller ones are never counted nor refused."""

BODY_COUNTED_FROM = 64 * 1024
"""Bytes of a request body past this many count against the server's body budget while
the request lasts (``Server.body_budget``); a body under it is never held back."""

# What a connection waits for, when it waits on its client (for eviction at the cap).
WAIT_IDLE = 0  # the next request, nothing of it received
WAIT_CLOSING = 1  # the peer's end after our closing response
WAIT_HEAD = 2  # the rest of a request head
WAIT_BODY = 3  # the rest of a request body
WAIT_SEND = 4  # the client to read the rest of a response

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


class BadRequest(Exception):
    """A request this server will not serve: answered with ``status``, then the close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


EVICTED = BadRequest(503, "closed to make room for a new connection")
"""The error of a request whose connection was closed at the cap: nothing is sent."""

_date_cache: tuple[int, bytes] = (0, b"")


def http_date() -> bytes:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode())
    return _date_cache[1]


def error_response(status: int, message: str, extra: bytes = b"") -> bytes:
    body = json.dumps({"error": message}, separators=(",", ":")).encode()
    return b"".join((
        b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"")),
        b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body),
        extra,
        b"date: " + http_date() + b"\r\nconnection: close\r\n\r\n",
        body,
    ))


def peer_address(addr: Any) -> tuple[str, int] | None:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return (str(addr[0]), int(addr[1]))
    return None


def check_head(req: HttpRequest, version: str) -> None:
    """The checks of a parsed head that llhttp does not make (raise :class:`BadRequest`):
    the version, one Host (HTTP/1.1), ``Transfer-Encoding: chunked`` only (not in
    HTTP/1.0), ``Expect: 100-continue`` only; and an absolute-form target
    (:func:`._hosts.origin_form`) made the origin form, its host the one Host."""
    if version != "1.1" and version != "1.0":
        raise BadRequest(505, f"HTTP/{version}: only HTTP/1.1 and HTTP/1.0 are supported")
    if req.hosts != 1 and (req.hosts or version == "1.1"):
        raise BadRequest(400, "host: missing" if not req.hosts else "host: more than one")
    if req.url[:1] != b"/":
        try:
            target = origin_form(req.url)
        except ValueError as exc:
            raise BadRequest(400, str(exc)) from None
        if target is not None:
            req.url, host = target
            req.headers = [(k, v) for k, v in req.headers if k != b"host"]
            req.headers.append((b"host", host))
            req.hosts = 1
    te = req.transfer_encoding
    if te is not None:
        if version == "1.0":
            raise BadRequest(400, "transfer-encoding: not allowed in HTTP/1.0")
        if te.lower() != b"chunked":
            raise BadRequest(501, "transfer-encoding: only chunked is supported, got "
                                  f"{te.decode('latin-1')!r}")
    expect = req.expect
    if expect is not None and version == "1.1":  # 1.0: ignored (RFC 9110, 10.1.1)
        if expect.lower() != b"100-continue":
            raise BadRequest(417, f"expect: {expect.decode('latin-1')!r} is not supported")
        req.continued = False


class BodyTooLarge(Exception):
    pass


# ---------------------------------------------------------------------------- requests


class HttpRequest:
    """One request: its head, the body as parsed so far, and the app's response.

    Made by the parser's ``on_message_begin``; ``receive`` and ``send`` are what the app
    is given.
    """

    __slots__ = ("body", "complete", "conn", "continued", "counted", "deadline", "delivered",
                 "dropped", "ended", "error", "expect", "has_body", "head_done", "head_size",
                 "headers", "hosts", "http_version", "keep_alive", "method", "parts", "received",
                 "resp_headers", "rest", "sent", "started", "status", "trailers",
                 "transfer_encoding", "upgrade", "upgrade_to", "url")

    def __init__(self, conn: Connection) -> None:
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
        self.received = 0
        """Body bytes parsed so far."""
        self.counted = 0
        """Of them, those counted against the server's body budget (past
        :data:`BODY_COUNTED_FROM`) until the request ends."""
        self.hosts = 0
        self.head_size = 0
        """Bytes of the target and header fields so far (``MAX_HEAD`` bounds them)."""
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
            raise BodyTooLarge
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
            if error is not EVICTED and error is not None:
                try:
                    await self.conn.stream.send_all(error_response(error.status,
                                                                    error.message))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
        return {"type": "http.disconnect"}

    def response_room(self) -> int | None:
        """Bytes a large response to this request could have now in the server's response
        budget (None: any), so that an app can build a smaller answer rather than one
        that would be refused (``scope["extensions"]["trioqueue.response"]``)."""
        return self.conn.server.budget.room(trio.current_time())

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
                head, body = self._encode()
                if len(body) < LARGE_RESPONSE:
                    head.append(body)
                    await self.conn.send(b"".join(head))
                else:  # the body written as it is, not copied after its head
                    await self.conn.server.send_large(self, b"".join(head), body)
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")

    def _encode(self) -> tuple[list[bytes], bytes]:
        """The response's head (its lines, the blank line last) and the body to send
        after it (none for HEAD, 204, 304 or 1xx)."""
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
        out.append(b"date: " + http_date() + b"\r\n\r\n")
        return out, (body if self.method != "HEAD" and not no_body else b"")
