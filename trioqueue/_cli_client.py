"""The ``trioqueue`` client commands (``enqueue``, ``status``, ``list``, ``cancel``,
``retry``, ``metrics``, ``tasks``, ``monitor``): each talks to a server through
:class:`trioqueue.client.Client` (see :mod:`trioqueue.cli`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

import trio

from ._cli_common import DEFAULT_PORT, UsageError, env_first, env_named, parse_int
from ._exceptions import InvalidJob, InvalidTransition, QueueFull
from ._job import Job, JobStatus

if TYPE_CHECKING:
    from .client import Client


def client_options(args: argparse.Namespace) -> tuple[str, str | None]:
    """The server's URL (``--url``, ``TRIOQUEUE_URL``, else this machine on
    ``TRIOQUEUE_PORT``/``PORT`` or 8080) and the token (``--token``, ``TRIOQUEUE_TOKEN``)."""
    env = os.environ
    url_from = "--url"
    url = args.url
    if not url:
        url_from = "TRIOQUEUE_URL"
        url = env_first(env, url_from)
    if not url:
        port = DEFAULT_PORT
        found = env_named(env, "TRIOQUEUE_PORT", "PORT")
        if found is not None:
            port = parse_int(found[0], found[1])
            if not 0 < port <= 65535:
                raise UsageError(f"{found[0]}: expected a port 1..65535, got {port}")
        url = f"http://127.0.0.1:{port}"
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"{url_from}: expected http://HOST[:PORT] or https://..., got {url!r}")
    if "?" in url or "#" in url:  # the client puts its own path and query after it
        raise UsageError(f"{url_from}: expected the server's address without a query or "
                         f"fragment, got {url!r}")
    from ._client_answers import check_url

    try:
        url = check_url(url, url_from)
    except ValueError as exc:  # the URL of one of the server's routes, not its root
        raise UsageError(str(exc)) from None
    token = args.token if args.token is not None else env_first(env, "TRIOQUEUE_TOKEN")
    return url, token or None


@contextlib.asynccontextmanager
async def _connect(args: argparse.Namespace) -> AsyncIterator[Client]:
    from .client import Client

    url, token = client_options(args)
    async with Client(url, token=token) as client:
        yield client


def clean(value: Any, width: int | None = None) -> str:
    """A value for one table cell: control characters escaped (a job's error text must
    not move the terminal's cursor), cut to ``width``."""
    text = "-" if value is None else str(value)
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if width is not None and len(text) > width:
        text = text[: width - 3] + "..."
    return text


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    lines = []
    for row in (headers, *rows):
        cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _print_job(job: Job) -> None:
    print(json.dumps(job.to_dict(), indent=2))


class _Progress:
    """A progress bar on a terminal; a line every ~10 % elsewhere (logs, CI)."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = total
        self.done = 0
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self._next_line = 0.0

    def step(self, n: int = 1) -> None:
        self.done += n
        if self.tty:
            width = 30
            filled = int(width * self.done / self.total)
            rate = self.done / max(time.monotonic() - self.started, 1e-9)
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] "
                              f"{self.done}/{self.total} {rate:,.0f}/s")
            self.stream.flush()
        elif self.done >= self._next_line or self.done == self.total:
            self.stream.write(f"enqueued {self.done}/{self.total}\n")
            self.stream.flush()
            self._next_line = self.done + max(1, self.total // 10)

    def note(self, text: str) -> None:
        """A line of its own (on a terminal, below the bar as it stands)."""
        self.stream.write(("\n" if self.tty and self.done else "") + f"{text}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


BATCH = 100
"""Jobs per ``POST /jobs/batch`` request of ``enqueue --count``."""
MISSING_SHOWN = 4
"""Ranges of jobs not enqueued that the message of a stopped ``enqueue --count`` names."""


class _Taken:
    """The ids of ``enqueue --count``'s jobs by their index (0..count-1), as the server
    took them: requests end in any order, the summary speaks of the sequence asked for."""

    def __init__(self, count: int) -> None:
        self.ids: list[str | None] = [None] * count
        self.done = 0
        self.existing = 0
        """Of ``done``, the jobs that were there already (an ``--id`` sent before)."""

    def take(self, first: int, ids: list[str], created: list[bool]) -> None:
        self.ids[first:first + len(ids)] = ids
        self.done += len(ids)
        self.existing += created.count(False)

    def ends(self) -> tuple[str | None, str | None]:
        """The ids of the first and the last job of the sequence that were enqueued."""
        taken = [job_id for job_id in self.ids if job_id is not None]
        return (taken[0], taken[-1]) if taken else (None, None)

    def missing(self) -> list[tuple[int, int]]:
        """The runs of indexes not enqueued, ``(first, last)`` each, in order."""
        runs: list[tuple[int, int]] = []
        start: int | None = None
        for i, job_id in enumerate([*self.ids, ""]):
            if job_id is None and start is None:
                start = i
            elif job_id is not None and start is not None:
                runs.append((start, i - 1))
                start = None
        return runs

    def stopped(self, prefix: str | None) -> str:
        """The one line of a stopped run: how many went, the first and last that did,
        and the ones that did not (their ids with ``--id``, else their numbers from 0;
        a request cut short may have gone through: with ``--id``, running the same
        command again enqueues only the missing ones)."""
        first, last = self.ends()
        line = f"stopped with {self.done} of {len(self.ids)} jobs enqueued"
        if self.existing:
            line += f" ({self.existing} of them there already)"
        if first is not None:
            line += f" (first {first}, last {last})"
        runs = self.missing()
        if not runs:
            return line

        def name(i: int) -> str:
            return f"{prefix}-{i}" if prefix else str(i)

        shown = [name(a) if a == b else f"{name(a)}..{name(b)}" for a, b in runs[:MISSING_SHOWN]]
        if len(runs) > MISSING_SHOWN:
            shown.append(f"and {len(runs) - MISSING_SHOWN} more ranges")
        what = "ids" if prefix else "jobs numbered from 0"
        again = "; the same command again enqueues just those" if prefix else ""
        return f"{line}; not enqueued (or unanswered), {what}: {', '.join(shown)}{again}"


async def _enqueue_many(args: argparse.Namespace, payload: Any) -> int:
    """``--count N``: N jobs in batches of :data:`BATCH` (``POST /jobs/batch``),
    ``--concurrency`` requests in flight; one request a job against a server without
    the batch route or with a capacity under the batch size.  Stopped (an error, Ctrl+C),
    it says how many were enqueued before, and which were not."""
    url, token = client_options(args)
    progress = _Progress(args.count, sys.stderr)
    ids = _Taken(args.count)
    started = time.monotonic()
    limiter = trio.CapacityLimiter(args.concurrency)
    told_full = False

    async def back_off(exc: QueueFull) -> None:
        nonlocal told_full
        delay = exc.retry_after or 1.0
        if not told_full:  # once: it may go on for long, and the bar would stop silently
            told_full = True
            progress.note(f"the queue is full ({exc}); trying again every {delay:g} s")
        await trio.sleep(delay)

    try:
        await _post_all(args, payload, url, token, ids, progress, limiter, back_off)
    except BaseException as exc:
        progress.close()
        if ids.done or not isinstance(exc, Exception):  # some went, or Ctrl+C: say which
            print(f"trioqueue enqueue: {ids.stopped(args.id)}", file=sys.stderr)
        raise
    progress.close()
    elapsed = time.monotonic() - started
    first, last = ids.ends()
    print(json.dumps({"enqueued": ids.done - ids.existing, "existing": ids.existing,
                      "seconds": round(elapsed, 3),
                      "per_second": round(ids.done / max(elapsed, 1e-9), 1),
                      "first": first, "last": last}))
    return 0


async def _post_all(args: argparse.Namespace, payload: Any, url: str, token: str | None,
                    ids: _Taken, progress: _Progress, limiter: trio.CapacityLimiter,
                    back_off: Callable[[QueueFull], Awaitable[None]]) -> None:
    """:func:`_enqueue_many`'s requests: each job's id goes in ``ids``, at its index, as
    it is taken."""
    from .client import Client, ServerError

    singles = False
    """Set once the server cannot take batches: the rest go one by one."""
    async with Client(url, token=token) as client:

        async def one(i: int) -> None:
            job_id = f"{args.id}-{i}" if args.id else None
            while True:
                try:
                    job, created = await client.enqueue_created(
                        args.task, payload, priority=args.priority, job_id=job_id,
                        delay=args.delay, max_retries=args.max_retries,
                        timeout=args.timeout,
                    )
                    break
                except QueueFull as exc:  # back off as the server asks, then again
                    await back_off(exc)
            ids.take(i, [job.id], [created])
            progress.step()

        async def chunk(first: int, n: int) -> None:
            nonlocal singles
            async with limiter:
                while not singles:
                    try:
                        jobs, created = await client.enqueue_many_created(
                            args.task, [payload] * n, priority=args.priority,
                            delay=args.delay, max_retries=args.max_retries,
                            timeout=args.timeout,
                            job_ids=[f"{args.id}-{i}" for i in range(first, first + n)]
                            if args.id else None,
                        )
                    except QueueFull as exc:
                        await back_off(exc)
                        continue
                    except InvalidJob as exc:
                        if "more than the capacity" not in str(exc):
                            raise
                        singles = True  # a queue smaller than a batch
                    except ServerError as exc:
                        if exc.status not in (404, 405):
                            raise
                        singles = True  # a server without POST /jobs/batch
                    else:
                        ids.take(first, [job.id for job in jobs], created)
                        progress.step(len(jobs))
                        return
                for i in range(first, first + n):
                    await one(i)

        async with trio.open_nursery() as nursery:
            for first in range(0, args.count, BATCH):
                nursery.start_soon(chunk, first, min(BATCH, args.count - first))


def _not_json_constant(name: str) -> Any:
    """``json.loads`` takes ``NaN`` and ``Infinity``; JSON has no such values."""
    raise ValueError(f"{name} is not a JSON value")


def _check_flag(flag: str, value: Any, check: Callable[[Any], object]) -> None:
    """A job option checked here, before any request, as the queue checks it: a bad one
    is a usage error naming the flag (exit 2), not the server's 400 naming a JSON field."""
    if value is None:
        return
    try:
        check(value)
    except InvalidJob as exc:
        field, _, why = str(exc).partition(": ")
        raise UsageError(f"{flag}: {why or field}") from None


def _check_job_flags(args: argparse.Namespace) -> None:
    """``enqueue``'s job options (:func:`_check_flag`)."""
    from ._job import check_delay, check_job_id, check_max_retries, check_timeout

    _check_flag("--delay", args.delay, check_delay)
    _check_flag("--timeout", args.timeout, check_timeout)
    _check_flag("--max-retries", args.max_retries, check_max_retries)
    # With --count the ids are ID-0, ID-1, ...: the longest is checked.
    _check_flag("--id", args.id if args.id is None or args.count <= 1
                else f"{args.id}-{args.count - 1}", check_job_id)


async def cmd_enqueue(args: argparse.Namespace) -> int:
    from .client import Client

    try:
        payload = None if args.payload is None else json.loads(
            args.payload, parse_constant=_not_json_constant)
    except ValueError as exc:
        raise UsageError(f"payload: not valid JSON ({exc})") from None
    _check_job_flags(args)
    if args.count > 1:
        if args.wait:
            raise UsageError("--wait: not with --count (it waits for one job)")
        if args.concurrency < 1:
            raise UsageError(f"--concurrency: expected a positive integer, got "
                             f"{args.concurrency}")
        return await _enqueue_many(args, payload)
    if args.count < 1:
        raise UsageError(f"--count: expected a positive integer, got {args.count}")
    url, token = client_options(args)
    async with Client(url, token=token) as client:
        job = await client.enqueue(
            args.task, payload, priority=args.priority, job_id=args.id, delay=args.delay,
            max_retries=args.max_retries, timeout=args.timeout,
        )
        if args.wait:
            try:  # (Ctrl+C may come as soon as the line is out)
                print(f"trioqueue enqueue: job {job.id} enqueued; waiting for it to finish",
                      file=sys.stderr)
                job = await client.wait(job.id)
            except BaseException:
                print(f"trioqueue enqueue: stopped waiting; job {job.id} was enqueued and may "
                      f"still run (trioqueue status {job.id})", file=sys.stderr)
                raise
    _print_job(job)
    if args.wait and job.status in (JobStatus.FAILED, JobStatus.CANCELLED):
        # The job ran and did not succeed: a script's `&&` must not go on.
        reason = f": {clean(job.error)}" if job.error else ""
        print(f"trioqueue enqueue: job {job.id} ended {job.status.value}{reason}",
              file=sys.stderr)
        return 1
    return 0


async def cmd_status(args: argparse.Namespace) -> int:
    async with _connect(args) as client:
        job = await client.get(args.id)
    _print_job(job)
    return 0


async def cmd_list(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UsageError(f"--limit: expected a positive integer, got {args.limit}")
    from ._job import check_job_id

    _check_flag("--before", args.before, check_job_id)
    nxt: str | None = None
    async with _connect(args) as client:
        if args.all:
            jobs = [job async for job in client.iter_jobs(args.status, task=args.task)]
        else:
            page = await client.list_page(args.status, args.limit, task=args.task,
                                          before=args.before)
            jobs, nxt = page.jobs, page.next
    if args.json:
        print(json.dumps({"jobs": [job.to_dict() for job in jobs], "next": nxt}, indent=2))
        return 0
    if not jobs:
        print("no jobs" + (f" {args.status}" if args.status else "")
              + (f" of task {clean(args.task, 60)}" if args.task else ""))
        return 0
    rows = [[clean(job.id), clean(job.task, 30), job.status.value, job.priority.label,
             str(job.attempts), _when(job.created_at), clean(job.error, 60)]
            for job in jobs]
    print(table(["ID", "TASK", "STATUS", "PRIORITY", "ATTEMPTS", "CREATED (UTC)", "ERROR"],
                 rows))
    if nxt is not None:
        print(f"more: add --before {clean(nxt)} for the next page, or --all",
              file=sys.stderr)
    return 0


@contextlib.contextmanager
def _naming(job_id: str) -> Iterator[None]:
    """An :class:`InvalidTransition` names the job (``job ID: cannot cancel a job that is
    completed``)."""
    try:
        yield
    except InvalidTransition as exc:
        raise InvalidTransition(f"job {job_id}: {exc}", exc.status) from None


async def cmd_cancel(args: argparse.Namespace) -> int:
    async with _connect(args) as client:
        with _naming(args.id):
            job = await client.cancel(args.id)
    _print_job(job)
    return 0


async def cmd_retry(args: argparse.Namespace) -> int:
    bulk = "failed" if args.failed else "cancelled" if args.cancelled else None
    if args.task is not None and bulk is None:
        raise UsageError("--task: only with --failed or --cancelled")
    if bulk is None and args.id is None:
        raise UsageError("expected a job ID, or --failed or --cancelled for all such jobs")
    if bulk is not None and args.id is not None:
        raise UsageError(f"a job ID or --{bulk}, not both")
    async with _connect(args) as client:
        if bulk is None:
            with _naming(args.id):
                _print_job(await client.retry(args.id))
            return 0
        retried = await client.retry_all(bulk, task=args.task)
    print(json.dumps({"retried": retried}))
    return 0


async def cmd_metrics(args: argparse.Namespace) -> int:
    async with _connect(args) as client:
        if args.prometheus:
            sys.stdout.write(await client.prometheus_metrics())
            return 0
        metrics = await client.metrics()
    print(json.dumps(metrics, indent=2))
    return 0


async def cmd_tasks(args: argparse.Namespace) -> int:
    async with _connect(args) as client:
        tasks = await client.tasks()
    if args.json:
        print(json.dumps({"tasks": tasks}, indent=2))
        return 0
    columns = ("name", "priority", "max_retries", "timeout", "schedule", "every",
               "concurrency")
    rows = [[clean(task.get(column)) for column in columns] + [_next_run(task)]
            for task in tasks]
    at = columns.index("schedule")
    for row, task in zip(rows, tasks, strict=True):
        if task.get("schedule") is not None and task.get("tz") is not None:
            row[at] += f" ({clean(task['tz'], 40)})"  # (a cron schedule read in that zone)
    print(table([c.upper() for c in columns] + ["NEXT RUN (UTC)"], rows) if rows
          else "no tasks")
    return 0


def _next_run(task: dict[str, Any]) -> str:
    """A periodic task's next due time, as the other tables show times ("-" if none)."""
    text = task.get("next_run")
    if not isinstance(text, str):
        return "-"
    try:
        return _when(datetime.fromisoformat(text).timestamp())
    except ValueError:
        return clean(text, 40)


# ---------------------------------------------------------------------------- monitor


async def cmd_monitor(args: argparse.Namespace) -> int:
    from ._monitor import monitor

    url, token = client_options(args)
    for flag, value in (("--interval", args.interval), ("--window", args.window)):
        if not (math.isfinite(value) and value > 0):
            raise UsageError(f"{flag}: expected seconds > 0, got {value}")
    if not (math.isfinite(args.duration) and args.duration >= 0):
        raise UsageError(f"--duration: expected seconds >= 0, got {args.duration}")
    return await monitor(url, token, interval=args.interval, window=args.window,
                         duration=args.duration, once=args.once, out=sys.stdout,
                         err=sys.stderr)
