"""The dashboard without a browser: its routes and headers, the history ring and message,
the link ``trioqueue serve`` prints, and the rules its files keep (no inline code, no HTML
built from strings, relative URLs only).  The browser tests are in tests/browser/.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import pty
import queue as queue_module
import re
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioqueue
from trioqueue.demo import registry as demo_registry
from trioqueue.server import App, ServerSettings
from trioqueue.testing import CSP, HISTORY_FIELDS, EventEncoder, MetricsHistory, parse_event_filter

from .channels import drain

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_DIR = ROOT / "trioqueue" / "_dashboard"

# Exactly the policy docs/dashboard.md (and the design's DASHBOARD.md) give.
EXPECTED_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


async def call(app: App, method: str, path: str, headers: dict[str, str] | None = None,
               ) -> tuple[int, dict[bytes, bytes], bytes]:
    """One HTTP request to the ASGI app in-process."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        await trio.lowlevel.checkpoint()
        sent.append(message)

    hdrs = [(k.lower().encode(), v.encode()) for k, v in
            {"host": "127.0.0.1:8080", **(headers or {})}.items()]
    scope = {"type": "http", "method": method, "path": path, "headers": hdrs,
             "query_string": b""}
    await app(scope, receive, send)
    start, content = sent
    return start["status"], dict(start["headers"]), content["body"]


@pytest.fixture
async def queue() -> AsyncIterator[trioqueue.JobQueue]:
    config = trioqueue.QueueConfig(workers=1, shutdown_timeout=0)
    async with trioqueue.open_queue(demo_registry, config) as q:
        yield q


# ---------------------------------------------------------------------------- the shell


@pytest.mark.parametrize(
    ("path", "name", "content_type"),
    [
        ("/", "index.html", b"text/html; charset=utf-8"),
        ("/dashboard.js", "dashboard.js", b"text/javascript; charset=utf-8"),
        ("/dashboard.css", "dashboard.css", b"text/css; charset=utf-8"),
    ],
)
async def test_shell_files_are_served_with_strict_headers(
    queue: trioqueue.JobQueue, path: str, name: str, content_type: bytes
) -> None:
    app = App(queue)
    status, headers, body = await call(app, "GET", path)
    assert status == 200
    assert headers[b"content-type"] == content_type
    assert headers[b"content-security-policy"] == EXPECTED_CSP.encode()
    assert headers[b"x-content-type-options"] == b"nosniff"
    assert headers[b"referrer-policy"] == b"no-referrer"
    assert headers[b"cache-control"] == b"no-cache"
    assert body == (DASHBOARD_DIR / name).read_bytes()
    assert int(headers[b"content-length"]) == len(body)
    status, headers, _ = await call(app, "HEAD", path)
    assert status == 200
    assert headers[b"content-security-policy"] == EXPECTED_CSP.encode()


def test_the_policy_constant_is_the_documented_one() -> None:
    assert CSP == EXPECTED_CSP
    assert EXPECTED_CSP in (ROOT / "docs" / "dashboard.md").read_text()


async def test_the_shell_needs_no_token_and_the_data_does(queue: trioqueue.JobQueue) -> None:
    app = App(queue, ServerSettings(token="s3cret"))
    for path in ("/", "/dashboard.js", "/dashboard.css"):
        status, _, body = await call(app, "GET", path)
        assert status == 200, path
        assert b"s3cret" not in body
    for path in ("/jobs", "/metrics", "/jobs/x", "/openapi.json"):
        status, _, _ = await call(app, "GET", path)
        assert status == 401, path
    status, _, _ = await call(app, "GET", "/jobs", {"authorization": "Bearer s3cret"})
    assert status == 200


async def test_the_shell_keeps_the_host_and_origin_checks(queue: trioqueue.JobQueue) -> None:
    app = App(queue)
    status, _, _ = await call(app, "GET", "/", {"host": "rebind.evil.example"})
    assert status == 400
    status, _, _ = await call(app, "GET", "/dashboard.js", {"origin": "http://evil.example"})
    assert status == 403
    status, _, _ = await call(app, "POST", "/")
    assert status == 405


def test_package_data_is_where_the_server_reads_it() -> None:
    found = resources.files("trioqueue").joinpath("_dashboard")
    for name in ("index.html", "dashboard.js", "dashboard.css"):
        assert found.joinpath(name).read_bytes() == (DASHBOARD_DIR / name).read_bytes()


# ---------------------------------------------------------------------------- the files' rules


