"""Clients that ask for large pages and read nothing, beside one that reads.

    python -m benchmarks.slow_readers [--clients 300] [--seconds 37] [--port 18120]
                                      [--job-kb 900] [--db | --redis URL] [--json FILE]

Starts ``trioqueue serve`` (memory mode, ``--db`` a temporary SQLite file, or ``--redis``)
in a child process with the default response budget, and posts 9 jobs of 900 KB payload
(``--job-kb``: 8.1 MB of jobs of that size), so that ``GET /jobs?limit=1000`` answers
about 8.1 MB.  Then, for ``--seconds``:

- ``--clients`` attackers, each with a 4 KiB receive buffer, ask for that page, read
  nothing, and reconnect as soon as they are answered 503, reset or closed (the server
  cuts a client off 30 s after its answer began);
- one reader asks for the same page every 0.5 s and reads it whole (20 s timeout).

Prints the pages the reader got (and the jobs in them: a page is cut short while the
response budget has no room for the whole of it) and their median time, and the server's
peak RSS (``VmHWM``) and its RSS at the end, as docs/operations.md reports them.  Only
loopback is a target.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from .common import redis_cleanup

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
PAGE = b"GET /jobs?limit=1000 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def rss(pid: int) -> dict[str, float]:
    """The child's RSS and peak RSS, in MB."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


async def post_jobs(port: int, kb: int) -> None:
    """Jobs whose payload is ``kb`` KB each, 8.1 MB in all (sleeping, so that they stay
    queued)."""
    payload = json.dumps({"seconds": 3600, "pad": "x" * (kb * 1000)}).encode()
    for _ in range(8_100 // kb):
        body = b'{"task":"sleep","payload":' + payload + b"}"
        stream = await trio.open_tcp_stream(HOST, port)
        async with stream:
            await stream.send_all(
                b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
            reply = b""
            while chunk := await stream.receive_some(65536):
                reply += chunk
            if not reply.startswith(b"HTTP/1.1 202"):
                raise SystemExit(f"POST /jobs: {reply[:200]!r}")


async def attacker(port: int, stats: dict[str, int]) -> None:
    """Ask, read nothing, reconnect as soon as the server ends the connection."""
    while True:
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            await sock.connect((HOST, port))
            await sock.send(PAGE)
            stats["asked"] += 1
            # Read only the first bytes (the status line), then nothing more.
            first = await sock.recv(16)
            if first.startswith(b"HTTP/1.1 503"):
                stats["refused"] += 1
                # Wait for the close, then go again.
                while await sock.recv(4096):
                    pass
            else:
                # A 200: hold it, reading nothing, until the server resets it or 30.5 s
                # have passed (the server cuts a client off after 30 s).
                with trio.move_on_after(30.5):
                    # (a reset is seen only by asking: reading would take the bytes)
                    while not sock.getsockopt(  # noqa: ASYNC110 - polls the kernel
                            socket.SOL_SOCKET, socket.SO_ERROR):
                        await trio.sleep(0.5)
                    stats["reset"] += 1
        except OSError:
            stats["reset"] += 1
        finally:
            sock.close()
        await trio.lowlevel.checkpoint()


async def reader(port: int, seconds: float, got: list[float], jobs: list[int],
                 failed: list[str]) -> None:
    end = trio.current_time() + seconds
    while trio.current_time() < end:
        start = trio.current_time()
        try:
            with trio.fail_after(20):
                stream = await trio.open_tcp_stream(HOST, port)
                async with stream:
                    await stream.send_all(PAGE.replace(b"\r\n\r\n",
                                                       b"\r\nconnection: close\r\n\r\n"))
                    reply = bytearray()
                    while chunk := await stream.receive_some(1 << 20):
                        reply += chunk
            if reply.startswith(b"HTTP/1.1 200"):
                got.append(trio.current_time() - start)
                body = bytes(reply[reply.index(b"\r\n\r\n") + 4:])
                jobs.append(len(json.loads(body)["jobs"]))
            else:
                failed.append(bytes(reply[:40]).decode(errors="replace"))
        except (trio.TooSlowError, OSError) as exc:
            failed.append(type(exc).__name__)
        await trio.sleep(0.5)


async def drive(args: argparse.Namespace, pid: int) -> dict[str, Any]:
    await post_jobs(args.port, args.job_kb)
    stats = {"asked": 0, "refused": 0, "reset": 0}
    got: list[float] = []
    jobs: list[int] = []
    failed: list[str] = []
    peak_seen = 0.0
    async with trio.open_nursery() as nursery:
        for _ in range(args.clients):
            nursery.start_soon(attacker, args.port, stats)

        async def sample() -> None:
            nonlocal peak_seen
            while True:
                peak_seen = max(peak_seen, rss(pid)["VmRSS"])
                await trio.sleep(0.25)

        nursery.start_soon(sample)
        await reader(args.port, args.seconds, got, jobs, failed)
        nursery.cancel_scope.cancel()
    figures = rss(pid)
    return {"clients": args.clients, "pages": len(got), "asked": len(got) + len(failed),
            "jobs": sum(jobs),
            "median_s": statistics.median(got) if got else None, "failed": failed[:5],
            "attackers": stats, "rss_peak_mb": figures["VmHWM"],
            "rss_end_mb": figures["VmRSS"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=37.0)
    parser.add_argument("--port", type=int, default=18120)
    parser.add_argument("--job-kb", type=int, default=900,
                        help="KB of payload a job (8.1 MB of jobs in all; default 900)")
    parser.add_argument("--db", action="store_true", help="a SQLite store, not memory mode")
    parser.add_argument("--redis", metavar="URL",
                        help="the queue in Redis (queue name slow-readers; its keys are "
                        "deleted after), e.g. redis://127.0.0.1:6379/9")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for the server (repeatable)")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, **dict(kv.split("=", 1) for kv in args.env)}
        cmd = [sys.executable, "-m", "trioqueue", "serve", "--port", str(args.port),
               "--workers", "1", "--log-level", "error"]
        if args.db:
            cmd += ["--db", str(Path(tmp) / "slow.db")]
        if args.redis:
            cmd += ["--redis", args.redis, "--queue", "slow-readers"]
        server = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, env=env)
        try:
            for _ in range(100):
                try:
                    socket.create_connection((HOST, args.port), 0.2).close()
                    break
                except OSError:
                    time.sleep(0.1)
            result = trio.run(drive, args, server.pid)
        finally:
            server.kill()
            server.wait()
            if args.redis:
                redis_cleanup("*slow-readers*", args.redis)
    print(f"slow_readers: {result['clients']} clients reading nothing; the reader got "
          f"{result['pages']} of {result['asked']} pages ({result['jobs']} jobs, of "
          f"{8_100 // args.job_kb} a whole page)"
          + (f" (median {result['median_s']:.2f} s)" if result["median_s"] else "")
          + f"; server RSS peak {result['rss_peak_mb']:.0f} MB, end {result['rss_end_mb']:.0f}"
          f" MB; attackers {result['attackers']}")
    if result["failed"]:
        print(f"  reader's failures (first 5): {result['failed']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
