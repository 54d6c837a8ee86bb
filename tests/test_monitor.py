"""``trioqueue monitor``: the frame as a pure function of (snapshots, width, connection),
and end to end against real ``trioqueue serve`` processes: on a pseudo-terminal (width,
resize, Ctrl+C), and in plain output (a server that stops and comes back on its port)."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import pytest
import trio
from trio_websocket import (
    CloseReason,
    ConnectionClosed,
    ConnectionRejected,
    WebSocketRequest,
    serve_websocket,
)

from tests.test_cli import run_cli
from tests.test_server import Server, running_server
from trioqueue.testing import (
    COUNTERS,
    ELLIPSIS,
    MonitorView,
    ProtocolError,
    backoff,
    cells,
    compute_rates,
    decode,
    describe,
    fit,
    flow,
    monitor,
    refusal,
    render,
    stale_after,
)

WIDTHS = (40, 80, 200)


# ---------------------------------------------------------------------------- building views


def metrics(at: float, *, uptime: float = 100.0, utilization: float = 0.0, workers: int = 4,
            busy: int = 0, failures: int = 0, **counters: int) -> dict[str, Any]:
    """A ``metrics`` event as the server sends it."""
    values: dict[str, Any] = dict.fromkeys(COUNTERS, 0)
    values.update(counters)
    values.update(
        queued={"high": 2, "medium": 0, "low": 1_234}, scheduled=3, processing=busy,
        workers=workers, busy_workers=busy, utilization=utilization, wait_p50=0.0004,
        wait_p99=0.012, run_p50=0.21, run_p99=1.5, uptime=uptime, dropped=0,
    )
    return {"seq": 1, "type": "metrics", "at": at, "metrics": values}


def connected_view(*messages: dict[str, Any], window: float = 5.0) -> MonitorView:
    view = MonitorView("http://127.0.0.1:8080", window)
    view.connecting()
    for message in messages:
        view.receive(message)
    view.connected(now=0.0, wall=1_700_000_000.0)
    return view


def failed(at: float, error: str, job_id: str = "j1") -> dict[str, Any]:
    return {"seq": 2, "type": "failed", "at": at, "job_id": job_id, "task": "send_email",
            "priority": "high", "status": "failed", "attempt": 3, "error": error}


def assert_fits(lines: list[str], width: int, height: int | None = None) -> None:
    for line in lines:
        assert cells(line) <= width, f"{cells(line)} columns > {width}: {line!r}"
    if height is not None:
        assert len(lines) <= height


def text_of(lines: list[str]) -> str:
    return "\n".join(lines)


# ---------------------------------------------------------------------------- rates


@pytest.mark.parametrize("width", WIDTHS)
def test_rates_are_snapshot_deltas(width: int) -> None:
    view = connected_view(metrics(1000.0, completed=100, enqueued=400),
                          metrics(1001.0, completed=250, enqueued=700, failed=3))
    lines = render(view, width, now=0.0)
    assert_fits(lines, width)
    text = text_of(lines)
    assert "last 1.0 s" in text
    assert "completed 150/s" in text
    assert "enqueued 300/s" in text
    assert "failed 3.0/s" in text
    assert "retried 0.0/s" in text


def test_rates_cover_the_window_not_the_time_since_start() -> None:
    # 1000/s for 10 s, then 10/s for 10 s: the average since start (505/s) is not shown.
    messages = []
    completed = 0
    for second in range(21):
        messages.append(metrics(2000.0 + second, uptime=10.0 + second, completed=completed))
        completed += 1000 if second < 10 else 10
    view = connected_view(*messages)
    rates = view.rates()
    assert rates is not None
    assert rates.span == 5.0
    assert rates.per_second["completed"] == 10.0
    assert "completed 10.0/s" in text_of(render(view, 80))
    assert len(view.samples) <= 7  # older samples are let go


def test_history_gives_rates_at_once() -> None:
    history = {"type": "history", "at": 3010.0, "interval": 1.0, "samples": [
        {"at": 3000.0 + i, **dict.fromkeys(COUNTERS, 0), "completed": 50 * i}
        for i in range(10)
    ]}
    view = connected_view(history, metrics(3010.0, completed=500))
    rates = view.rates()
    assert rates is not None
    assert (rates.span, rates.per_second["completed"]) == (5.0, 50.0)
    assert view.interval == 1.0
    # A sample of a server without some counter is skipped, not a crash.
    partial = {"type": "history", "at": 1.0, "interval": 1.0,
               "samples": [{"at": 1.0, "enqueued": None}]}
    assert not connected_view(partial).samples


def test_utilization_is_the_busy_time_of_the_window() -> None:
    # 4 workers; busy 20 worker-seconds in the first 10 s (50 %), then all 4 busy for
    # 2 s: since start that is 28 / 48 = 58 %; now it is 100 %.
    view = connected_view(metrics(10.0, uptime=10.0, utilization=0.5, busy=2),
                          metrics(12.0, uptime=12.0, utilization=28 / 48, busy=4))
    rates = view.rates()
    assert rates is not None
    assert rates.utilization == pytest.approx(1.0)
    text = text_of(render(view, 80))
    assert "utilization 100% last 2 s" in text
    assert "58%" not in text
    assert "4/4 busy now" in text


def test_utilization_needs_two_snapshots() -> None:
    history = {"type": "history", "at": 1.0, "interval": 1.0,
               "samples": [{"at": 9.0, **dict.fromkeys(COUNTERS, 0)}]}
    view = connected_view(history, metrics(10.0, utilization=0.9, busy=1))
    text = text_of(render(view, 80))
    assert "utilization -" in text
    assert "1/4 busy now" in text
    assert "90%" not in text  # the average since start is never shown as current


def test_counters_going_back_start_a_new_window() -> None:
    # Another server answers on the same URL (a restart): no negative rates.
    view = connected_view(metrics(10.0, completed=5000), metrics(11.0, completed=5100),
                          metrics(12.0, completed=7))
    assert [s.counters["completed"] for s in view.samples] == [7]
    assert view.rates() is None
    assert "measuring" in text_of(render(view, 80))


def test_compute_rates_needs_time_to_pass() -> None:
    view = connected_view(metrics(10.0, completed=5))
    assert compute_rates(view.samples, 5.0) is None
    view.receive(metrics(10.0, completed=9))  # not newer: ignored
    assert len(view.samples) == 1


# ---------------------------------------------------------------------------- the frame


def busy_view() -> MonitorView:
    view = connected_view(metrics(1000.0, completed=100_000, enqueued=100_000),
                          metrics(1001.0, completed=112_345, enqueued=112_000, busy=4,
                                  uptime=200_000.0, utilization=0.7))
    view.url = "http://a-rather-long-host-name.example.internal:18080/queue/prefix"
    view.receive(failed(1000.5, "TimeoutError: " + "the SMTP relay did not answer " * 5))
    view.receive(failed(1000.6, "ValueError: 値が不正です、全角の文字が多いエラー" * 3, "j2"))
    view.receive({"seq": 9, "type": "lagged", "at": 1000.7, "dropped": 17})
    return view


@pytest.mark.parametrize("width", [*WIDTHS, 20, 1])
@pytest.mark.parametrize("state", ["connected", "disconnected", "connecting"])
def test_no_line_is_wider_than_the_terminal(width: int, state: str) -> None:
    view = busy_view() if state != "connecting" else MonitorView("http://127.0.0.1:1")
    if state == "disconnected":
        view.disconnected("the server is shutting down", retry_at=12.0, now=10.0)
    lines = render(view, width, now=10.0)
    assert_fits(lines, width)
    assert_fits(render(view, width, height=6, now=10.0), width, height=6)


@pytest.mark.parametrize("width", WIDTHS)
def test_items_move_to_the_next_line_whole(width: int) -> None:
    lines = render(busy_view(), width, now=0.0)
    text = text_of(lines)
    for item in ("completed 12,345/s", "enqueued 12,000/s", "failed 0.0/s", "4/4 busy now",
                 "low 1,234", "processing 4", "run p50 210.0 ms", "p99 1.50 s",
                 "17 events dropped", "up 2d07h"):
        assert item in text, f"{item!r} missing or split at width {width}:\n{text}"
    # A failure too long for a line puts its error on the next one, cut with an
    # ellipsis: text is never left for the terminal to wrap.
    about = [i for i, line in enumerate(lines) if "failed send_email j" in line]
    assert len(about) == 2
    for i in about:
        if "Error: " not in lines[i]:
            assert lines[i + 1].startswith("    ")
            assert "Error: " in lines[i + 1]
            assert lines[i + 1].endswith(ELLIPSIS) or width == 200
    if width == 40:
        assert "Error: " not in lines[about[0]]


def test_at_40_columns_rows_continue_under_their_label() -> None:
    lines = render(busy_view(), 40, now=0.0)
    rates = lines.index(next(line for line in lines if line.startswith("rates")))
    assert lines[rates].startswith("rates     last 1.0 s")
    assert lines[rates + 1].startswith(" " * 10)  # the continuation, under the items
    assert lines[rates + 1].strip()


def test_the_failures_fill_the_height_newest_first() -> None:
    view = busy_view()
    for i in range(30):
        view.receive(failed(2000.0 + i, f"Boom: number {i}", f"f{i}"))
    lines = render(view, 80, height=14, now=0.0)
    assert len(lines) == 14
    text = text_of(lines)
    assert "Boom: number 29" in text
    assert "Boom: number 0" not in text
    assert "more)" in text


def test_disconnected_says_why_and_when() -> None:
    view = busy_view()
    view.disconnected("connection refused", retry_at=12.0, now=10.0)
    lines = render(view, 80, now=10.0)
    assert "disconnected: connection refused; reconnecting in 2 s" in lines
    text = text_of(lines)
    assert "rates     - (not connected)" in text
    assert "figures as of" in text  # the old figures are marked as old
    assert "reconnecting in 0.5 s" in text_of(render(view, 80, now=11.5))
    assert f"reconnecting{ELLIPSIS}" in text_of(render(view, 80, now=12.5))
    # At 40 columns the sentence continues on the next line, word by word.
    narrow = render(view, 40, now=10.0)
    assert "disconnected: connection refused;" in narrow
    assert "reconnecting in 2 s" in narrow


def test_back_after_a_drop_says_so() -> None:
    view = busy_view()
    view.disconnected("connection lost", retry_at=3.0, now=2.5)
    view.disconnected("connection refused", retry_at=5.0, now=4.0)
    view.connecting()
    view.receive(metrics(1010.0))
    view.connected(now=6.0, wall=1_700_000_000.0)
    text = text_of(render(view, 80, now=6.0))
    assert "connected (reconnected " in text
    assert "after 3.5 s)" in text


def test_never_connected_says_cannot_connect() -> None:
    view = MonitorView("http://127.0.0.1:1")
    assert f"connecting{ELLIPSIS}" in text_of(render(view, 80))
    view.disconnected("connection refused", retry_at=1.0, now=0.5)
    assert "cannot connect: connection refused; reconnecting in 0.5 s" in render(view, 80,
                                                                                  now=0.5)


def test_text_from_the_network_cannot_move_the_cursor() -> None:
    view = connected_view(metrics(1.0), failed(1.0, "Evil\x1b[2J\x1b[H\rline\nnext"))
    text = text_of(render(view, None))
    assert "\x1b" not in text
    assert "\r" not in text
    assert "Evil\\x1b[2J\\x1b[H\\rline\\nnext" in text


def test_cells_and_fit_count_wide_characters() -> None:
    assert cells("abc") == 3
    assert cells("値が") == 4
    assert cells("e\u0301") == 1  # a combining accent takes no column
    assert fit("値が不正です", 5) == "値が" + ELLIPSIS
    assert cells(fit("値が不正です", 6)) <= 6
    assert fit("short", 40) == "short"
    assert fit("anything", 0) == ""
    assert flow("queued", ["a" * 50], 40) == ["queued    " + "a" * 29 + ELLIPSIS]


# ---------------------------------------------------------------------------- messages


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (b"\x00", "expected a text message"),
        ("not json", "expected JSON, got 'not json'"),
        ("[1, 2]", "expected an object with a 'type'"),
        ('{"type": 5}', "expected an object with a 'type'"),
    ],
)
def test_undecodable_messages_are_named(message: str | bytes, error: str) -> None:
    with pytest.raises(ProtocolError, match=re.escape(error)):
        decode(message)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"completed": "many"}, "metrics.completed: expected a count, got 'many'"),
        ({"failed": -1}, "metrics.failed: expected a count, got -1"),
        ({"workers": True}, "metrics.workers: expected a count, got True"),
        ({"uptime": float("nan")}, "metrics.uptime: expected a number >= 0, got nan"),
        ({"wait_p99": "x" * 100}, "metrics.wait_p99: expected a number >= 0, got 'xxx"),
        ({"queued": []}, "metrics.queued: expected an object, got []"),
        ({"queued": {"high": 1.5}}, "metrics.queued.high: expected a count, got 1.5"),
    ],
)
def test_a_bad_snapshot_names_the_field(change: dict[str, Any], error: str) -> None:
    message = metrics(1.0)
    message["metrics"].update(change)
    view = MonitorView("http://127.0.0.1:1")
    with pytest.raises(ProtocolError) as bad:
        view.receive(message)
    assert str(bad.value).startswith(error)
    assert len(str(bad.value)) < 120  # a huge value is not echoed whole


def test_one_event_dropped_is_singular() -> None:
    view = connected_view(metrics(1.0), {"seq": 2, "type": "lagged", "at": 1.5, "dropped": 1})
    assert "1 event dropped" in text_of(render(view, 80))


def test_other_messages() -> None:
    view = MonitorView("http://127.0.0.1:1")
    view.receive({"type": "some_future_type", "at": 1.0})  # ignored
    with pytest.raises(ProtocolError, match=r"history\.samples: expected a list"):
        view.receive({"type": "history", "at": 1.0, "interval": 1.0, "samples": "no"})
    with pytest.raises(ProtocolError, match=r"lagged\.dropped: expected a count"):
        view.receive({"type": "lagged", "at": 1.0, "dropped": None})


# ---------------------------------------------------------------------------- reconnecting


def test_backoff_doubles_from_half_a_second_up_to_ten() -> None:
    assert [backoff(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 10, 10, 10]
    assert backoff(10_000) == 10
    with pytest.raises(ValueError, match="attempt"):
        backoff(0)


def test_stale_after_follows_the_servers_interval() -> None:
    assert stale_after(None) == 10.0
    assert stale_after(1.0) == 10.0
    assert stale_after(0.01) == 1.0


def test_reasons() -> None:
    lost = ConnectionClosed(CloseReason(1006, None))
    assert describe(lost) == "connection lost"
    assert refusal(lost) is None
    going = ConnectionClosed(CloseReason(1001, "the server is shutting down"))
    assert describe(going) == "the server is shutting down"
    token = ConnectionClosed(CloseReason(1008, "missing or wrong bearer token"))
    assert refusal(token) == "missing or wrong bearer token"
    assert refusal(ConnectionRejected(401, (), None)) == "HTTP 401 to the websocket handshake"
    assert refusal(ConnectionRejected(200, (), None)) is not None  # not a websocket at all
    for retried in (503, 502, 429, 408):
        assert refusal(ConnectionRejected(retried, (), None)) is None
    assert describe(ConnectionRejected(503, (), None)) == "the server answered HTTP 503"
    refused = OSError("all attempts to connect to 127.0.0.1:9 failed")
    refused.__cause__ = ExceptionGroup("x", [ConnectionRefusedError(111, "refused")])
    assert describe(refused) == "connection refused"


# ---------------------------------------------------------------------------- a silent server


class Watched(io.StringIO):
    """Output that a test can wait on: each write wakes :meth:`wait_for`."""

    def __init__(self) -> None:
        super().__init__()
        self.wrote = trio.Event()

    def write(self, text: str) -> int:
        self.wrote.set()
        return super().write(text)

    async def wait_for(self, needle: str) -> None:
        while needle not in self.getvalue():
            self.wrote = trio.Event()
            await self.wrote.wait()


async def test_a_silent_connection_counts_as_lost() -> None:
    """A server that stops sending without closing (a half-open connection) is left
    after ten of its metrics intervals (here 0.05 s: the floor of one second)."""

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.send_message(json.dumps({"type": "history", "at": 1.0, "interval": 0.05,
                                          "samples": []}))
        await ws.send_message(json.dumps(metrics(1.0)))
        await trio.sleep_forever()

    out, err = Watched(), io.StringIO()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
        url = f"http://127.0.0.1:{server.port}"
        nursery.start_soon(lambda: monitor(url, None, interval=0.2, out=out, err=err,
                                           tty=False))
        with trio.fail_after(20):
            await out.wait_for("reconnected")
        nursery.cancel_scope.cancel()
    text = out.getvalue()
    assert f"watching {url}\n" in text
    assert "disconnected: no data for 1 s; reconnecting in 0.5 s\n" in text
    assert err.getvalue() == ""


async def monitor_against(handler: Any, **options: Any) -> tuple[int, str, str]:
    """``monitor`` (no terminal) against a websocket server of ``handler``'s: its exit
    status, output and errors."""
    out, err = io.StringIO(), io.StringIO()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
        with trio.fail_after(20):
            code = await monitor(f"http://127.0.0.1:{server.port}", None, out=out, err=err,
                                 tty=False, **options)
        nursery.cancel_scope.cancel()
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("gone_after_one", [False, True])
async def test_once_waits_one_interval_for_the_utilization(gone_after_one: bool) -> None:
    """``--once`` showed ``utilization -`` with every worker busy: the history's samples
    carry counters only, and it stopped at the first snapshot.  It waits for the next
    one (a metrics interval); a stream that ends first still shows what it had."""

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.send_message(json.dumps({"type": "history", "at": 1.0, "interval": 0.05,
                                          "samples": []}))
        await ws.send_message(json.dumps(metrics(10.0, uptime=10.0, utilization=0.5,
                                                 busy=4)))
        if gone_after_one:
            await ws.aclose()
            return
        await trio.sleep(0.05)
        with suppress(ConnectionClosed):  # (a monitor gone already)
            await ws.send_message(json.dumps(metrics(12.0, uptime=12.0,
                                                     utilization=28 / 48, busy=4)))
            await trio.sleep_forever()

    code, out, err = await monitor_against(handler, once=True)
    assert (code, err) == (0, "")
    expected = "4/4 busy now  utilization -" if gone_after_one else (
        "4/4 busy now  utilization 100% last 2 s")
    assert expected in out, out


async def test_a_garbled_stream_ends_with_the_field_named() -> None:
    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        bad = metrics(1.0)
        bad["metrics"]["completed"] = "lots"
        await ws.send_message(json.dumps(bad))
        await trio.sleep_forever()

    code, _, err = await monitor_against(handler)
    assert code == 1
    assert err == (
        "trioqueue monitor: the server sent a message this monitor cannot read: "
        "metrics.completed: expected a count, got 'lots'\n")


# ---------------------------------------------------------------------------- end to end


class Output:
    """A child's output, read by a thread, so that a test can wait for text with a
    deadline (and see everything read so far when it fails)."""

    def __init__(self, read: Callable[[], bytes]) -> None:
        self.text = ""
        self.changed = threading.Condition()
        self.done = False
        self.thread = threading.Thread(target=self.pump, args=(read,), daemon=True)
        self.thread.start()

    def pump(self, read: Callable[[], bytes]) -> None:
        while True:
            try:
                chunk = read()
            except OSError:  # the pty's other side closed
                chunk = b""
            with self.changed:
                if not chunk:
                    self.done = True
                else:
                    self.text += chunk.decode("utf-8", errors="replace")
                self.changed.notify_all()
            if not chunk:
                return

    def wait_for(self, test: Callable[[str], bool], what: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not test(self.text):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.done:
                    pytest.fail(f"no {what} within {timeout} s; output so far:\n{self.text}")
                self.changed.wait(remaining)
            return self.text

    def wait_text(self, needle: str, start: int = 0, timeout: float = 30.0) -> int:
        """Where ``needle`` appears at or after ``start``; the index just after it."""
        text = self.wait_for(lambda t: needle in t[start:], repr(needle), timeout)
        return text.index(needle, start) + len(needle)

    def join(self, timeout: float = 10.0) -> None:
        self.thread.join(timeout)


def monitor_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRIOQUEUE_URL", "TRIOQUEUE_TOKEN", "COLUMNS", "LINES")}
    return {**env, "PYTHONUNBUFFERED": "1", "TERM": "xterm"}


def stop(proc: subprocess.Popen[Any]) -> None:
    """Kill ``proc`` if it still runs; close its pipes."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(20)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with running_server("--workers", "2") as srv:
        yield srv