def test_the_page_has_no_inline_code_and_only_relative_urls() -> None:
    html = (DASHBOARD_DIR / "index.html").read_text()
    scripts = re.findall(r"<script\b[^>]*>", html)
    assert scripts == ['<script src="dashboard.js" defer>'], scripts
    assert "<style" not in html
    assert not re.search(r"\sstyle\s*=", html), "inline style attribute"
    assert not re.search(r"\son[a-z]+\s*=", html), "inline event handler"
    for url in re.findall(r'(?:src|href|action)="([^"]*)"', html):
        assert url in ("dashboard.js", "dashboard.css", "data:,"), url
    assert "http" not in html.replace("http-equiv", "")


def test_the_script_never_builds_html_or_evaluates_strings() -> None:
    js = (DASHBOARD_DIR / "dashboard.js").read_text()
    code = re.sub(r"//[^\n]*", "", js)  # comments may name what the code avoids
    for banned in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                   "eval(", "new Function", "setAttribute(\"on", "javascript:",
                   "http://", "https://", "localStorage"):
        assert banned not in code, banned
    assert not re.search(r"set(?:Timeout|Interval)\(\s*[\"'`]", code), "string timer"
    assert not re.search(r"fetch\(\s*[\"'`]/", code), "absolute fetch path"
    assert 'new URL("events", window.location.href)' in code
    assert "textContent" in code


def test_the_stylesheet_loads_nothing() -> None:
    css = (DASHBOARD_DIR / "dashboard.css").read_text()
    assert "url(" not in css
    assert "@import" not in css


# ---------------------------------------------------------------------------- history


def test_history_ring_keeps_the_newest_samples() -> None:
    history = MetricsHistory(size=3)
    for i in range(5):
        history.record({"completed": i, "failed": 0, "enqueued": i, "queued": {}}, 100.0 + i)
    samples = history.samples()
    assert [s["at"] for s in samples] == [102.0, 103.0, 104.0]
    assert [s["completed"] for s in samples] == [2, 3, 4]
    assert set(samples[0]) == {"at", *HISTORY_FIELDS}
    message = history.message(1.0)
    assert message["type"] == "history"
    assert message["interval"] == 1.0
    assert message["samples"] == samples


async def test_history_samples_every_interval(autojump_clock: trio.testing.MockClock) -> None:
    config = trioqueue.QueueConfig(workers=1, shutdown_timeout=0, metrics_interval=0.5)
    history = MetricsHistory(size=4)
    closed = trio.Event()
    async with trioqueue.open_queue(demo_registry, config) as q:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(history.run, q, closed)
            start = trio.current_time()
            await q.enqueue("echo", 1)
            await trio.sleep(0.25)
            await q.enqueue("echo", 2)
            await trio.sleep(2.0)
            closed.set()
        assert trio.current_time() - start == pytest.approx(2.25)  # run ended with `closed`
    samples = history.samples()
    assert len(samples) == 4  # of 5 taken (at 0, 0.5, ... 2.0), the oldest was dropped
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(samples)]
    assert gaps == pytest.approx([0.5] * 3)
    assert samples[-1]["enqueued"] == 2
    assert samples[-1]["completed"] == 2


def test_the_history_and_max_rate_options_of_the_event_filter() -> None:
    assert parse_event_filter({"history": "true"}).history
    assert not parse_event_filter({}).history
    with pytest.raises(ValueError, match="history"):
        parse_event_filter({"history": "maybe"})
    assert parse_event_filter({"max_rate": "100"}).max_rate == 100
    # The job event types go to subscribe(types=...): the queue builds no others.
    assert parse_event_filter({"types": "failed,metrics,lagged"}).job_types == {"failed"}
    assert parse_event_filter({"types": "metrics"}).job_types == frozenset()
    assert parse_event_filter({}).job_types is None
    assert parse_event_filter({}).max_rate is None
    for bad in ("0", "-1", "1.5", "", "1000001", "9" * 5000, "١٢"):
        with pytest.raises(ValueError, match="max_rate"):
            parse_event_filter({"max_rate": bad})


# ---------------------------------------------------------------------------- max_rate


