"""``trioqueue monitor``: a live view of a server's event stream in a terminal.

The monitor subscribes to ``/events?types=failed,retrying,metrics&history=true``: the
server first sends its recent counter samples (``history``), then a ``metrics`` snapshot
every ``metrics_interval``, and each failed attempt.  Rates are counter deltas between
snapshots over the last ``window`` seconds (not averages since the server started), and
utilization is the delta of busy worker-seconds over the same window.

What is shown is a pure function, :func:`._monitor_view.render`, of a
:class:`._monitor_view.MonitorView` (the snapshots, recent failures and the connection's
state), the terminal's size and the time.  Each line fits the width: a row's items move
to the next line whole, and text that cannot fit is cut with an ellipsis, never wrapped
by the terminal.

When the connection drops the screen says why and when the next attempt is; attempts
back off from 0.5 s, doubling, up to 10 s; a connection silent for ten metrics intervals
counts as dropped.  A refusal (close code 1008, or an HTTP answer to the handshake other
than 5xx, 408 or 429) ends the monitor with exit status 1; Ctrl+C (or SIGTERM) ends it
with 0.
"""

from __future__ import annotations

import math
import shutil
import signal
import time
from typing import TextIO
from urllib.parse import urlencode

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    ConnectionTimeout,
    HandshakeError,
)

from ._cli_common import transport_failure
from ._exceptions import TrioQueueError
from ._job import JobStatus
from ._monitor_view import (
    FAILURES_KEPT,
    MonitorView,
    ProtocolError,
    decode,
    format_clock,
    format_in,
    plain_line,
    printable,
    render,
    stale_after,
)
from ._websocket import open_websocket
from .client import Client

STREAM_TYPES = ("failed", "retrying", "metrics")
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 10.0
CONNECT_TIMEOUT = 10.0
ONCE_SLACK = 1.0
"""Seconds past the server's metrics interval that ``--once`` waits for a second
snapshot (its utilization) before it shows the view without one."""

ESC = "\x1b["
HOME, CLEAR_LINE, CLEAR_BELOW, CLEAR_SCREEN = f"{ESC}H", f"{ESC}2K", f"{ESC}J", f"{ESC}2J"
HIDE_CURSOR, SHOW_CURSOR = f"{ESC}?25l", f"{ESC}?25h"


class Refused(Exception):
    """The server refused the event stream (a bad token or filter): exit status 1."""


def backoff(attempt: int) -> float:
    """Seconds before reconnection attempt ``attempt`` (1, 2, ...): 0.5 s doubling, at
    most :data:`BACKOFF_MAX`."""
    if attempt < 1:
        raise ValueError(f"attempt: expected >= 1, got {attempt}")
    return min(BACKOFF_MAX, BACKOFF_FIRST * 2.0 ** min(attempt - 1, 32))


# ---------------------------------------------------------------------------- running


def describe(exc: BaseException) -> str:
    """Why a connection attempt failed or a connection ended, in a few words."""
    if isinstance(exc, ConnectionClosed):
        reason = exc.reason
        code = 1006 if reason is None else reason.code
        text = None if reason is None else reason.reason
        if code == 1006:
            return "connection lost"
        if text:
            return printable(text)
        return "the server closed the stream" if code in (1000, 1001) else f"closed ({code})"
    if isinstance(exc, ConnectionRejected):
        return f"the server answered HTTP {exc.status_code}"
    if isinstance(exc, ConnectionTimeout):
        return f"no answer within {CONNECT_TIMEOUT:.0f} s"
    seen: list[BaseException] = []

    def leaves(e: BaseException | None) -> None:
        if e is None or len(seen) > 20:
            return
        if isinstance(e, BaseExceptionGroup):
            for inner in e.exceptions:
                leaves(inner)
        else:
            seen.append(e)
            leaves(e.__cause__)

    leaves(exc)
    for e in seen:
        if isinstance(e, ConnectionRefusedError):
            return "connection refused"
    for e in reversed(seen):
        if isinstance(e, OSError) and e.strerror:
            return printable(e.strerror).lower()
    for e in reversed(seen):
        if str(e):
            return printable(e)
    return type(exc).__name__


def refusal(exc: BaseException) -> str | None:
    """The reason if ``exc`` is a refusal that retrying will not change, else None."""
    if isinstance(exc, ConnectionClosed) and exc.reason is not None and exc.reason.code == 1008:
        return printable(exc.reason.reason or "policy violation")
    if isinstance(exc, ConnectionRejected) and exc.status_code < 500 and (
            exc.status_code not in (408, 429)):
        # Not an upgrade (a redirect, a 404 or 401): another try gets the same.  5xx, 408
        # and 429 (a proxy while the server restarts, a connection limit) are retried.
        return f"HTTP {exc.status_code} to the websocket handshake"
    return None


