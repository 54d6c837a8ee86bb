"""The dashboard in a real browser: Debian's Chromium driven by Playwright (pinned).

Never ``playwright install``: the browser is ``/usr/bin/chromium`` (``TRIOQUEUE_CHROMIUM``
overrides), launched with the flags of docs/dashboard.md.  The host-resolver rule is what
keeps Chromium from contacting anything but 127.0.0.1 (no DNS, no Google services).

Without Chromium or Playwright these tests skip, saying why; with ``CI`` set they fail
instead (``.ci/run`` installs Chromium, so in CI they always run).

The tests are plain synchronous functions: Playwright's sync API runs its own loop, and
pytest-trio only wraps ``async def`` tests.  Each server is a ``trioqueue serve``
subprocess (``--app tests.browser.app:registry``), stopped in a ``finally``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import httpx
import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Error, Page

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("TRIOQUEUE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    # Playwright adds --headless --no-sandbox --no-first-run
    # --disable-background-networking --disable-component-update --disable-sync and a
    # fresh profile; these are the rest of docs/dashboard.md's set.
    "--disable-quic",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--window-size=1280,800",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
]
APP = "tests.browser.app:registry"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "browser: drives Chromium (skips without it, except when CI is set)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.browser)


def missing_playwright() -> str | None:
    """Why Playwright cannot be imported (only off CI: there a missing one must fail)."""
    if os.environ.get("CI") or importlib.util.find_spec("playwright") is not None:
        return None
    return "playwright is not installed (pip install -e '.[test]')"


def _missing() -> str | None:
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    reason = _missing()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests must run in CI: {reason}")
        pytest.skip(reason)
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


# ---------------------------------------------------------------------------- servers


STANDBY = ("import sys; from trioqueue import cli, server; sys.stdin.readline(); "
           "sys.exit(cli.main())")
"""``python -m trioqueue`` (``cli.main()``) once a line comes on stdin, its modules loaded
before: most of a server's start-up is Python importing it (about 1 s here)."""


@attrs.define
class Server:
    proc: subprocess.Popen[str]
    url: str
    port: int
    lines: queue.Queue[str]
    log: Path

    def start(self) -> None:
        """Wait for the server to serve (a standby server: tell it to, then wait)."""
        if self.proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):  # it died: its log says why, below
                self.proc.stdin.write("\n")
                self.proc.stdin.close()
        first = self.next_line()
        match = re.fullmatch(r"trioqueue serving on (http://127\.0\.0\.1:(\d+))", first)
        assert match, (first, self.log.read_text())
        self.url, self.port = match[1], int(match[2])

    def stop(self) -> None:
        """SIGTERM, then kill if it will not go."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def next_line(self, timeout: float = START_TIMEOUT) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no more output from trioqueue serve:\n{self.log.read_text()}")


@contextlib.contextmanager
def run_server(*args: str, port: int = 0, token: str | None = None,
               standby: bool = False) -> Iterator[Server]:
    """``trioqueue serve --port PORT --app tests.browser.app:registry ARGS`` until the
    block ends (SIGTERM, then kill).

    With ``standby`` the process starts, and loads the server's modules, but reads no
    arguments, takes no port and serves nothing until :meth:`Server.start` (so that a
    restart test's second server takes the port within ~0.1 s of being told to)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIOQUEUE_")}
    env["PYTHONUNBUFFERED"] = "1"
    launch = ["-c", STANDBY] if standby else ["-m", "trioqueue"]
    command = [sys.executable, *launch, "serve", "--port", str(port), "--app", APP,
               "--workers", "4", *args]
    if token is not None:
        command += ["--token", token]
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        with open(log, "w") as err:
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True,
                                    env=env, cwd=ROOT,
                                    stdin=subprocess.PIPE if standby else subprocess.DEVNULL)
        assert proc.stdout is not None
        stdout = proc.stdout
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=lambda: [lines.put(x.rstrip("\n")) for x in stdout],
                                  daemon=True)
        reader.start()
        server = Server(proc, "", 0, lines, log)
        try:
            if not standby:
                server.start()
            yield server
        finally:
            server.stop()
            reader.join(10)
            stdout.close()
            if proc.stdin is not None:
                proc.stdin.close()


@pytest.fixture
def server() -> Iterator[Server]:
    with run_server() as srv:
        yield srv


# ---------------------------------------------------------------------------- pages