async def test_max_rate_thins_job_events_and_counts_the_rest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A subscriber with ``max_rate`` gets a second's worth at once, then ``max_rate`` a
    second; every event it did not get is counted in a ``lagged``; a subscriber without
    a rate beside it still gets every event."""
    config = trioqueue.QueueConfig(workers=2, capacity=1000, shutdown_timeout=0)
    async with trioqueue.open_queue(demo_registry, config) as q:
        async with q.subscribe(10_000) as everything, \
                q.subscribe(10_000, max_rate=20) as thinned:
            jobs = [q.enqueue_nowait("echo", i) for i in range(300)]  # 3 events each
            for job in jobs:
                await q.wait(job.id)
            await trio.sleep(2.0)  # two seconds later: 40 more tokens, nothing to spend
            await q.wait(q.enqueue_nowait("echo", "last").id)  # 3 more events, which fit
            all_events = drain(everything)
            got = drain(thinned)
    kinds = [e.type for e in all_events]
    assert len(kinds) == 3 * 301
    assert "lagged" not in kinds
    job_events = [e for e in got if e.type != "lagged"]
    dropped = sum(e.dropped or 0 for e in got if e.type == "lagged")
    assert len(job_events) + dropped == 3 * 301  # nothing lost without being counted
    elapsed = trio.current_time()
    assert len(job_events) <= 20 + 20 * elapsed
    assert [e.job_id for e in job_events[-3:]] == [all_events[-1].job_id] * 3


async def test_max_rate_passes_an_event_as_soon_as_a_token_is_due(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Over its rate a subscriber's events are only counted; the next one passes the
    moment its bucket holds a token again, not before, preceded by the exact count."""
    config = trioqueue.QueueConfig(workers=1, capacity=1000, shutdown_timeout=0)
    async with trioqueue.open_queue(demo_registry, config) as q:
        async with q.subscribe(10_000, max_rate=4) as thinned:
            start = trio.current_time()
            for i in range(10):  # a burst of 4 passes, 6 are counted
                q.enqueue_nowait("echo", i, delay=60)
            await trio.sleep_until(start + 0.2)  # 0.8 of a token: none yet
            q.enqueue_nowait("echo", "early", delay=60)
            await trio.sleep_until(start + 0.25)  # one token
            q.enqueue_nowait("echo", "due", delay=60)
            q.enqueue_nowait("echo", "after", delay=60)  # spent: counted
            await trio.sleep_until(start + 1.0)  # three tokens
            last = [q.enqueue_nowait("echo", f"last {i}", delay=60).id for i in range(3)]
            got = drain(thinned)
    kinds = [(e.type, e.dropped) if e.type == "lagged" else e.type for e in got]
    assert kinds == ["scheduled"] * 4 + [("lagged", 7), "scheduled", ("lagged", 1)] + [
        "scheduled"] * 3
    assert [e.job_id for e in got[-3:]] == last


async def test_a_subscriber_without_max_rate_gets_every_event_beside_a_thinned_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """One joining while every other subscriber is over its rate gets every event from
    then on, in order; the thinned one still counts every event it did not get."""
    config = trioqueue.QueueConfig(workers=2, capacity=1000, shutdown_timeout=0)
    async with trioqueue.open_queue(demo_registry, config) as q:
        async with q.subscribe(10_000, max_rate=3) as thinned:
            for i in range(5):
                await q.wait(q.enqueue_nowait("echo", i).id)
            async with q.subscribe(10_000) as everything:
                jobs = [q.enqueue_nowait("echo", i) for i in range(50)]
                for job in jobs:
                    await q.wait(job.id)
                seen = drain(everything)
            await trio.sleep(1.0)  # 3 tokens: the last job's events all pass
            await q.wait(q.enqueue_nowait("echo", "last").id)
            got = drain(thinned)
    assert [e.type for e in seen if e.job_id == jobs[7].id] == [
        "enqueued", "started", "completed"]
    assert len(seen) == 3 * 50
    assert "lagged" not in {e.type for e in seen}
    assert [e.seq for e in seen] == sorted(e.seq for e in seen)
    job_events = [e for e in got if e.type != "lagged"]
    dropped = sum(e.dropped or 0 for e in got if e.type == "lagged")
    assert len(job_events) + dropped == 3 * 56
    assert [e.type for e in job_events[-3:]] == ["enqueued", "started", "completed"]


