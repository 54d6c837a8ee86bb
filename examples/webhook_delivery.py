"""Durable webhook delivery: retries with backoff, a dead-letter list, resume after Ctrl+C.

Each webhook is a job in a queue stored in SQLite (``persist_path``), so a delivery that
was accepted is never forgotten: stop the script with Ctrl+C and run it again, and it
picks up where it stopped.  Jobs have stable ids (``hook-0007``), so re-enqueueing the
same webhooks on the second run is idempotent: finished ones are not sent again.

The receiver is a small HTTP/1.1 server on 127.0.0.1 (Trio streams, requests parsed by
h11, which httpx installs), started by this script.  It behaves like the endpoints real
webhook senders face:

- about one request in four fails with ``503``;
- every few seconds it goes down for a while (connections refused);
- ``/hooks/legacy`` always answers ``500``: those deliveries use up their retries and
  end FAILED, the dead-letter state, listed at the end for someone to look at (and
  ``q.retry(id)`` once it is fixed).

Delivery is at-least-once: the receiver counts duplicates by the ``Webhook-Id`` header
(a request that timed out on our side may have arrived).

    python examples/webhook_delivery.py               # 200 webhooks, store webhooks.db
    python examples/webhook_delivery.py --quick       # 40 webhooks, a few seconds
    python examples/webhook_delivery.py --db other.db
"""

from __future__ import annotations

import argparse
import json
import random
import signal
from collections import Counter
from functools import partial
from http import HTTPStatus
from typing import Any

import h11
import httpx
import trio

import trioqueue
from trioqueue import JobStatus

# --------------------------------------------------------------------- the receiver


class Receiver:
    """A webhook endpoint that fails some requests and can be switched off and on."""

    def __init__(self, seed: int = 7) -> None:
        self.random = random.Random(seed)
        self.seen: Counter[str] = Counter()
        self.answers: Counter[int] = Counter()
        self.port = 0

    def answer(self, path: str, headers: dict[bytes, bytes], body: bytes) -> int:
        """The status for one webhook."""
        if path == "/hooks/legacy":
            status = 500
        elif self.random.random() < 0.25:
            status = 503
        else:
            json.loads(body)  # a real receiver parses it; a bad body would be a 500
            self.seen[headers.get(b"webhook-id", b"?").decode()] += 1
            status = 204
        self.answers[status] += 1
        return status

    async def handle(self, stream: trio.SocketStream) -> None:
        """One connection: requests in turn (keep-alive), each answered with no body."""
        conn = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        body = bytearray()
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Request):
                    request, body = event, bytearray()
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage) and request is not None:
                    status = self.answer(request.target.decode(), dict(request.headers),
                                         bytes(body))
                    length = [] if status == 204 else [("content-length", "0")]
                    response = h11.Response(status_code=status, headers=length,
                                            reason=HTTPStatus(status).phrase)
                    await stream.send_all(conn.send(response) + conn.send(h11.EndOfMessage()))
                    if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                        return  # the client asked to close
                    conn.start_next_cycle()
                else:  # the client closed the connection
                    return
        except (h11.RemoteProtocolError, trio.BrokenResourceError):
            return  # a broken request or a vanished client: hang up

    async def run(self, up: float, down: float, *, task_status: trio.TaskStatus[int]) -> None:
        """Serve for ``up`` seconds, refuse connections for ``down`` seconds, repeat."""
        first = True
        while True:
            with trio.move_on_after(up):
                async with trio.open_nursery() as nursery:
                    listeners = await nursery.start(partial(
                        trio.serve_tcp, self.handle, self.port, host="127.0.0.1"))
                    self.port = listeners[0].socket.getsockname()[1]
                    if first:
                        task_status.started(self.port)
                        first = False
                    await trio.sleep_forever()
            print(f"receiver: down for {down:.1f} s", flush=True)
            await trio.sleep(down)
            print("receiver: up again", flush=True)


# --------------------------------------------------------------------- the job

registry = trioqueue.TaskRegistry()
HTTP: dict[str, httpx.AsyncClient] = {}


@registry.task(name="deliver_webhook", max_retries=6, timeout=5.0)
async def deliver_webhook(job: trioqueue.Job) -> dict[str, Any]:
    """POST the event; any error or non-2xx answer fails the attempt, so it is retried."""
    response = await HTTP["client"].post(
        job.payload["path"],
        json=job.payload["event"],
        headers={"Webhook-Id": job.id, "Webhook-Attempt": str(job.attempts)},
    )
    response.raise_for_status()
    return {"status": response.status_code, "attempts": job.attempts}