def port_of(server: Server) -> str:
    return server.url.rsplit(":", 1)[1]


def test_plain_output_says_when_the_connection_drops_and_comes_back() -> None:
    proc = None
    try:
        with running_server("--workers", "2") as first:
            url, port = first.url, port_of(first)
            proc = subprocess.Popen(
                [sys.executable, "-m", "trioqueue", "monitor", "--url", url,
                 "--interval", "0.2"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=monitor_env(),
            )
            assert proc.stdout is not None
            out = Output(proc.stdout.readline)
            at = out.wait_text(f"watching {url}\n")
            assert first.stop() == 0
            at = out.wait_text("disconnected: the server is shutting down; "
                               "reconnecting in 0.5 s\n", at)
            # Nobody listens now: attempts back off.
            at = out.wait_text("disconnected: connection refused; reconnecting in 1 s\n", at)
        with running_server("--workers", "2", "--port", port) as second:
            assert second.url == url
            at = out.wait_text(f"reconnected to {url} after ", at)
            # and the stream is live again: a failure on the new server shows.
            assert run_cli("enqueue", "fail", "--max-retries", "0", "--id", "after-restart",
                           "--url", url).returncode == 0
            out.wait_text("| completed 0 failed 1\n", at)
            proc.send_signal(signal.SIGINT)  # Ctrl+C
            assert proc.wait(20) == 0
            out.join()
            assert proc.stderr is not None
            assert proc.stderr.read() == b""
        text = out.text
        assert "recent failures, newest first:" in text  # the whole view at the end
        assert "fail after-restart attempt 1: DemoFailure" in text
    finally:
        if proc is not None:
            stop(proc)


@contextmanager
def on_a_terminal(*args: str, columns: int, rows: int = 24
                  ) -> Iterator[tuple[subprocess.Popen[bytes], Output, Callable[[int], None]]]:
    """``trioqueue monitor ARGS`` with a pseudo-terminal as its stdout; yields the
    process, its output and a function that resizes the terminal to N columns."""
    master, slave = pty.openpty()

    def resize(width: int) -> None:
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, width, 0, 0))

    resize(columns)
    proc = subprocess.Popen(
        [sys.executable, "-m", "trioqueue", "monitor", *args],
        stdin=slave, stdout=slave, stderr=subprocess.PIPE, env=monitor_env(),
    )
    os.close(slave)
    try:
        yield proc, Output(lambda: os.read(master, 65536)), resize
    finally:
        stop(proc)
        os.close(master)


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def frames(text: str) -> list[list[str]]:
    """The screens drawn: each starts at the cursor's home; escapes and CRs removed."""
    return [ANSI.sub("", frame).replace("\r", "").split("\n")
            for frame in text.split("\x1b[H")[1:]]


