"""trioqueue in server mode: ``trioqueue serve`` in its own process, loaded over loopback.

- ``post``: ``n`` POST /jobs (demo task ``echo``) from ``clients`` concurrent keep-alive
  httpx clients (one connection each); the rate, and p50/p99 of the request latency.
- ``fanout``: ``clients`` websocket subscribers on /events?types=completed; ``n`` jobs
  are posted and the time until every subscriber saw all ``n`` completions is measured.

Skipped, with the reason, while the server and CLI (another issue) have not landed.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .common import Skip, latency_summary, perf_counter

HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _server_command(port: int, workers: int) -> list[str]:
    if importlib.util.find_spec("trioqueue.cli") is None:
        raise Skip("the server has not landed yet: trioqueue.cli (trioqueue serve) is missing")
    script = Path(sys.executable).with_name("trioqueue")
    base = [str(script)] if script.exists() else [
        sys.executable, "-c", "import sys; from trioqueue.cli import main; sys.exit(main())"]
    return [*base, "serve", "--host", HOST, "--port", str(port), "--workers", str(workers)]


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (NaN where there is none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _healthy(port: int) -> bool:
    """GET /healthz answered 200.  With http.client, not ``httpx.get``: each of those
    builds a client and its TLS context (some 50 ms of CPU), 20 times a second while
    the server starts on the same cores."""
    conn = http.client.HTTPConnection(HOST, port, timeout=0.5)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


@contextlib.contextmanager
def _server(workers: int = 4, capacity: int = 100_000) -> Iterator[tuple[str, int]]:
    port = _free_port()
    env = dict(os.environ, TRIOQUEUE_CAPACITY=str(capacity))
    proc = subprocess.Popen(_server_command(port, workers), env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + 15.0
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise Skip(f"`trioqueue serve` exited with {proc.returncode}: "
                           + (err.strip().splitlines() or ["(no output)"])[-1][:200])
            if _healthy(port):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("`trioqueue serve` did not answer /healthz within 15 s")
            time.sleep(0.05)
        yield base, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def post(n: int, clients: int = 32, workers: int = 4) -> dict[str, Any]:
    import httpx
    import trio

    with _server(workers) as (base, pid):
        lat: list[float] = []
        statuses: dict[int, int] = {}
        share = [n // clients + (1 if i < n % clients else 0) for i in range(clients)]
        body = json.dumps({"task": "echo", "payload": {"x": 1}}).encode()
        headers = {"content-type": "application/json"}

        async def client(count: int) -> None:
            async with httpx.AsyncClient(base_url=base, limits=httpx.Limits(
                    max_connections=1, max_keepalive_connections=1)) as c:
                for _ in range(count):
                    t = perf_counter()
                    r = await c.post("/jobs", content=body, headers=headers)
                    lat.append(perf_counter() - t)
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

        async def main() -> float:
            t0 = perf_counter()
            async with trio.open_nursery() as nursery:
                for count in share:
                    nursery.start_soon(client, count)
            return perf_counter() - t0

        server_cpu0, client_cpu0 = _cpu_seconds(pid), time.process_time()
        elapsed = trio.run(main)
        server_cpu = _cpu_seconds(pid) - server_cpu0
        client_cpu = time.process_time() - client_cpu0
    accepted = sum(v for k, v in statuses.items() if 200 <= k < 300)
    return latency_summary(lat) | {
        "n": n, "clients": clients, "requests_per_s": n / elapsed,
        "accepted_per_s": accepted / elapsed, "elapsed_s": elapsed,
        "server_cpu_s": server_cpu, "client_cpu_s": client_cpu,
        "statuses": {str(k): v for k, v in statuses.items()},
    }


def fanout(n: int, clients: int, workers: int = 4, timeout: float = 120.0) -> dict[str, Any]:
    import httpx
    import trio
    from trio_websocket import open_websocket_url

    with _server(workers) as (base, _):
        ws_url = base.replace("http://", "ws://") + "/events?types=completed"
        received = [0] * clients
        lagged = [0] * clients
        all_seen = trio.Event()
        remaining = clients

        async def subscriber(i: int, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            nonlocal remaining
            async with open_websocket_url(ws_url) as ws:
                task_status.started()
                while received[i] < n:
                    event = json.loads(await ws.get_message())
                    if event.get("type") == "completed":
                        received[i] += 1
                    elif event.get("type") == "lagged":
                        lagged[i] += int(event.get("dropped") or 0)
                        received[i] += int(event.get("dropped") or 0)
            remaining -= 1
            if remaining == 0:
                all_seen.set()

        async def main() -> tuple[float, float]:
            async with trio.open_nursery() as nursery:
                for i in range(clients):
                    await nursery.start(subscriber, i)
                body = json.dumps({"task": "echo", "payload": {"x": 1}}).encode()
                t0 = perf_counter()
                async with httpx.AsyncClient(base_url=base) as c:

                    async def poster(count: int) -> None:
                        for _ in range(count):
                            r = await c.post("/jobs", content=body,
                                             headers={"content-type": "application/json"})
                            r.raise_for_status()

                    async with trio.open_nursery() as posters:
                        for k in range(8):
                            posters.start_soon(poster, n // 8 + (1 if k < n % 8 else 0))
                posted = perf_counter() - t0
                with trio.fail_after(timeout):
                    await all_seen.wait()
                return posted, perf_counter() - t0

        posted, elapsed = trio.run(main)
    delivered = sum(received) - sum(lagged)
    return {"n": n, "clients": clients, "post_s": posted, "total_s": elapsed,
            "events_per_s": delivered / elapsed, "per_client_events_per_s": n / elapsed,
            "lagged_dropped": sum(lagged)}


_WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{"task": "echo", "payload": {"x": 1}}'
wrk.headers["Content-Type"] = "application/json"
"""


def _wrk_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if m is None:
        return float("nan")
    return float(m[1]) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m[2]]


def post_wrk(duration: float = 5.0, connections: int = 32, workers: int = 4) -> dict[str, Any]:
    """The server's own ceiling: POST /jobs from ``wrk`` (C, one thread, ``connections``
    keep-alive connections) instead of httpx, whose clients cost more CPU than the
    server does."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise Skip("wrk is not installed (Debian: apt-get install wrk)")
    import tempfile

    with _server(workers) as (base, pid), tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(_WRK_SCRIPT)
        cpu0 = _cpu_seconds(pid)
        proc = subprocess.run(
            [wrk, "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", "-s",
             str(script), f"{base}/jobs"],
            capture_output=True, text=True, timeout=duration + 60, check=True)
        server_cpu = _cpu_seconds(pid) - cpu0
    out = proc.stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.MULTILINE))
    if rate is None or total is None:
        raise RuntimeError(f"could not read wrk's output: {out[-500:]}")
    n = int(total[1])
    return {"n": n, "connections": connections, "duration": duration,
            "requests_per_s": float(rate[1]), "non_2xx": int(bad[1]) if bad else 0,
            "p50_ms": _wrk_ms(pct.get("50", "")), "p99_ms": _wrk_ms(pct.get("99", "")),
            "server_cpu_s": server_cpu}