def webhooks(count: int) -> list[tuple[str, dict[str, Any]]]:
    """The same ids and bodies on every run: that is what makes re-running idempotent."""
    out = []
    for i in range(count):
        endpoint = "legacy" if i % 15 == 4 else f"shop-{i % 3}"
        out.append((f"hook-{i:04d}", {
            "path": f"/hooks/{endpoint}",  # the client adds the receiver's address
            "event": {"type": "order.paid", "order": 5000 + i, "amount_cents": 1999 + i},
        }))
    return out


async def main(args: argparse.Namespace) -> None:
    count = 40 if args.quick else 200
    up, down = (1.2, 0.4) if args.quick else (4.0, 1.5)
    config = trioqueue.QueueConfig(
        workers=8,
        persist_path=None if args.memory else args.db,
        retry_base=0.1 if args.quick else 0.5, retry_factor=2.0,
        retry_max=1.0 if args.quick else 5.0,
        shutdown_timeout=5.0,
    )
    receiver = Receiver()
    status: Counter[str] = Counter()
    interrupted = False
    failed: list[trioqueue.Job] = []
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(receiver.run, up, down)
            base = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=base, timeout=2.0) as client:
                HTTP["client"] = client
                async with trioqueue.open_queue(registry, config) as q:
                    with trio.CancelScope() as app:

                        async def on_signal() -> None:
                            async for _ in signals:
                                if app.cancel_called:  # a second Ctrl+C: stop now
                                    print("second Ctrl+C: interrupting the deliveries in "
                                          "flight (they stay queued in the store)", flush=True)
                                    nursery.cancel_scope.cancel()
                                    return
                                print("\nCtrl+C: stopping; deliveries in flight finish, the "
                                      "rest stay in the store (Ctrl+C again to stop at once)",
                                      flush=True)
                                app.cancel()

                        nursery.start_soon(on_signal)
                        await deliver_all(q, webhooks(count), status,
                                          0.5 if args.quick else 2.0)
                    interrupted = app.cancelled_caught
                    failed = await q.list_jobs(status=JobStatus.FAILED, limit=1000)
            nursery.cancel_scope.cancel()  # the receiver and the signal watcher
    answers = ", ".join(f"{n}x {code}" for code, n in sorted(receiver.answers.items()))
    duplicates = sum(n - 1 for n in receiver.seen.values())
    print(f"receiver answered {answers or 'nothing'}; {len(receiver.seen)} distinct webhooks "
          f"arrived this run, {duplicates} duplicates")
    print(f"FAILED jobs (dead letter): {len(failed)}")
    for job in failed:
        error = (job.error or "").splitlines()[0]  # httpx adds a second line with a link
        print(f"  {job.id}  attempts={job.attempts}  {job.payload['path']}  {error}")
    if interrupted and args.memory:
        print("interrupted: --memory kept nothing; the jobs not finished are lost")
    elif interrupted:
        print(f"interrupted: run again with the same store ({args.db}) to resume")


async def deliver_all(
    q: trioqueue.JobQueue, hooks: list[tuple[str, dict[str, Any]]], status: Counter[str],
    every: float,
) -> None:
    """Enqueue every webhook (idempotent by id), then wait for all of them."""
    already = 0
    ids = []
    for hook_id, payload in hooks:
        job = await q.enqueue("deliver_webhook", payload, job_id=hook_id)
        ids.append(job.id)
        if job.status.terminal:
            already += 1
    if already:
        print(f"resumed: {already} of {len(hooks)} webhooks were finished in an earlier run "
              f"(delete the store to start over)", flush=True)

    async def progress() -> None:
        while True:
            await trio.sleep(every)
            m = q.metrics()
            print(f"delivered {status['completed']}/{len(hooks)}, failed {status['failed']}, "
                  f"retries so far {m.retried}, waiting {m.scheduled}", flush=True)

    async def await_one(job_id: str) -> None:
        done = await q.wait(job_id)
        status[done.status.value] += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(progress)
        async with trio.open_nursery() as waiters:
            for job_id in ids:
                waiters.start_soon(await_one, job_id)
        nursery.cancel_scope.cancel()
    print(f"delivered {status['completed']}/{len(hooks)}, failed {status['failed']}: all done",
          flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (a few seconds)")
    parser.add_argument("--db", default="webhooks.db", help="the job store (default: %(default)s)")
    parser.add_argument("--memory", action="store_true",
                        help="no store: nothing survives Ctrl+C (for comparison)")
    args = parser.parse_args()
    trio.run(main, args)