def test_on_a_terminal_every_line_fits_and_a_resize_is_followed(server: Server) -> None:
    with on_a_terminal("--url", server.url, "--interval", "0.1", columns=40) as (
            proc, out, resize):
        out.wait_for(lambda t: sum("utilization" in "".join(f) for f in frames(t)) >= 3,
                     "three frames with figures")
        narrow = frames(out.text)
        resize(100)
        mark = len(out.text)
        out.wait_for(lambda t: any(len(line) > 40 for f in frames(t[mark:]) for line in f),
                     "a frame wider than 40 columns after the resize")
        wide = frames(out.text[mark:])
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
        out.join()
    for frame in narrow:
        assert_fits(frame, 40, height=24)
    assert "rates" in "\n".join(narrow[-1])
    for frame in wide:
        assert_fits(frame, 100, height=24)
    assert out.text.endswith("\x1b[?25h")  # the cursor is shown again


def test_on_a_terminal_a_drop_is_shown() -> None:
    with running_server("--workers", "1") as srv:
        with on_a_terminal("--url", srv.url, "--interval", "0.1", columns=40) as (
                proc, out, _):
            out.wait_for(lambda t: any("connected" in f for f in frames(t)),
                         "a connected frame")
            mark = len(out.text)
            assert srv.stop() == 0
            out.wait_for(lambda t: any("disconnected: the server is shutting down; "
                                       "reconnecting" in " ".join(f)
                                       for f in frames(t[mark:])),
                         "a frame saying it is disconnected")
            proc.send_signal(signal.SIGINT)
            assert proc.wait(20) == 0
    for frame in frames(out.text):
        assert_fits(frame, 40)


