"""The clients of ``python -m benchmarks.soak_leaks``: HTTP and websocket churn against
one ``trioqueue serve`` on loopback (see that module's docstring for what they do)."""

from __future__ import annotations

import base64
import json
import os
import random
from collections import deque
from typing import Any

TASKS = ("echo", "sleep", "fail", "flaky")


class Driver:
    def __init__(self, port: int, rng: random.Random) -> None:
        self.port = port
        self.rng = rng
        self.ids: deque[str] = deque(maxlen=500)
        self.failed: deque[str] = deque(maxlen=100)
        self.requests = 0
        self.given = 0
        self.errors: dict[str, int] = {}

    def _req(self, method: str, path: str, body: Any = None, close: bool = True) -> bytes:
        data = b"" if body is None else json.dumps(body).encode()
        head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                f"Content-Length: {len(data)}\r\nContent-Type: application/json\r\n"
                + ("Connection: close\r\n" if close else "") + "\r\n")
        return head.encode() + data

    async def _read(self, stream: Any, buf: bytearray) -> tuple[int, bytes]:
        while b"\r\n\r\n" not in buf:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise EOFError("closed before the head")
            buf += chunk
        end = buf.index(b"\r\n\r\n") + 4
        head = bytes(buf[:end]).decode("latin-1").lower()
        status = int(head.split(" ", 2)[1])
        length = 0
        for line in head.split("\r\n"):
            if line.startswith("content-length:"):
                length = int(line.split(":", 1)[1])
        del buf[:end]
        while len(buf) < length:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise EOFError("closed in the body")
            buf += chunk
        body = bytes(buf[:length])
        del buf[:length]
        return status, body

    def _note(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        import trio
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        except OSError as exc:
            self._note(f"connect: {type(exc).__name__}")
            return 0, None
        async with stream:
            try:
                await stream.send_all(self._req(method, path, body))
                status, data = await self._read(stream, bytearray())
            except (OSError, EOFError, trio.BrokenResourceError) as exc:
                self._note(f"{method} {path.split('?')[0][:6]}: {type(exc).__name__}")
                return 0, None
        self.requests += 1
        self._learn(data)
        return status, data

    def _learn(self, data: bytes) -> None:
        if not data.startswith(b"{"):
            return
        try:
            doc = json.loads(data)
        except ValueError:
            return
        jobs = doc.get("jobs") if isinstance(doc.get("jobs"), list) else [doc]
        for job in jobs:
            if isinstance(job, dict) and isinstance(job.get("id"), str):
                self.ids.append(job["id"])
                if job.get("status") in ("failed", "cancelled"):
                    self.failed.append(job["id"])

    def job(self) -> dict[str, Any]:
        rng = self.rng
        task = rng.choice(TASKS)
        job: dict[str, Any] = {"task": task, "priority": rng.choice(("high", "medium", "low"))}
        if task == "sleep":
            job["payload"] = {"seconds": rng.choice((0.0, 0.01, 0.05, 0.2))}
        elif task == "flaky":
            job["payload"] = {"fail_times": 1}
        else:
            job["payload"] = {"n": rng.randrange(1000)}
        if task in ("fail", "flaky"):
            job["max_retries"] = rng.choice((0, 1))
        if rng.random() < 0.1:
            job["delay"] = rng.choice((0.2, 1.0, 30.0))
        if rng.random() < 0.1:  # a caller's id (a repeat of a recent one: 200, or 409)
            self.given += rng.random() < 0.7
            job["id"] = f"soak-{self.given}"
            job.pop("delay", None)
        return job

    def pick(self) -> str:
        return self.rng.choice(self.ids) if self.ids else "0" * 32

    def op(self) -> tuple[str, str, Any]:
        rng = self.rng
        r = rng.random()
        if r < 0.30:
            return "POST", "/jobs", self.job()
        if r < 0.36:
            return "POST", "/jobs/batch", {"jobs": [self.job()
                                                     for _ in range(rng.randint(5, 40))]}
        if r < 0.46:
            status = rng.choice(("", "status=completed&", "status=failed&", "status=queued&",
                                 "task=echo&"))
            return "GET", f"/jobs?{status}limit={rng.choice((5, 50, 500))}", None
        if r < 0.60:
            return "GET", f"/jobs/{self.pick()}", None
        if r < 0.68:
            return "POST", f"/jobs/{self.pick()}/cancel", None
        if r < 0.75:
            target = rng.choice(self.failed) if self.failed else self.pick()
            return "POST", f"/jobs/{target}/retry", None
        if r < 0.76:
            return "POST", "/jobs/retry", {"status": rng.choice(("failed", "cancelled")),
                                           "task": rng.choice(TASKS)}
        return "GET", rng.choice(("/metrics", "/metrics?format=prometheus", "/readyz",
                                  "/healthz", "/tasks")), None

    async def short_loop(self, stop: Any, pace: float) -> None:
        import trio
        while not stop.is_set():
            await self.call(*self.op())
            await trio.sleep(pace)

    async def keepalive_loop(self, stop: Any, pace: float) -> None:
        import trio
        while not stop.is_set():
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", self.port)
            except OSError:
                self._note("connect")
                await trio.sleep(0.5)
                continue
            async with stream:
                buf = bytearray()
                try:
                    for _ in range(self.rng.randint(10, 60)):
                        if stop.is_set():
                            break
                        method, path, body = self.op()
                        await stream.send_all(self._req(method, path, body, close=False))
                        _, data = await self._read(stream, buf)
                        self.requests += 1
                        self._learn(data)
                        await trio.sleep(pace)
                except (OSError, EOFError, trio.BrokenResourceError) as exc:
                    self._note(f"keep-alive: {type(exc).__name__}")

    async def abort_loop(self, stop: Any, pace: float) -> None:
        """Clients that go away at the worst moments."""
        import trio
        while not stop.is_set():
            kind = self.rng.randrange(6)
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", self.port)
            except OSError:
                self._note("connect")
                await trio.sleep(0.5)
                continue
            try:
                with trio.move_on_after(2):
                    if kind == 0:  # part of the head
                        await stream.send_all(b"GET /jobs?limit=5 HTTP/1.1\r\nHost: 127.0")
                    elif kind == 1:  # head, part of the body
                        whole = self._req("POST", "/jobs/batch", {"jobs": [self.job()] * 20})
                        await stream.send_all(whole[: len(whole) - 50])
                    elif kind == 2:  # the request, then gone without reading
                        await stream.send_all(self._req("GET", "/jobs?limit=1000"))
                    elif kind == 3:  # a few bytes of a large response
                        await stream.send_all(self._req("GET", "/jobs?limit=1000"))
                        await stream.receive_some(100)
                    elif kind == 4:  # a websocket upgrade, then gone
                        await stream.send_all(self._upgrade("/events?types=completed"))
                        await stream.receive_some(1000)
                    # kind 5: connect and close without a byte
                    await trio.sleep(self.rng.choice((0, 0, 0.05, 0.3)))
            except (OSError, trio.BrokenResourceError):
                pass
            finally:
                # An abortive close (RST) half the time, a FIN the other half.
                if self.rng.random() < 0.5:
                    import socket
                    import struct
                    sock = stream.socket
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    struct.pack("ii", 1, 0))
                await stream.aclose()
            self.requests += 1
            await trio.sleep(pace)

    def _upgrade(self, path: str) -> bytes:
        key = base64.b64encode(os.urandom(16)).decode()
        return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n").encode()

    async def ws_loop(self, stop: Any, pace: float) -> None:
        """Event-stream subscribers that come and go; some wait for a job by its events."""
        import trio

        from trioqueue.client import Client
        async with Client(f"http://127.0.0.1:{self.port}") as client:
            while not stop.is_set():
                rng = self.rng
                kind = rng.randrange(7)
                try:
                    with trio.move_on_after(rng.uniform(0.2, 3.0)):
                        if kind == 6:  # Client.wait: a job's events, then GET
                            job = await client.enqueue(rng.choice(("echo", "sleep")),
                                                       {"seconds": 0.05})
                            await client.wait(job.id)
                        else:
                            choices: list[dict[str, Any]] = [
                                {}, {"types": ["completed", "failed"]},
                                {"job_id": [self.pick(), self.pick()]},
                                {"snapshot": True}, {"types": ["metrics", "failed"]},
                                {"types": ["enqueued", "started"]},
                            ]
                            filters = choices[kind]
                            async with client.events(**filters) as events:
                                async for _ in events:
                                    if rng.random() < 0.01:
                                        break
                    self.requests += 1
                except Exception as exc:  # a soak counts errors, never stops
                    self._note(f"ws: {type(exc).__name__}")
                await trio.sleep(pace)

    async def ws_raw_loop(self, stop: Any, pace: float) -> None:
        """Raw websocket clients: history and rate-limited streams, read or not, dropped."""
        import trio
        while not stop.is_set():
            path = self.rng.choice(("/events?history=true", "/events?max_rate=5",
                                    "/events?types=metrics&snapshot=true", "/events"))
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", self.port)
            except OSError:
                self._note("connect")
                await trio.sleep(0.5)
                continue
            async with stream:
                try:
                    await stream.send_all(self._upgrade(path))
                    with trio.move_on_after(self.rng.uniform(0.1, 4.0)):
                        if self.rng.random() < 0.5:  # reads
                            while await stream.receive_some(65536):
                                pass
                        else:  # never reads
                            await trio.sleep_forever()
                except (OSError, trio.BrokenResourceError):
                    pass
            self.requests += 1
            await trio.sleep(pace)


