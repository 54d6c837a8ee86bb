"""The server's POST rate with one dashboard open against none.

``python -m benchmarks.dashboard_load [--rounds N] [--seconds S] [--client K]``, and the
case ``http/post-dashboard`` of ``python -m benchmarks``.  ``--paced RATE`` measures
instead the server's CPU at a fixed ``RATE`` of POSTs a second, with and without a
dashboard: what the dashboard itself costs, which a shared machine disturbs less than a
rate at saturation.  ``--screenshot PNG`` takes
docs/img/dashboard.png instead (the overview after a few seconds of ~1,000 jobs/s).

Each measurement starts a fresh ``trioqueue serve`` (demo tasks, 4 workers), opens the
dashboard or not, then drives ``POST /jobs`` (task ``echo``) as fast as the server
answers: ``connections`` keep-alive connections from threads of this process, each with
``window`` requests in flight (pipelined), built once as bytes, so the load costs the
client little CPU.  Runs with and without a dashboard alternate (none first in even
rounds, the dashboard first in odd ones), and the medians are compared.

The dashboard (``--client``):

- ``browser``: the real page in headless Chromium (``/usr/bin/chromium`` via Playwright,
  the flags of tests/browser): its websocket, its HTTP reloads, and its CPU, which on a
  small machine competes with the server's.
- ``websocket``: what the page asks of the server and no more: the same ``/events``
  subscription read as fast as it comes, and the page's list reloads on ``lagged`` (at
  most one a second).  The server's own cost, without a browser's CPU beside it.
- ``auto`` (default): ``browser`` where Chromium and Playwright are installed, else
  ``websocket``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from .common import Skip
from .sys_http import _cpu_seconds, _server

CHROMIUM = os.environ.get("TRIOQUEUE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--disable-quic", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,800",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
]
EVENT_TYPES = ("enqueued,scheduled,started,completed,retrying,failed,cancelled,requeued,"
               "metrics")
"""What the page subscribes to (dashboard.js BASE_TYPES)."""
MAX_RATE = 20
"""Job events a second the page asks for at most (dashboard.js MAX_RATE); the websocket
client's ``--max-rate`` changes it (to compare)."""
RELOADS = ("/jobs?limit=50", "/jobs?status=failed&limit=200",
           "/jobs?status=processing&limit=1000", "/tasks")
"""What the page fetches on connect (its overview tab open)."""
RELOADS_LAGGED = ("/jobs?status=failed&limit=200",)
"""What it fetches after a ``lagged`` (at most once a second): the dead letters (the lists
of the Jobs and Workers tabs only while those are shown)."""


def _browser_available() -> str | None:
    """Why the browser client cannot run here, or None."""
    import importlib.util

    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install -e '.[test]')"
    return None


# ---------------------------------------------------------------------------- load


def _request(port: int, n: int) -> bytes:
    body = b'{"task":"echo","payload":{"n":%d}}' % n
    return (b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (port, len(body), body))


def _answers(buf: bytearray, statuses: dict[int, int]) -> int:
    """Take whole responses off the front of ``buf``; count them by status."""
    done = 0
    while True:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return done
        head = bytes(buf[:end])
        match = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        length = int(match[1]) if match else 0
        if len(buf) < end + 4 + length:
            return done
        del buf[:end + 4 + length]
        status = int(head[9:12])
        statuses[status] = statuses.get(status, 0) + 1
        done += 1


def post_load(port: int, seconds: float, connections: int = 8, window: int = 8
              ) -> dict[str, Any]:
    """POST /jobs as fast as the server answers for ``seconds``; the rate of 2xx."""
    stop = threading.Event()
    counts: list[dict[int, int]] = [{} for _ in range(connections)]
    errors: list[str] = []
    batch = b"".join(_request(port, i) for i in range(window))

    def run(k: int) -> None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                buf = bytearray()
                while not stop.is_set():
                    sock.sendall(batch)
                    seen = 0
                    while seen < window:
                        data = sock.recv(262144)
                        if not data:
                            raise ConnectionError("the server closed the connection")
                        buf += data
                        seen += _answers(buf, counts[k])
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run, args=(k,), daemon=True)
               for k in range(connections)]
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(30)
    elapsed = time.perf_counter() - t0
    statuses: dict[int, int] = {}
    for c in counts:
        for status, n in c.items():
            statuses[status] = statuses.get(status, 0) + n
    ok = sum(n for status, n in statuses.items() if 200 <= status < 300)
    if errors:
        raise RuntimeError(f"load connections failed: {errors[:3]}")
    return {"requests_per_s": ok / elapsed, "elapsed_s": elapsed,
            "statuses": {str(k): v for k, v in sorted(statuses.items())}}