def test_a_wrong_token_is_a_refusal_exit_1() -> None:
    with running_server("--token", "sekrit") as srv:
        result = run_cli("monitor", "--url", srv.url, "--token", "wrong")
        assert result.returncode == 1
        assert result.stderr == (
            "trioqueue monitor: the server refused the event stream: missing or wrong "
            "bearer token (give --token or set TRIOQUEUE_TOKEN)\n")
        ok = run_cli("monitor", "--once", "--url", srv.url, "--token", "sekrit")
        assert ok.returncode == 0, ok.stderr


def test_once_prints_one_view_with_current_rates(server: Server) -> None:
    assert run_cli("enqueue", "echo", "[1]", "--count", "20", "--url", server.url
                   ).returncode == 0
    result = run_cli("monitor", "--once", "--url", server.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"trioqueue monitor  {server.url}  up ")
    assert "\nconnected\n" in result.stdout
    assert re.search(r"\nrates     last [0-9.]+ s  enqueued [0-9.,]+/s", result.stdout)
    assert "\x1b" not in result.stdout  # plain text when not on a terminal


def test_once_shows_the_failures_from_before_it_connected(server: Server) -> None:
    """A user's first look after something failed: ``--once`` said "recent failures:
    none" for a job that had failed a second before, since only the stream fed it."""
    failed = run_cli("enqueue", "fail", "--max-retries", "0", "--id", "failed-before",
                     "--wait", "--url", server.url)
    assert failed.returncode == 1, failed.stderr
    result = run_cli("monitor", "--once", "--url", server.url)
    assert result.returncode == 0, result.stderr
    assert "recent failures, newest first:" in result.stdout
    assert re.search(r"failed fail failed-before attempt 1", result.stdout), result.stdout


