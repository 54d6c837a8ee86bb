"""The Workers panel of a queue in Redis, in Chromium: a ``trioqueue serve --redis`` node
and a ``trioqueue worker`` node, two workers each, run ``hold`` jobs
(tests/browser/nodes_app.py) that keep their workers until this test lets them go.

Each node's worker numbers start at 0, so the panel groups the boxes by node (the
``node`` of the events, the metrics' ``nodes``): the answering node's boxes numbered,
the other node's with its jobs, every node's jobs shown (its ``started`` events come
from the stream), busy of total as the metrics sum them.  Released, the boxes go idle.
Needs the real Redis (tests/redis_util.py), like the other Redis tests.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests.redis_util import REDIS_URL, admin, delete_queue, unique

from .conftest import (
    ROOT,
    START_TIMEOUT,
    STOP_TIMEOUT,
    Pages,
    http,
    missing_playwright,
    poll,
    run_server,
)

if missing_playwright():  # under CI the import below fails instead: these tests must run
    pytest.skip(str(missing_playwright()), allow_module_level=True)

from playwright.sync_api import Page, expect

APP = "tests.browser.nodes_app:registry"
LEASE = "3"
"""Seconds: a node's heartbeat (every lease / 3) then brings its busy workers within a
second."""


class Gate:
    """The socket the ``hold`` jobs connect to: :meth:`take` accepts them (each says its
    job id and pid), :meth:`release` closes them, which ends the jobs."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []

    def take(self, n: int) -> dict[str, int]:
        """Wait for ``n`` jobs to be running: job id -> the pid of the node running it."""
        self.sock.settimeout(START_TIMEOUT)
        runs: dict[str, int] = {}
        for _ in range(n):
            try:
                conn, _ = self.sock.accept()
                self.held.append(conn)
                conn.settimeout(START_TIMEOUT)
                said = b""
                while not said.endswith(b"\n"):
                    chunk = conn.recv(100)
                    assert chunk, f"a hold job hung up after {said!r}"
                    said += chunk
            except TimeoutError:
                pytest.fail(f"{len(runs)} of {n} hold jobs started within {START_TIMEOUT} s")
            job_id, pid = said.decode().split()
            runs[job_id] = int(pid)
        return runs

    def release(self) -> None:
        for conn in self.held:
            conn.close()
        self.held.clear()

    def close(self) -> None:
        self.release()
        self.sock.close()


@contextlib.contextmanager
def worker_node(queue: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``trioqueue worker`` with two workers on ``queue`` until the block ends (SIGTERM,
    then kill, by its own pid)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIOQUEUE_")}
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "trioqueue", "worker", "--app", APP, "--redis", REDIS_URL,
             "--queue", queue, "--workers", "2", "--lease", LEASE],
            stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL, cwd=ROOT, env=env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _delete(queue: str) -> None:
    async with admin() as client:
        await delete_queue(client, queue)


def open_workers_tab(pages: Pages, url: str) -> Page:
    page = pages.open(url + "/")
    expect(page.locator("#badge")).to_have_text("live")
    page.locator("#tabs button[data-tab=workers]").click()
    return page


def test_each_nodes_workers_and_jobs_are_shown_as_that_nodes(pages: Pages) -> None:
    queue = unique("dash")
    gate = Gate()
    try:
        with tempfile.TemporaryDirectory() as tmp, \
                worker_node(queue, Path(tmp) / "worker.log") as worker, \
                run_server("--app", APP, "--redis", REDIS_URL, "--queue", queue,
                           "--workers", "2", "--lease", LEASE) as server:
            url = server.url

            def nodes() -> dict[str, dict[str, int]]:
                got: dict[str, dict[str, int]] = http("GET", f"{url}/metrics").json().get(
                    "nodes", {})
                return got

            poll(lambda: len(nodes()) == 2, START_TIMEOUT, "both nodes in the metrics' nodes")
            here = http("GET", f"{url}/metrics").json()["node"]
            (other,) = set(nodes()) - {here}
            node_of_pid = {server.proc.pid: here, worker.pid: other}

            try:
                check_the_panel(pages, url, gate, here, other, node_of_pid)
            finally:
                gate.release()  # (after a failed check: else the nodes wait 30 s for the jobs)
                pages.close()  # before the server goes, or the pages log its absence
            worker.send_signal(signal.SIGTERM)  # both nodes stop at once
    finally:
        gate.close()
        trio.run(_delete, queue)