# ---------------------------------------------------------------------------- dashboards


@contextlib.contextmanager
def _no_dashboard(base: str) -> Iterator[dict[str, Any]]:
    yield {}


@contextlib.contextmanager
def _browser_dashboard(base: str) -> Iterator[dict[str, Any]]:
    from playwright.sync_api import expect, sync_playwright

    seen: dict[str, Any] = {"console_errors": 0}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("console", lambda m: seen.__setitem__(
                "console_errors", seen["console_errors"] + (m.type == "error")))
            page.goto(base + "/")
            expect(page.locator("#badge")).to_have_text("live", timeout=15_000)
            yield seen
            seen["page_completed"] = page.locator("#m-completed").inner_text()
            seen["page_missed"] = page.locator("#freshness").inner_text()
        finally:
            browser.close()


@contextlib.contextmanager
def _websocket_dashboard(base: str, max_rate: int | None = None) -> Iterator[dict[str, Any]]:
    """The page's subscription and reloads, without a browser (a thread running trio)."""
    import httpx
    import trio
    from trio_websocket import open_websocket_url

    seen: dict[str, Any] = {"messages": 0, "lagged_dropped": 0, "reloads": 0}
    ready = threading.Event()
    stop = threading.Event()
    url = (base.replace("http://", "ws://") + "/events?types=" + EVENT_TYPES
           + f"&history=true&max_rate={max_rate or MAX_RATE}")

    async def main() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http, \
                open_websocket_url(url, max_message_size=1 << 24) as ws:
            last_reload = 0.0

            async def reload(paths: tuple[str, ...]) -> None:
                seen["reloads"] += 1
                for path in paths:
                    (await http.get(path)).raise_for_status()

            await reload(RELOADS)
            ready.set()
            while not stop.is_set():
                with trio.move_on_after(0.2):
                    event = json.loads(await ws.get_message())
                    seen["messages"] += 1
                    if event.get("type") == "lagged":
                        seen["lagged_dropped"] += int(event.get("dropped") or 0)
                        if trio.current_time() - last_reload >= 1.0:
                            last_reload = trio.current_time()
                            await reload(RELOADS_LAGGED)

    thread = threading.Thread(target=lambda: trio.run(main), daemon=True)
    thread.start()
    if not ready.wait(15):
        raise RuntimeError("the websocket dashboard did not connect within 15 s")
    try:
        yield seen
    finally:
        stop.set()
        thread.join(15)


# ---------------------------------------------------------------------------- the case


def _opener(kind: str, client: str, base: str, max_rate: int | None
            ) -> contextlib.AbstractContextManager[dict[str, Any]]:
    if kind == "none":
        return _no_dashboard(base)
    if client == "browser":
        return _browser_dashboard(base)
    return _websocket_dashboard(base, max_rate)