@attrs.define
class Console:
    """What a page said: console messages and uncaught errors."""

    messages: list[tuple[str, str]] = attrs.Factory(list)
    allowed: list[re.Pattern[str]] = attrs.Factory(list)

    def allow(self, pattern: str) -> None:
        """A console error matching ``pattern`` is expected (e.g. the refused connections
        while a server is down)."""
        self.allowed.append(re.compile(pattern))

    def on_console(self, message: ConsoleMessage) -> None:
        self.messages.append((message.type, message.text))

    def on_error(self, error: Error) -> None:
        self.messages.append(("pageerror", f"{error.name}: {error.message}"))

    def problems(self) -> list[tuple[str, str]]:
        """Errors and warnings (a CSP violation is an error) that were not expected."""
        return [
            (kind, text) for kind, text in self.messages
            if kind in ("error", "warning", "pageerror")
            and not any(p.search(text) for p in self.allowed)
        ]


@attrs.define
class Pages:
    """Opens pages in fresh browser contexts (own sessionStorage) and watches them."""

    browser: Browser
    console: Console = attrs.Factory(Console)
    opened: list[Any] = attrs.Factory(list)
    requests: list[str] = attrs.Factory(list)

    def open(self, url: str) -> Page:
        from playwright.sync_api import expect

        context = self.browser.new_context(viewport={"width": 1280, "height": 800})
        self.opened.append(context)
        page = context.new_page()
        console = self.console
        page.on("console", lambda message: console.on_console(message))
        page.on("pageerror", lambda error: console.on_error(error))
        page.on("request", lambda request: self.requests.append(request.url))
        page.goto(url)
        expect(page.locator("html")).to_have_attribute("lang", "en")
        return page

    def close(self) -> None:
        """Close every page (before their server stops, or they log its absence)."""
        for context in self.opened:
            context.close()
        self.opened.clear()


@pytest.fixture
def pages(browser: Browser) -> Iterator[Pages]:
    """Pages to open; at the end, no console errors, warnings or CSP violations."""
    opened = Pages(browser)
    try:
        yield opened
    finally:
        opened.close()
    assert opened.console.problems() == []


def http(method: str, url: str, **kwargs: Any) -> httpx.Response:
    """``httpx.request(method, url, timeout=10, **kwargs)`` to a test server, quickly.

    Not ``httpx.get`` or ``httpx.post``: each of those makes a client whose default SSL
    context loads the CA bundle, about 0.1 s a call here (a test that made 200 jobs one
    request at a time spent 20 s in it).  The servers are plain HTTP on 127.0.0.1: there
    is nothing to verify, and without verification the context costs nothing."""
    kwargs.setdefault("timeout", 10)
    return httpx.request(method, url, verify=False, **kwargs)


def poll(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Call ``check`` until it returns something true (for state outside the page)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached within {timeout} s")
        time.sleep(0.05)


# ---------------------------------------------------------------------------- load


class Flood:
    """POST /jobs at about ``rate`` a second over a few keep-alive connections, from
    threads of this process (requests pipelined ten at a time, answers counted)."""

    def __init__(self, port: int, rate: int = 1000, connections: int = 2,
                 task: str = "echo") -> None:
        self.port = port
        self.per_tick = max(1, rate // (100 * connections))  # ticks of 10 ms
        self.connections = connections
        self.task = task
        self.stopping = threading.Event()
        self.accepted = 0
        self.answered = 0
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def request(self, n: int) -> bytes:
        body = b'{"task":"%s","payload":{"n":%d}}' % (self.task.encode(), n)
        return (b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (self.port, len(body), body))

    def run(self, k: int) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                buf = b""
                n = 0
                tick = time.monotonic()
                while not self.stopping.is_set():
                    batch = b"".join(self.request(n + i) for i in range(self.per_tick))
                    n += self.per_tick
                    sock.sendall(batch)
                    seen = 0
                    while seen < self.per_tick:
                        data = sock.recv(65536)
                        if not data:
                            raise ConnectionError("the server closed the connection")
                        buf += data
                        # Each answer is a head and a JSON body with its content-length.
                        while True:
                            end = buf.find(b"\r\n\r\n")
                            if end < 0:
                                break
                            head = buf[:end].decode("latin-1")
                            length = int(re.search(r"(?i)content-length: *(\d+)", head)[1])
                            if len(buf) < end + 4 + length:
                                break
                            buf = buf[end + 4 + length:]
                            seen += 1
                            with self.lock:
                                self.answered += 1
                                if head.startswith("HTTP/1.1 202"):
                                    self.accepted += 1
                    tick += 0.01
                    delay = tick - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    elif delay < -0.1:
                        tick = time.monotonic()  # far behind: give up the lost ticks
        except Exception as exc:  # reported by stop()
            self.errors.append(f"connection {k}: {type(exc).__name__}: {exc}")

    def __enter__(self) -> Flood:
        for k in range(self.connections):
            thread = threading.Thread(target=self.run, args=(k,), daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(15)