class _Dropped(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Monitor:
    """One ``trioqueue monitor`` run: the connection loop and the screen."""

    def __init__(self, url: str, token: str | None, out: TextIO, *, interval: float = 1.0,
                 window: float = 5.0, tty: bool | None = None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.out = out
        self.interval = interval
        self.tty = out.isatty() if tty is None else tty
        self.view = MonitorView(self.url, window)
        self._wake = trio.Event()
        self._first_snapshot = trio.Event()
        self._second_snapshot = trio.Event()
        self._snapshots = 0
        self._once = False

    @property
    def ws_url(self) -> str:
        query = urlencode({"types": ",".join(STREAM_TYPES), "history": "true"})
        base = "ws" + self.url[len("http"):] if self.url.startswith("http") else self.url
        return f"{base}/events?{query}"

    def _redraw_soon(self) -> None:
        self._wake.set()

    def _notice(self, text: str) -> None:
        """A change of the connection: a log line when the output is not a terminal."""
        if not self.tty and not self._once:
            self.out.write(f"{format_clock(time.time())} {text}\n")
            self.out.flush()
        self._redraw_soon()

    # -------------------------------------------------------------- the connection

    async def _session(self) -> None:
        """One connection, until it ends (raises what ended it)."""
        headers = [(b"authorization", f"Bearer {self.token}".encode())] if self.token else None
        self.view.connecting()
        async with open_websocket(self.ws_url, headers, connect_timeout=CONNECT_TIMEOUT,
                                  disconnect_timeout=1.0) as ws:
            first = True
            while True:
                silence = stale_after(self.view.interval)
                with trio.move_on_after(silence) as idle:
                    message = await ws.get_message()
                if idle.cancelled_caught:
                    raise _Dropped(f"no data for {silence:.0f} s")
                data = decode(message)
                self.view.receive(data)
                if first:
                    first = False
                    if not self.view.conn.ever_connected:
                        await self._seed_failures()
                    again = self.view.conn.ever_connected
                    self.view.connected(trio.current_time(), time.time())
                    if again:
                        self._notice(f"reconnected to {self.view.url} after "
                                     f"{self.view.conn.outage or 0:.1f} s")
                    else:
                        self._notice(f"watching {self.view.url}")
                if data["type"] == "metrics":
                    self._snapshots += 1
                    self._first_snapshot.set()
                    if self._snapshots >= 2:
                        self._second_snapshot.set()

    async def _seed_failures(self) -> None:
        """The failures from before the monitor connected (``GET /jobs?status=failed``),
        so that they show at once and in ``--once``; a server that refuses the listing
        (an older one, a token for events only) leaves the list to the stream."""
        import httpx

        try:
            async with Client(self.url, token=self.token, timeout=CONNECT_TIMEOUT) as client:
                page = await client.list_page(JobStatus.FAILED, FAILURES_KEPT)
        except (TrioQueueError, httpx.HTTPError):
            return
        self.view.seed_failures(page.jobs)

    async def connect_forever(self) -> None:
        """Connect, and again after every drop, with backoff.  Raises :class:`Refused`
        and :class:`ProtocolError`."""
        failures = 0
        while True:
            try:
                await self._session()
                reason = "the server closed the stream"
            except (_Dropped, ConnectionClosed, HandshakeError, OSError,
                    trio.BrokenResourceError) as exc:
                refused = refusal(exc)
                if refused is not None:
                    raise Refused(refused) from None
                reason = exc.reason if isinstance(exc, _Dropped) else describe(exc)
            if self.view.conn.state == "connected":
                failures = 0  # it was up: start the backoff again
            failures += 1
            delay = backoff(failures)
            now = trio.current_time()
            self.view.disconnected(reason, now + delay, now)
            first = "disconnected" if self.view.conn.ever_connected else "cannot connect"
            self._notice(f"{first}: {reason}; reconnecting in {format_in(delay)}")
            await trio.sleep(delay)

    async def connect_once(self) -> None:
        """Connect until the first snapshot, and the next one if the server's metrics
        interval fits the window: the history's samples carry counters only, no busy
        time, so utilization needs two snapshots.  Raise what went wrong before the
        first (after it, what there is is shown)."""
        self._once = True
        async with trio.open_nursery() as nursery:

            async def session() -> None:
                try:
                    try:
                        await self._session()
                    except (ConnectionClosed, HandshakeError) as exc:
                        refused = refusal(exc)
                        if refused is not None:
                            raise Refused(refused) from None
                        raise _Dropped(describe(exc)) from None
                    except (OSError, trio.BrokenResourceError) as exc:
                        raise _Dropped(describe(exc)) from None
                    raise _Dropped("the server closed the stream")
                except _Dropped:
                    if not self._snapshots:
                        raise
                    nursery.cancel_scope.cancel()  # gone after a snapshot: show it

            nursery.start_soon(session)
            await self._first_snapshot.wait()
            interval = self.view.interval or 1.0  # (a server without history: 1 s)
            if interval <= self.view.window:
                with trio.move_on_after(interval + ONCE_SLACK):
                    await self._second_snapshot.wait()
            nursery.cancel_scope.cancel()

    # -------------------------------------------------------------- the screen

    def draw(self) -> None:
        if not self.tty:
            if self.view.conn.state == "connected":
                self.out.write(plain_line(self.view) + "\n")
                self.out.flush()
            return
        size = shutil.get_terminal_size()
        lines = render(self.view, max(1, size.columns), max(1, size.lines),
                       trio.current_time())
        frame = HOME + "\r\n".join(CLEAR_LINE + line for line in lines)
        if len(lines) < size.lines:  # clear what an older, taller frame left below
            frame += "\r\n" + CLEAR_BELOW  # (from the next line: a full last line is
        self.out.write(frame)                # not erased at the cursor's pending wrap)
        self.out.flush()

    async def _draw_forever(self) -> None:
        while True:
            self.draw()
            with trio.move_on_after(self.interval):
                await self._wake.wait()
            self._wake = trio.Event()

    async def _watch_resize(self) -> None:
        with trio.open_signal_receiver(signal.SIGWINCH) as signals:
            async for _ in signals:
                self._redraw_soon()

    async def run(self, duration: float = 0.0) -> None:
        """Until ``duration`` seconds passed (0: forever) or the caller cancels; raises
        :class:`Refused` and :class:`ProtocolError`.  The last frame stays on the screen;
        output that is not a terminal gets the whole view once more at the end."""
        if self.tty:
            self.out.write(HIDE_CURSOR + HOME + CLEAR_SCREEN)
        try:
            async with trio.open_nursery() as nursery:
                if self.tty and hasattr(signal, "SIGWINCH"):
                    nursery.start_soon(self._watch_resize)
                nursery.start_soon(self._draw_forever)
                with trio.move_on_after(duration if duration > 0 else math.inf):
                    await self.connect_forever()
                nursery.cancel_scope.cancel()
        finally:
            if self.tty:
                self.draw()
                self.out.write("\r\n" + SHOW_CURSOR)
                self.out.flush()
            elif self.view.conn.ever_connected:
                self.out.write("\n".join(render(self.view, None, None, trio.current_time()))
                               + "\n")
                self.out.flush()

    async def once(self) -> None:
        """Print one frame once the first snapshot arrived."""
        await self.connect_once()
        width = None
        if self.tty:
            width = max(1, shutil.get_terminal_size().columns)
        self.out.write("\n".join(render(self.view, width, None, trio.current_time())) + "\n")
        self.out.flush()


async def monitor(url: str, token: str | None, *, interval: float = 1.0, window: float = 5.0,
                  duration: float = 0.0, once: bool = False, out: TextIO, err: TextIO,
                  tty: bool | None = None) -> int:
    """``trioqueue monitor``: the exit status (0, also after Ctrl+C or SIGTERM; 1 after a
    refusal, or when ``once`` cannot connect), the reason on ``err``."""
    mon = Monitor(url, token, out, interval=interval, window=window, tty=tty)
    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as interrupts:
            async with trio.open_nursery() as nursery:

                async def until_interrupted() -> None:
                    async for _ in interrupts:
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(until_interrupted)
                if once:
                    await mon.once()
                else:
                    await mon.run(duration)
                nursery.cancel_scope.cancel()
    except BaseException as exc:
        found = _lone(exc, (Refused, ProtocolError, _Dropped))
        if found is None:
            raise
        if isinstance(found, Refused):
            hint = ""
            if "token" in str(found) or "401" in str(found):
                hint = " (give --token or set TRIOQUEUE_TOKEN)"
            err.write(f"trioqueue monitor: the server refused the event stream: {found}{hint}\n")
        elif isinstance(found, ProtocolError):
            err.write("trioqueue monitor: the server sent a message this monitor cannot "
                      f"read: {found}\n")
        else:
            err.write(f"trioqueue monitor: {transport_failure(found)}\n")
        err.flush()
        return 1
    return 0


def _lone(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """``exc`` if it is one of ``kinds``, or the first such inside a group."""
    if isinstance(exc, kinds):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _lone(inner, kinds)
            if found is not None:
                return found
    return None