def _descendants_cpu_seconds(but: int) -> float:
    """utime + stime of this process's descendants (the browser client's Playwright
    driver and Chromium), except the process ``but`` (the server) and its own."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[tuple[int, float]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(
            (int(entry), (int(fields[11]) + int(fields[12])) / tick))
    total = 0.0
    todo = [os.getpid()]
    while todo:
        for pid, cpu in children.get(todo.pop(), ()):
            if pid != but:
                total += cpu
                todo.append(pid)
    return total


def _measure(kind: str, client: str, seconds: float, workers: int,
             max_rate: int | None = None) -> dict[str, Any]:
    with _server(workers) as (base, pid):
        port = int(base.rsplit(":", 1)[1])
        with _opener(kind, client, base, max_rate) as seen:
            post_load(port, min(0.5, seconds / 4))  # warm up: connections, first jobs
            cpu0, browser0 = _cpu_seconds(pid), _descendants_cpu_seconds(pid)
            result = post_load(port, seconds)
            result["server_cpu_s"] = _cpu_seconds(pid) - cpu0
            # Chromium's CPU (browser client; nothing otherwise): on a small machine it
            # competes with the server and the load for the same cores.
            result["browser_cpu_s"] = _descendants_cpu_seconds(pid) - browser0
        result["dashboard"] = seen
    return result


def post_dashboard(rounds: int = 3, seconds: float = 3.0, client: str = "auto",
                   workers: int = 4, max_rate: int | None = None) -> dict[str, Any]:
    """Interleaved runs with and without one dashboard; medians and their ratio."""
    if client == "auto":
        client = "browser" if _browser_available() is None else "websocket"
    elif client == "browser":
        reason = _browser_available()
        if reason is not None:
            raise Skip(reason)
    elif client != "websocket":
        raise ValueError(f"client: expected auto, browser or websocket, got {client!r}")
    runs: dict[str, list[dict[str, Any]]] = {"none": [], "dashboard": []}
    for r in range(rounds):
        order = ("none", "dashboard") if r % 2 == 0 else ("dashboard", "none")
        for kind in order:
            runs[kind].append(_measure(kind, client, seconds, workers, max_rate))
    none = statistics.median(run["requests_per_s"] for run in runs["none"])
    with_one = statistics.median(run["requests_per_s"] for run in runs["dashboard"])

    def cpu_per_post(kind: str) -> float:
        """Server CPU microseconds per answered POST: steadier than the rate on a shared
        machine, where the rate also measures what else runs."""
        return statistics.median(
            1e6 * r["server_cpu_s"] / (r["requests_per_s"] * r["elapsed_s"])
            for r in runs[kind])
    return {
        "client": client,
        "rounds": rounds,
        "seconds": seconds,
        "requests_per_s": with_one,
        "none_requests_per_s": none,
        "ratio": with_one / none if none else float("nan"),
        "cpu_us_per_post_none": cpu_per_post("none"),
        "cpu_us_per_post_dashboard": cpu_per_post("dashboard"),
        "browser_cores": statistics.median(
            r["browser_cpu_s"] / r["elapsed_s"] for r in runs["dashboard"]),
        "runs": runs,
    }


def paced_cpu(rate: int = 1000, rounds: int = 4, seconds: float = 4.0, client: str = "auto",
              workers: int = 4, max_rate: int | None = None) -> dict[str, Any]:
    """The server's CPU (fraction of a core) at ``rate`` POSTs a second, interleaved
    rounds with and without one dashboard; medians and their difference."""
    if client == "auto":
        client = "browser" if _browser_available() is None else "websocket"
    runs: dict[str, list[float]] = {"none": [], "dashboard": []}
    for r in range(rounds):
        order = ("none", "dashboard") if r % 2 == 0 else ("dashboard", "none")
        for kind in order:
            with _server(workers) as (base, pid):
                port = int(base.rsplit(":", 1)[1])
                with _opener(kind, client, base, max_rate):
                    stop = threading.Event()
                    producer = threading.Thread(target=_paced_posts, args=(port, rate, stop),
                                                daemon=True)
                    producer.start()
                    try:
                        time.sleep(1.0)  # warm up
                        cpu0, t0 = _cpu_seconds(pid), time.perf_counter()
                        time.sleep(seconds)
                        runs[kind].append((_cpu_seconds(pid) - cpu0)
                                          / (time.perf_counter() - t0))
                    finally:
                        stop.set()
                        producer.join(10)
    none = statistics.median(runs["none"])
    with_one = statistics.median(runs["dashboard"])
    return {"client": client, "rate": rate, "rounds": rounds, "seconds": seconds,
            "cpu_none": none, "cpu_dashboard": with_one, "cpu_added": with_one - none,
            "runs": runs}


# ---------------------------------------------------------------------------- screenshot


def _paced_posts(port: int, rate: int, stop: threading.Event) -> None:
    """POST about ``rate`` jobs a second until ``stop``: mostly ``echo``, one in 200 a
    ``sleep`` of 0.3 s (low priority), one in 40 a ``fail`` with no retries."""
    bodies = []
    for i in range(200):
        if i % 40 == 7:
            body = b'{"task":"fail","max_retries":0,"payload":{"n":%d}}' % i
        elif i == 3:
            body = b'{"task":"sleep","payload":{"seconds":0.3},"priority":"low"}'
        else:
            prio = (b"high", b"medium", b"medium", b"low")[i % 4]
            body = b'{"task":"echo","priority":"%s","payload":{"n":%d}}' % (prio, i)
        bodies.append(b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: "
                      b"application/json\r\nContent-Length: %d\r\n\r\n%s"
                      % (port, len(body), body))
    per_tick = max(1, rate // 100)
    statuses: dict[int, int] = {}
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        buf = bytearray()
        tick = time.monotonic()
        k = 0
        while not stop.is_set():
            batch = [bodies[(k + i) % len(bodies)] for i in range(per_tick)]
            k += per_tick
            sock.sendall(b"".join(batch))
            seen = 0
            while seen < per_tick:
                data = sock.recv(262144)
                if not data:
                    return
                buf += data
                seen += _answers(buf, statuses)
            tick += 0.01
            delay = tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)


def screenshot(path: str, rate: int = 1000, seconds: float = 50.0) -> None:
    """A PNG of the dashboard's overview after ``seconds`` of about ``rate`` jobs/s (the
    page is opened for the last few; the chart shows the rest from the server's history)."""
    from playwright.sync_api import expect, sync_playwright

    reason = _browser_available()
    if reason is not None:
        raise Skip(reason)
    with _server(4) as (base, _):
        port = int(base.rsplit(":", 1)[1])
        stop = threading.Event()
        producer = threading.Thread(target=_paced_posts, args=(port, rate, stop),
                                    daemon=True)
        producer.start()
        try:
            time.sleep(seconds - 5)  # the server's history fills: the chart has a past
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                            args=CHROMIUM_ARGS)
                try:
                    page = browser.new_page(viewport={"width": 1280, "height": 800})
                    page.goto(base + "/")
                    expect(page.locator("#badge")).to_have_text("live", timeout=15_000)
                    time.sleep(5)
                    page.screenshot(path=path)
                finally:
                    browser.close()
        finally:
            stop.set()
            producer.join(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.dashboard_load",
        description="The server's POST rate with one dashboard open against none.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--client", choices=("auto", "browser", "websocket"), default="auto")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--json", help="write the result here too")
    parser.add_argument("--paced", type=int, metavar="RATE",
                        help="instead: the server's CPU at RATE POSTs/s, with and without")
    parser.add_argument("--max-rate", type=int,
                        help=f"the websocket client's max_rate (default {MAX_RATE}, the page's)")
    parser.add_argument("--screenshot", metavar="PNG",
                        help="instead: a screenshot of the dashboard under load")
    args = parser.parse_args(argv)
    if args.screenshot:
        try:
            screenshot(args.screenshot)
        except Skip as skip:
            print(f"skipped: {skip}", file=sys.stderr)
            return 1
        print(f"wrote {args.screenshot}")
        return 0
    if args.paced:
        paced = paced_cpu(args.paced, args.rounds, args.seconds, args.client, args.workers,
                          args.max_rate)

        def pct(xs: list[float]) -> list[float]:
            return [round(100 * x, 1) for x in xs]

        print(f"server CPU (% of a core) at {args.paced:,} POST/s, {args.rounds} interleaved "
              f"rounds of {args.seconds:g} s (dashboard: {paced['client']})")
        print(f"  none:          median {100 * paced['cpu_none']:.1f}  runs "
              f"{pct(paced['runs']['none'])}")
        print(f"  one dashboard: median {100 * paced['cpu_dashboard']:.1f}  runs "
              f"{pct(paced['runs']['dashboard'])}")
        print(f"  the dashboard adds {100 * paced['cpu_added']:.1f} % of a core")
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(paced, f, indent=2)
        return 0
    try:
        result = post_dashboard(args.rounds, args.seconds, args.client, args.workers,
                                args.max_rate)
    except Skip as skip:
        print(f"skipped: {skip}", file=sys.stderr)
        return 1
    none = [round(r["requests_per_s"]) for r in result["runs"]["none"]]
    with_one = [round(r["requests_per_s"]) for r in result["runs"]["dashboard"]]
    print(f"POST /jobs per second, {args.rounds} interleaved rounds of {args.seconds:g} s "
          f"(dashboard: {result['client']})")
    print(f"  none:          median {result['none_requests_per_s']:,.0f}  runs {none}")
    print(f"  one dashboard: median {result['requests_per_s']:,.0f}  runs {with_one}")
    print(f"  ratio {result['ratio']:.3f}; server CPU per POST: "
          f"{result['cpu_us_per_post_none']:.1f} us without, "
          f"{result['cpu_us_per_post_dashboard']:.1f} us with")
    if result["client"] == "browser":
        print(f"  Chromium meanwhile: {result['browser_cores']:.2f} of a core")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
