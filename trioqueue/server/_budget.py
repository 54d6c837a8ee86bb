"""The lean server's budget for large responses held for their clients (``response_budget``):
what :meth:`._lean.Server.send_large` counts, and which held response a new one may replace.

A response is written whole from memory and stays there until its client has read it.
Responses of :data:`._wire.LARGE_RESPONSE` bytes or more count (:class:`Hold`) from when the
app hands over the body until it is written or its connection ends.  A new one that would
take the total past the budget (:meth:`ResponseBudget.admit`):

- takes the place of held responses whose clients are *behind* (:meth:`Hold.behind`): in a
  wait for their client to read, held :data:`GRACE` or longer, and either the socket took
  none of their bytes for :data:`GRACE`, or it took fewer than the pace that ends the
  response within :data:`._h1.SEND_TIMEOUT` (``size * (held - GRACE) / SEND_TIMEOUT``).  The
  longest behind go first, only as many as it needs, and only if they free enough; their
  connections are reset (the kernel drops what it held for them at once) and counted in
  :attr:`ResponseBudget.preempted`;
- else it is dropped and answered 503 with ``Retry-After`` (:attr:`ResponseBudget.refused`).

Why not refuse every newcomer, as when the budget only counted: clients that ask for large
answers and read nothing, reconnecting as soon as they are cut off (after ``SEND_TIMEOUT``),
held the whole budget for as long as they kept at it, from one address: with 8 of them
(64 MiB, 8 MB pages) a client that reads got 21 of 70 pages, only while they reconnected;
with this rule 66 of 68 (``benchmarks.slow_readers``; docs/operations.md has the figures,
and what many more such clients still do).  A share per
address helps nothing there (every client of a proxy, or of one host, has the same one), and
any rule that judges a response before it is sent is a lottery that the side with more
connections wins.  What tells a reader from the rest is that it reads: so a response holds
its share while its client keeps up, and only while it does, once the budget is short.  A
client that reads a little now and then to look alive must still read at the pace that
ends its response within ``SEND_TIMEOUT`` (about 280 KB/s for an 8 MiB page), which is what
a reader does anyway; one that cannot would be cut off at ``SEND_TIMEOUT`` all the same.

What it costs: nothing for responses under ``LARGE_RESPONSE`` (they never come here); a
large one is written by :meth:`._h1.Connection.send` with its hold, the same
``os.write`` / ``wait_writable`` loop as Trio's ``send_all`` with a clock read after each
write; the budget is looked over only when a newcomer does not fit.  A reader whose
client pauses :data:`GRACE` or more while the budget is short loses its response (a reset,
no 503): a client of a busy server should read its answer as it comes.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from typing import TYPE_CHECKING

import trio

try:
    import fcntl
    import termios
except ImportError:  # pragma: no cover - not Unix: no direct socket there (_unread)
    pass

from . import _h1
from ._wire import EVICTED, WAIT_BODY, BadRequest

if TYPE_CHECKING:
    from ._h1 import Connection
    from ._wire import HttpRequest

GRACE = 1.0
"""Seconds a large response's client may read nothing (or fall behind its pace) before a
new large response that does not fit the budget may take its place: longer than a
retransmission after a lost packet (Linux waits 0.2 s or more) or slow start over a long
link, shorter than any client that asks and reads nothing is worth."""

_RESET = struct.pack("ii", 1, 0)
"""``SO_LINGER`` on, for 0 s: ``close`` resets the connection and drops what is unsent."""


class Hold:
    """A large response counted against the budget, while its connection sends it."""

    __slots__ = ("conn", "progressed", "sent", "since", "size", "waiting")

    def __init__(self, conn: Connection, size: int, now: float) -> None:
        self.conn = conn
        self.size = size
        self.since = now
        self.progressed = now
        """When the socket last took bytes of it (or when it was admitted)."""
        self.sent = 0
        """Bytes of it the socket has taken."""
        self.waiting = False
        """In a wait for its client to read: the only place it can be taken from."""

    def behind(self, now: float) -> float | None:
        """Seconds this response has been behind its client (longest first), or None if
        it may not be taken now (see the module docstring)."""
        if not self.waiting or self.conn.waiting is None:
            return None
        held = now - self.since
        if held < GRACE:
            return None
        stalled = now - self.progressed
        if stalled >= GRACE:
            return stalled
        due = self.size * (held - GRACE) / _h1.SEND_TIMEOUT
        if self.sent < due:  # behind since its sent bytes were due, at the pace
            return (due - self.sent) * _h1.SEND_TIMEOUT / self.size
        return None


class ResponseBudget:
    """The bytes of large responses held (:attr:`held`) against ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.holds: set[Hold] = set()
        self.refused = 0
        """Large responses answered 503, since the start."""
        self.preempted = 0
        """Held responses whose connections were reset to make room, since the start."""

    def admit(self, conn: Connection, size: int, *, must: bool = False) -> Hold | None:
        """Count a response of ``size`` bytes for ``conn``: its hold (to :meth:`release`),
        or None if it does not fit (nothing held then changes).  With nothing held, one
        response is admitted whatever its size: a budget under the largest answer sends
        large answers one at a time rather than refusing them all.  A response that
        ``must`` go out (the answer to a request that changed something: refused, its
        client would not know what was done) is admitted past the budget if nothing can
        make room; the app checks the room before it acts (``response_room``)."""
        now = trio.current_time()
        held = self.held
        if held and held + size > self.limit:
            victims = self._victims(size, now)
            if victims is None and not must:
                self.refused += 1
                return None
            for victim in victims or ():
                self._preempt(victim)
        hold = Hold(conn, size, now)
        self.holds.add(hold)
        self.held += size
        return hold

    def room(self, now: float) -> int | None:
        """Bytes a large response could have now (:meth:`admit` would take one this size):
        the budget left, plus what the held responses whose clients are behind would
        free; None when nothing is held (one response is admitted whatever its size)."""
        if not self.held:
            return None
        return self.limit - self.held + sum(hold.size for _, hold in self._behind(now))

    def release(self, hold: Hold) -> None:
        """The response is written, or its connection ended (once per hold)."""
        if hold in self.holds:
            self.holds.discard(hold)
            self.held -= hold.size

    def _behind(self, now: float) -> list[tuple[float, Hold]]:
        """The held responses whose clients are behind, with how long (:meth:`Hold.behind`)."""
        return [(late, hold) for hold in self.holds if (late := hold.behind(now)) is not None]

    def _victims(self, size: int, now: float) -> list[Hold] | None:
        """The fewest held responses, longest behind first, whose room lets ``size`` in."""
        behind = self._behind(now)
        if not behind:
            return None
        behind.sort(key=lambda pair: pair[0], reverse=True)
        held = self.held
        victims = []
        for _, hold in behind:
            victims.append(hold)
            held -= hold.size
            if not held or held + size <= self.limit:
                return victims
        return None

    def _preempt(self, hold: Hold) -> None:
        """Uncount ``hold`` and end its connection (a reset: its send raises)."""
        self.release(hold)
        self.preempted += 1
        conn = hold.conn
        if conn.direct is not None:  # (then the close resets it)
            with contextlib.suppress(OSError):
                conn.direct.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        conn.server.drop(conn)  # its send raises; no lingering close (Server.handle)