async def test_a_metrics_event_brings_the_count_of_events_over_max_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With no job event since, a ``metrics`` snapshot is what tells a thinned subscriber
    what it missed (a ``lagged`` just before it): the page then reloads its lists."""
    config = trioqueue.QueueConfig(workers=1, capacity=1000, shutdown_timeout=0)
    async with trioqueue.open_queue(demo_registry, config) as q:
        async with q.subscribe(10_000, metrics=True, max_rate=1) as thinned:
            for i in range(5):
                q.enqueue_nowait("echo", i, delay=60)
            await trio.sleep(1.5)  # one metrics tick
            got = drain(thinned)
    kinds = [(e.type, e.dropped) if e.type == "lagged" else e.type for e in got]
    assert kinds == ["metrics", "scheduled", ("lagged", 4), "metrics"]


async def test_types_choose_the_job_events_and_no_other_is_built(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``subscribe(types=...)`` takes only job events of those types; with no other
    subscriber the queue builds no other event (the ones it gets are numbered one after
    the other, while 40 other jobs ran between them).  Bad types are refused by name."""
    config = trioqueue.QueueConfig(workers=2, capacity=1000, shutdown_timeout=0,
                                   max_retries=0)
    async with trioqueue.open_queue(demo_registry, config) as q:
        for bad in (["nope"], ["failed", "metrics"]):
            with pytest.raises(ValueError, match="types: unknown job event type"):
                async with q.subscribe(types=bad):
                    pass  # pragma: no cover
        with pytest.raises(ValueError, match="types: expected job event types, got 5"):
            async with q.subscribe(types=5):  # type: ignore[arg-type]
                pass  # pragma: no cover
        async with q.subscribe(types="failed") as failures:
            for i in range(3):
                jobs = [q.enqueue_nowait("echo", n) for n in range(20)]
                jobs.append(q.enqueue_nowait("fail", i))
                for job in jobs:
                    await q.wait(job.id)
            got = drain(failures)
    assert [(e.type, e.status) for e in got] == [("failed", "failed")] * 3
    assert [e.seq for e in got] == [got[0].seq, got[0].seq + 1, got[0].seq + 2]


