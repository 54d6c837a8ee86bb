"""A live summary of a trioqueue server's events, read from its websocket with trio-websocket.

With ``--url`` it watches a server that is already running, until Ctrl+C (or
``--duration`` seconds)::

    trioqueue serve &
    python examples/event_monitor.py --url ws://127.0.0.1:8080/events

Without ``--url`` it runs by itself: it starts ``trioqueue serve`` (the built-in demo
tasks) on a free port on 127.0.0.1, connects to ``/events``, posts a mix of demo jobs
over HTTP (``echo``, ``sleep``, ``flaky`` that fails once, ``fail`` that always fails),
prints the summary while they run, and stops the server when every job has finished::

    python examples/event_monitor.py            # 300 jobs
    python examples/event_monitor.py --quick    # 60 jobs, a few seconds
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from functools import partial
from typing import Any

import httpx
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

TERMINAL = {"completed", "failed", "cancelled"}


class Summary:
    """Counts what the event stream says; renders one line a tick."""

    def __init__(self) -> None:
        self.types: Counter[str] = Counter()
        self.tasks: Counter[str] = Counter()
        self.finished: set[str] = set()
        self.last_error = ""
        self.lagged = 0
        self.metrics: dict[str, Any] = {}
        self.completed_at_last_tick = 0
        self._changed = trio.Event()

    async def wait_for(self, job_ids: set[str]) -> None:
        """Return once every one of ``job_ids`` has finished."""
        while not job_ids <= self.finished:
            await self._changed.wait()

    def add(self, event: dict[str, Any]) -> None:
        kind = event.get("type", "?")
        if kind == "lagged":
            self.lagged += event.get("dropped", 0)
            return
        if kind == "metrics":
            self.metrics = event.get("metrics") or {}
            return
        self.types[kind] += 1
        if kind in TERMINAL:
            self.finished.add(event["job_id"])
            self._changed.set()
            self._changed = trio.Event()
            self.tasks[f"{event.get('task')}:{kind}"] += 1
        if event.get("error"):
            self.last_error = f"{event.get('task')} {event['job_id'][:8]}: {event['error']}"

    def line(self, every: float) -> str:
        done = self.types["completed"]
        rate = (done - self.completed_at_last_tick) / every
        self.completed_at_last_tick = done
        counts = " ".join(
            f"{k}={self.types[k]}" for k in
            ("enqueued", "started", "completed", "retrying", "failed", "cancelled")
        )
        running = self.types["started"] - self.types["completed"] - self.types["retrying"] \
            - self.types["failed"]
        extra = f" lagged={self.lagged}" if self.lagged else ""
        return f"[events] {counts} | running~{max(0, running)} | {rate:.0f} completed/s{extra}"


async def watch(url: str, token: str | None, summary: Summary, connected: trio.Event) -> None:
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else None
    async with open_websocket_url(url, extra_headers=headers) as ws:
        connected.set()
        try:
            while True:
                event = json.loads(await ws.get_message())
                summary.add(event)
        except ConnectionClosed as closed:
            print(f"the server closed the event stream: {closed.reason}")


async def ticker(summary: Summary, every: float) -> None:
    while True:
        await trio.sleep(every)
        print(summary.line(every), flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerNotReady(Exception):
    pass


async def wait_healthy(
    base: str, client: httpx.AsyncClient, server: trio.Process, within: float
) -> None:
    """Poll /healthz until the server answers, for at most ``within`` seconds."""
    with trio.move_on_after(within):
        while True:
            if server.poll() is not None:
                raise ServerNotReady(f"trioqueue serve exited {server.returncode} at start")
            try:
                if (await client.get(f"{base}/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await trio.sleep(0.05)
    raise ServerNotReady(f"trioqueue serve did not answer {base}/healthz within {within} s")


def demo_jobs(count: int) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    for i in range(count):
        if i % 15 == 14:
            jobs.append({"task": "fail", "payload": {"i": i}, "max_retries": 1})
        elif i % 10 == 3:
            jobs.append({"task": "flaky", "payload": {"fail_times": 1}, "max_retries": 2})
        elif i % 5 == 1:
            jobs.append({"task": "sleep", "payload": {"seconds": 0.2}, "priority": "low"})
        else:
            jobs.append({"task": "echo", "payload": {"n": i},
                         "priority": "high" if i % 2 else "medium"})
    return jobs


async def self_contained(args: argparse.Namespace, summary: Summary) -> None:
    """Start `trioqueue serve`, post demo jobs, watch them all finish, stop the server."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, TRIOQUEUE_RETRY_BASE="0.2")  # the demo's retries come quickly
    command = [sys.executable, "-c", "import sys; from trioqueue.cli import main; "
               "sys.exit(main())", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "8"]
    count, tick = (60, 0.25) if args.quick else (300, 1.0)
    expected: set[str] = set()
    connected = trio.Event()
    async with trio.open_nursery() as nursery:
        # The server's log goes to our stderr; its exit status is checked below.
        server = await nursery.start(
            partial(trio.run_process, command, env=env, check=False, stdout=subprocess.DEVNULL)
        )
        try:
            async with httpx.AsyncClient(timeout=5.0) as client:
                await wait_healthy(base, client, server, 20.0)
                print(f"trioqueue serve is up on {base}; watching ws://127.0.0.1:{port}/events")
                async with trio.open_nursery() as watching:
                    watching.start_soon(watch, f"ws://127.0.0.1:{port}/events", None, summary,
                                        connected)
                    await connected.wait()  # subscribed before the first job is posted
                    watching.start_soon(ticker, summary, tick)
                    for body in demo_jobs(count):
                        response = await client.post(f"{base}/jobs", json=body)
                        response.raise_for_status()
                        expected.add(response.json()["id"])
                    print(f"posted {count} jobs", flush=True)
                    with trio.move_on_after(args.duration or 120) as timer:
                        await summary.wait_for(expected)
                    if timer.cancelled_caught:
                        print("gave up waiting for every job to finish")
                    watching.cancel_scope.cancel()  # disconnect before the server stops
                metrics = (await client.get(f"{base}/metrics")).json()
        finally:
            server.send_signal(signal.SIGINT)  # the server's graceful shutdown
            with trio.move_on_after(15):
                await server.wait()
            nursery.cancel_scope.cancel()
    if server.returncode != 0:
        print(f"trioqueue serve exited {server.returncode} (expected 0 after SIGINT)")
    print(summary.line(tick))
    by_task = ", ".join(f"{k}={n}" for k, n in sorted(summary.tasks.items()))
    print(f"finished jobs by task: {by_task}")
    if summary.last_error:
        print(f"last error: {summary.last_error}")
    print(f"server metrics: completed={metrics.get('completed')} failed={metrics.get('failed')} "
          f"retried={metrics.get('retried')} wait_p99={metrics.get('wait_p99')}")
    print(f"monitor done: {len(summary.finished)} of {count} jobs finished")


async def attached(args: argparse.Namespace, summary: Summary) -> None:
    """Watch a running server until Ctrl+C or --duration."""
    connected = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, args.url, args.token, summary, connected)
            nursery.start_soon(ticker, summary, 1.0)
            with trio.move_on_after(args.duration or float("inf")):
                async for _ in signals:
                    break
            nursery.cancel_scope.cancel()
    print(summary.line(1.0))
    print("monitor done")


async def main(args: argparse.Namespace) -> None:
    summary = Summary()
    if args.url:
        await attached(args, summary)
    else:
        await self_contained(args, summary)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="ws://HOST:PORT/events of a running server")
    parser.add_argument("--token", help="bearer token, if the server has one")
    parser.add_argument("--duration", type=float, default=0, help="stop after this many s")
    parser.add_argument("--quick", action="store_true", help="a short run (a few seconds)")
    try:
        trio.run(main, parser.parse_args())
    except* ServerNotReady as group:
        sys.exit(f"event_monitor: {group.exceptions[0]}")