# ---------------------------------------------------------------------------- request bodies


class BodyBudget:
    """The bytes of request bodies held (:attr:`held`) against ``limit``: those past each
    body's first :data:`._wire.BODY_COUNTED_FROM`, from when the parser takes them until
    their request ends (the app's copies come on top: about twice as much).

    A connection reading a body that is counted waits before it reads more while the
    budget is spent (:meth:`._h1.Connection.wait_body`: the client is held back by TCP, and
    its body's deadline runs on), unless no connection has held counted bytes longer
    (:meth:`spent`).  While it waits,
    a connection whose client has sent nothing of its counted body for :data:`GRACE` while
    the server waited on it gives its place (:meth:`stalled`: its connection is closed,
    its request dropped).  So clients that send large bodies slowly, or start them and
    stall, hold at most the budget, and only until a body that comes at a sender's pace
    needs the room."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.holders: dict[Connection, None] = {}
        """Connections holding counted bytes, the longest first."""
        self.for_room = trio.lowlevel.ParkingLot()
        """Connections waiting for room, woken when a request gives its bytes back."""
        self.parked: set[Connection] = set()
        self.evicted = 0
        """Connections closed because their client stalled in a counted body, since the
        start."""

    def take(self, conn: Connection, size: int) -> None:
        """``conn`` took ``size`` more bytes of a counted body."""
        if not conn.counted:
            self.holders[conn] = None
        conn.counted += size
        self.held += size

    def give_back(self, conn: Connection, size: int) -> None:
        """A request of ``conn`` ended, and its ``size`` counted bytes with it."""
        conn.counted -= size
        self.held -= size
        if not conn.counted:
            del self.holders[conn]
        if self.for_room:
            self.for_room.unpark_all()  # (each looks again: the oldest holder may be another)

    def spent(self, conn: Connection) -> bool:
        """Whether ``conn``, which holds counted bytes, must wait before it reads more:
        the budget is spent and another connection has held bytes longer.  The one that
        has held them longest always reads on, so that some body always comes to its end
        and gives its bytes back (were every holder to wait for room, none would come)."""
        return self.held >= self.limit and next(iter(self.holders)) is not conn

    async def wait(self, conn: Connection, req: HttpRequest) -> None:
        """Wait, reading nothing, until a request gives its bytes back, for :data:`GRACE`
        at most (the caller looks again), and never past the body's deadline (then 408).
        First, connections whose clients stalled in their bodies are closed
        (:meth:`stalled`)."""
        server = conn.server
        now = trio.current_time()
        victims = self.stalled(conn, now)
        for victim in victims:
            server.evict_stalled_body(victim)
        if victims and self.for_room:
            self.for_room.unpark_all()  # (a victim waiting here sees that it is closed)
        self.parked.add(conn)
        try:
            with trio.move_on_at(min(req.deadline, now + GRACE)):
                await self.for_room.park()
        finally:
            self.parked.discard(conn)
        if conn.evicted:
            req.error = EVICTED
        elif trio.current_time() >= req.deadline and self.spent(conn):
            req.error = BadRequest(408, f"body: not received within {_h1.BODY_TIMEOUT:g} s")

    def stalled(self, me: Connection, now: float) -> list[Connection]:
        """The connections holding counted bytes whose clients have sent none of their
        bodies for :data:`GRACE` while the server was ready to read them: those waiting on
        their client, and those waiting here for room with nothing unread in their socket
        (a client that sends has its bytes waiting there)."""
        since = now - GRACE
        return [conn for conn in self.holders
                if conn is not me and not conn.evicted and conn.body_at <= since and (
                    (conn.waiting is not None and conn.wait_kind == WAIT_BODY)
                    or (conn in self.parked and not _unread(conn)))]


def _unread(conn: Connection) -> int:
    """Bytes the client has sent that the server has not read (1 where it cannot tell)."""
    sock = conn.direct
    if sock is None:
        return 1
    try:
        answer = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return 1
    unread: int = struct.unpack("i", answer)[0]
    return unread