def check_the_panel(pages: Pages, url: str, gate: Gate, here: str, other: str,
                    node_of_pid: dict[int, str]) -> None:
    """Nodes ``here`` (the serve node at ``url``) and ``other``, two workers each, idle;
    ``node_of_pid``: their processes."""
    page = open_workers_tab(pages, url)
    groups = page.locator("#slots .node-group")
    mine = page.locator(f'#slots .node-group[data-node="{here}"]')
    theirs = page.locator(f'#slots .node-group[data-node="{other}"]')
    expect(groups).to_have_count(2)
    expect(groups.first).to_have_attribute("data-node", here)  # this server first
    expect(mine.locator(".node-head")).to_have_text(f"node {here} (this server) · 0 busy of 2")
    expect(theirs.locator(".node-head")).to_have_text(f"node {other} · 0 busy of 2")
    expect(page.locator("#workers-summary")).to_have_text("0 busy of 4 · 2 nodes with workers")

    for _ in range(4):
        response = http("POST", f"{url}/jobs", json={
            "task": "hold", "payload": {"port": gate.port}})
        assert response.status_code == 202, response.text
    runs = gate.take(4)  # every worker of both nodes holds one
    node_of = {job: node_of_pid[pid] for job, pid in runs.items()}
    assert Counter(node_of.values()) == {here: 2, other: 2}

    # Each node's jobs in its own boxes, from the events: this server's numbered 0 and 1,
    # the other node's (whose events carry no worker number) with their jobs.
    for job, node in node_of.items():
        if node == here:
            expect(mine.locator(f'.slot.busy[data-job="{job}"]')).to_have_text(
                re.compile(r"^[01]: hold$"))
        else:
            expect(theirs.locator(f'.slot.busy[data-job="{job}"]')).to_have_text("hold")
    numbers = {mine.locator(".slot.busy").nth(i).get_attribute("data-worker")
               for i in range(2)}
    assert numbers == {"0", "1"}
    expect(mine.locator(".node-head")).to_have_text(f"node {here} (this server) · 2 busy of 2")
    expect(theirs.locator(".node-head")).to_have_text(f"node {other} · 2 busy of 2")
    expect(page.locator("#slots .slot", has_text="?")).to_have_count(0)
    # The running list names each job's node.
    expect(page.locator("#running-node")).to_be_visible()
    for job, node in node_of.items():
        row = page.locator("#running-body tr", has=page.locator(f'[data-job="{job}"]'))
        expect(row.locator("td").first).to_have_text(node)
        expect(row.locator("td").nth(1)).to_have_text(
            re.compile("^[01]$") if node == here else "\u2013")

    # A page opened now has not seen these jobs start: it knows each node's busy workers
    # (the other node's from its heartbeat), not which jobs run where, and says "?"
    # rather than "idle".
    later = open_workers_tab(pages, url)
    late_mine = later.locator(f'#slots .node-group[data-node="{here}"] .slot')
    late_theirs = later.locator(f'#slots .node-group[data-node="{other}"] .slot')
    expect(late_mine).to_have_text(["0: ?", "1: ?"])
    expect(late_theirs).to_have_text(["?", "?"])
    expect(later.locator("#running-body tr td:first-child")).to_have_text(["?"] * 4)
    # Busy of total as the metrics sum the live nodes.
    for shown in (page, later):
        expect(shown.locator("#workers-summary")).to_have_text("4 busy of 4 · 2 nodes with workers")

    gate.release()  # the jobs end: every box is idle again, on both pages
    for shown in (page, later):
        expect(shown.locator("#slots .slot.busy")).to_have_count(0)
        mine = shown.locator(f'#slots .node-group[data-node="{here}"]')
        theirs = shown.locator(f'#slots .node-group[data-node="{other}"]')
        expect(mine.locator(".slot")).to_have_text(["0: idle", "1: idle"])
        expect(theirs.locator(".slot")).to_have_text(["idle", "idle"])
        expect(mine.locator(".node-head")).to_have_text(f"node {here} (this server) · 0 busy of 2")
        expect(theirs.locator(".node-head")).to_have_text(f"node {other} · 0 busy of 2")
        expect(shown.locator("#running-body tr")).to_have_count(0)
    for job in runs:
        assert http("GET", f"{url}/jobs/{job}").json()["status"] == "completed"