def test_once_without_a_server_exits_1() -> None:
    result = run_cli("monitor", "--once", "--url", "http://127.0.0.1:9")
    assert result.returncode == 1
    assert result.stderr == "trioqueue monitor: cannot reach the server: connection refused\n"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--interval", "0"], "--interval: expected seconds > 0, got 0.0"),
        (["--window", "nan"], "--window: expected seconds > 0, got nan"),
        (["--duration", "-1"], "--duration: expected seconds >= 0, got -1.0"),
    ],
)
def test_bad_flags_are_usage_errors(flags: list[str], message: str) -> None:
    result = run_cli("monitor", *flags, "--url", "http://127.0.0.1:9")
    assert result.returncode == 2
    assert result.stderr == f"trioqueue monitor: {message}\n"


def test_duration_ends_with_the_whole_view(server: Server) -> None:
    """Plain output (a log): one line per interval, failures in the view at the end."""
    with subprocess.Popen(
        [sys.executable, "-m", "trioqueue", "monitor", "--url", server.url, "--interval",
         "0.3", "--duration", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=monitor_env(),
    ) as proc:
        try:
            assert proc.stdout is not None
            assert "watching" in proc.stdout.readline().decode()  # events from now on count
            assert run_cli("enqueue", "fail", "--max-retries", "0", "--url", server.url
                           ).returncode == 0
            out, err = proc.communicate(timeout=30)
        finally:
            stop(proc)
    assert proc.returncode == 0, err
    text = out.decode()
    assert "completed" in text
    assert "recent failures, newest first:" in text
    assert "on purpose" in text