async def test_a_typed_subscriber_beside_a_thinned_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A subscriber of failures with a rate is not thinned by the completions it does not
    take, nor told of them in a ``lagged``; one without a rate that takes only failures
    (``trioqueue monitor``) gets each, while a thinned subscriber of everything beside
    them still counts every event it did not get, and none it was never meant to."""
    config = trioqueue.QueueConfig(workers=2, capacity=1000, shutdown_timeout=0,
                                   max_retries=0)
    async with trioqueue.open_queue(demo_registry, config) as q:
        async with q.subscribe(10_000, types={"failed"}, max_rate=2) as rated, \
                q.subscribe(10_000, types={"failed", "retrying"}) as monitor, \
                q.subscribe(10_000, max_rate=3) as thinned:
            fails = []
            for i in range(3):
                jobs = [q.enqueue_nowait("echo", n) for n in range(100)]
                fails.append(q.enqueue_nowait("fail", i))
                for job in [*jobs, fails[-1]]:
                    await q.wait(job.id)
            await trio.sleep(1.0)  # tokens again: the last job's events all pass
            fails.append(q.enqueue_nowait("fail", "last"))
            await q.wait(fails[-1].id)
            got_rated = drain(rated)
            got_monitor = drain(monitor)
            got = drain(thinned)
    # A burst of 2; the third failure is counted, and nothing else.
    assert [(e.type, e.job_id, e.dropped) for e in got_rated] == [
        ("failed", fails[0].id, None), ("failed", fails[1].id, None),
        ("lagged", None, 1), ("failed", fails[3].id, None)]
    assert [e.job_id for e in got_monitor] == [j.id for j in fails]
    job_events = [e for e in got if e.type != "lagged"]
    dropped = sum(e.dropped or 0 for e in got if e.type == "lagged")
    assert len(job_events) + dropped == 3 * (3 * 101 + 1)
    assert [e.type for e in job_events[-3:]] == ["enqueued", "started", "failed"]


def test_a_lagged_event_never_stands_in_for_the_event_after_it() -> None:
    """``lagged`` carries the seq of the event it precedes; the encoder's cache (by seq)
    once sent the lagged text in place of that event (a metrics snapshot, say)."""
    encode = EventEncoder()
    lagged = trioqueue.Event(seq=5, type="lagged", at=1.0, dropped=3)
    metrics = trioqueue.Event(seq=5, type="metrics", at=1.0, metrics={"completed": 1})
    assert json.loads(encode(lagged))["type"] == "lagged"
    assert json.loads(encode(metrics))["type"] == "metrics"
    assert json.loads(encode(lagged))["dropped"] == 3


async def test_max_rate_must_be_a_positive_number(queue: trioqueue.JobQueue) -> None:
    for bad in (0, -1, float("nan"), float("inf"), True, "10"):
        with pytest.raises(ValueError, match="max_rate"):
            async with queue.subscribe(max_rate=bad):  # type: ignore[arg-type]
                pass  # pragma: no cover


async def test_websocket_sends_the_history_first(queue: trioqueue.JobQueue) -> None:
    app = App(queue)
    app.history.record({"completed": 1, "enqueued": 1}, 10.0)
    app.history.record({"completed": 5, "enqueued": 6}, 11.0)
    sent: list[dict[str, Any]] = []
    got_two = trio.Event()
    leave = trio.Event()
    connected = False

    async def receive() -> dict[str, Any]:
        nonlocal connected
        if not connected:
            connected = True
            return {"type": "websocket.connect"}
        await leave.wait()
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict[str, Any]) -> None:
        await trio.lowlevel.checkpoint()
        sent.append(message)
        if sum(m["type"] == "websocket.send" for m in sent) >= 2:
            got_two.set()

    scope = {"type": "websocket", "path": "/events", "headers": [(b"host", b"127.0.0.1")],
             "query_string": b"types=metrics,completed&history=true"}
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(app, scope, receive, send)
            await got_two.wait()
            leave.set()
    texts = [json.loads(m["text"]) for m in sent if m["type"] == "websocket.send"]
    assert texts[0]["type"] == "history"
    assert [s["completed"] for s in texts[0]["samples"]] == [1, 5]
    assert texts[1]["type"] == "metrics"


# ---------------------------------------------------------------------------- the link


def _first_lines(tmp_path: Path, token: str, *, tty: bool) -> list[str]:
    """The first two lines ``serve --token`` prints, to a terminal (a pty) or a pipe."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIOQUEUE_")}
    env["PYTHONUNBUFFERED"] = "1"
    if tty:
        parent, child = pty.openpty()
        stdout: Any = open(parent, encoding="utf-8", errors="replace")
        target: Any = child
    else:
        target = subprocess.PIPE
    with open(tmp_path / "err", "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "trioqueue", "serve", "--port", "0", "--token", token],
            stdout=target, stderr=err, text=True, env=env)
    if tty:
        os.close(child)
    else:
        assert proc.stdout is not None
        stdout = proc.stdout
    lines: queue_module.Queue[str] = queue_module.Queue()

    def read() -> None:
        with contextlib.suppress(OSError):  # EIO: the pty's other end closed
            for line in stdout:
                lines.put(line.strip())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        got = []
        with contextlib.suppress(queue_module.Empty):
            while len(got) < 2:
                got.append(lines.get(timeout=20))
        assert len(got) == 2, (got, (tmp_path / "err").read_text())
        return got
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(10)  # at the end of the output
        stdout.close()
        assert token not in (tmp_path / "err").read_text()


def test_serve_prints_the_dashboard_link_with_the_token_in_the_fragment(tmp_path: Path) -> None:
    """To a terminal: the link with the token, in the fragment."""
    got = _first_lines(tmp_path, "t0k&n/+x", tty=True)
    url = got[0].split()[-1]
    assert got[1] == f"trioqueue dashboard: {url}/#token=t0k%26n%2F%2Bx"
    assert "?token" not in got[1]


def test_serve_keeps_the_token_out_of_an_output_that_is_not_a_terminal(tmp_path: Path) -> None:
    """A service's stdout goes to a journal or a log collector: the link, not the token."""
    got = _first_lines(tmp_path, "s3cr3t-TOKEN", tty=False)
    url = got[0].split()[-1]
    assert got[1] == f"trioqueue dashboard: {url}/ (open {url}/#token=<the token>)"


def test_the_server_takes_every_event_type_the_dashboard_asks_for() -> None:
    """The page asks for its base types and, first, the optional ones (``progress``,
    ``recovered``); a server that refuses any of them makes it drop all the optional
    ones, progress included.  This server takes them all."""
    js = (ROOT / "trioqueue" / "_dashboard" / "dashboard.js").read_text()
    asked: set[str] = set()
    for name in ("BASE_TYPES", "OPTIONAL_TYPES"):
        found = re.search(rf"const {name} = \[([^\]]*)\]", js)
        assert found is not None, name
        asked |= set(re.findall(r'"([a-z_]+)"', found.group(1)))
    assert {"progress", "recovered", "completed", "metrics"} <= asked
    assert parse_event_filter({"types": ",".join(sorted(asked))}).types == asked
