"""Crash tests of the Wave 2 features: a real trioqueue process (tests/crash_wave2_child.py)
killed with SIGKILL at a chosen moment (or killing itself at one), then the same store
reopened by another process, or another node started on the same Redis queue.

What a kill must not do: split a batch (all or nothing), lose a submitted call or run it
where its function is not known, enqueue a periodic run twice or catch up more than once,
lose a job set aside by a concurrency limit or break the limit after the restart, lose
stored progress, or lose or double a job in a bulk retry.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio

import trioqueue
from tests import crash_wave2_child
from tests.redis_util import REDIS_URL, admin, delete_queue, unique
from tests.sqlite_util import sqlite_at
from tests.test_server_app import call
from trioqueue import JobNotFound, JobStatus
from trioqueue.server import App

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "CRASH_WAVE2_QUICK": "0"}
QUICK = {**ENV, "CRASH_WAVE2_QUICK": "1"}


@contextmanager
def spawn(*args: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    """The child, killed by its pid on the way out if it still runs, its pipes closed."""
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.crash_wave2_child", *args], cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        env=env or ENV,
    )
    try:
        yield child
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
        child.wait()
        for pipe in (child.stdout, child.stderr):
            if pipe is not None:
                pipe.close()


def run(*args: str, env: dict[str, str] | None = None,
        ok: tuple[int, ...] = (-signal.SIGKILL,)) -> str:
    """Run the child to its end (by default, the SIGKILL it sends itself); its output."""
    with spawn(*args, env=env) as child:
        out, err = child.communicate(timeout=60)
        assert child.returncode in ok, f"child {args} exited {child.returncode}:\n{err}"
    return out


def read_line(child: subprocess.Popen[str]) -> str:
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line:
        child.wait()
        raise AssertionError(child.stderr.read() if child.stderr else "no output")
    return line.strip()


def kill(child: subprocess.Popen[str]) -> None:
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL


def ran(db: Path) -> list[tuple[int, str, str]]:
    """(pid, "start" or "end", job) per line the handlers logged, in order."""
    path = Path(f"{db}.ran")
    lines = path.read_text().splitlines() if path.exists() else []
    return [(int(pid), what, job) for pid, what, job in (line.split() for line in lines)]


def config(db: Path, **kw: Any) -> trioqueue.QueueConfig:
    return trioqueue.QueueConfig(persist_path=db, shutdown_timeout=1.0, **kw)


async def settle(q: trioqueue.JobQueue) -> None:
    """Until nothing is queued or running (recovered jobs streamed in and run)."""
    with trio.fail_after(30):
        while True:
            m = q.metrics()
            if not sum(m.queued.values()) and not m.scheduled and not m.processing:
                return
            await trio.sleep(0.01)


async def wait_for(q: trioqueue.JobQueue, job_id: str) -> trioqueue.Job:
    """``q.wait(job_id)`` once the job exists (a periodic run is enqueued when due)."""
    while True:
        try:
            return await q.wait(job_id)
        except JobNotFound:
            await trio.sleep(0.01)


def rows(db: Path) -> dict[str, tuple[str, int, str | None]]:
    """Job id -> (status, attempts, progress) as the store holds it."""
    with sqlite_at(db) as conn:
        got = conn.execute("SELECT id, status, attempts, progress FROM jobs")
        return {r[0]: (r[1], r[2], r[3]) for r in got}


# ---------------------------------------------------------------------- batches


def test_a_batch_in_a_flush_written_in_chunks_commits_all_or_nothing(tmp_path: Path) -> None:
    """A flush of more rows than one transaction takes (16,384 as shipped; 100 in the
    child) is written in chunks, which were cut anywhere: a batch could straddle two
    transactions, and a kill between them left part of it stored (16,384 of a batch of
    20,000, in both modes).  The child dies right after its first transaction, whose cut
    fell inside the batch: the batch is all there.  (``durability="batch"`` writes the
    same way: tests/test_persistence.py counts its transactions.)"""
    db = tmp_path / "big.db"
    out = run("bigbatch", str(db), "sync", "300")
    assert "flushed" not in out  # it died at the first write, as arranged
    with sqlite_at(db) as conn:
        payloads = [json.loads(p) for (p,) in conn.execute("SELECT payload FROM jobs")]
    # The first transaction held the 30 jobs before the batch and the batch, whole.
    assert (sum("single" in p for p in payloads), sum("i" in p for p in payloads)) == (30, 300)


def test_batches_acknowledged_before_a_kill_are_whole(tmp_path: Path) -> None:
    """``durability="sync"``: every batch that returned is stored whole; a batch cut off
    by the kill is stored whole or not at all."""
    seed = int(os.environ.get("CRASH_SEED", random.randrange(1 << 30)))
    db = tmp_path / "batches.db"
    acked: dict[str, int] = {}
    with spawn("batches", str(db), "sync", env={**ENV, "CRASH_SEED": str(seed)}) as child:
        assert read_line(child) == "open"
        target = random.Random(seed).randrange(3, 20)
        while len(acked) < target:
            name, size = read_line(child).split()
            acked[name] = int(size)
        kill(child)  # mid-flight: the next batch is under way
        assert child.stdout is not None
        for line in child.stdout.read().split("\n"):
            if line.strip():
                name, count = line.split()
                acked[name] = int(count)
    sizes = random.Random(seed)  # the child's sizes, one after another
    expected = {f"b{k}": sizes.randint(1, 100) for k in range(len(acked) + 1)}
    stored = Counter(job_id.split("-")[0] for job_id in rows(db))
    for name, want in acked.items():
        assert want == expected[name]
        assert stored[name] == want, f"seed {seed}: batch {name} acknowledged, not whole"
    cut = {name: n for name, n in stored.items() if name not in acked}
    assert set(cut) <= {f"b{len(acked)}"}, seed  # at most the one under way...
    for name, n in cut.items():
        assert n == expected[name], f"seed {seed}: {n} of batch {name} stored"  # ...whole


# ---------------------------------------------------------------------- submit


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The child's handlers run in this process too (reopening what a child left): they
    log to the same file and return at once."""
    monkeypatch.setenv("CRASH_WAVE2_QUICK", "1")
    db = tmp_path / "q.db"
    monkeypatch.setattr(crash_wave2_child, "RAN", f"{db}.ran")
    return db


async def test_a_submitted_call_survives_a_kill_and_runs_only_where_its_function_is_known(
    here: Path,
) -> None:
    db = here
    assert "submitted" in run("submit", str(db))
    # A queue that never named add: the job is left in the store, never failed, not run.
    async with trioqueue.open_queue(trioqueue.TaskRegistry(), config(db)) as q:
        job = await q.get("sum")
        assert (job.status, job.payload) == (JobStatus.SCHEDULED, {"args": [2, 3]})
        await trio.sleep(0.6)  # due by now: still left alone
        assert (await q.get("sum")).status is JobStatus.SCHEDULED
    # One that names it before it opens runs the stored call with its args.
    registry = trioqueue.TaskRegistry()
    registry.submittable(crash_wave2_child.add)
    async with trioqueue.open_queue(registry, config(db)) as q:
        with trio.fail_after(30):
            done = await q.wait("sum")
    assert (done.status, done.result, done.attempts) == (JobStatus.COMPLETED, 5, 1)
    assert [line[1:] for line in ran(db)] == [("start", "add(2,3)")]


async def test_a_submitted_call_running_at_the_kill_waits_queued_for_its_function(
    here: Path,
) -> None:
    db = here
    with spawn("submitrun", str(db)) as child:
        assert await trio.to_thread.run_sync(read_line, child) == "running"
        kill(child)
    assert rows(db)["hang"][:2] == ("processing", 1)
    # Unknown here: back to QUEUED with the attempt counted, not failed, not run.
    async with trioqueue.open_queue(trioqueue.TaskRegistry(), config(db)) as q:
        job = await q.get("hang")
        assert (job.status, job.attempts) == (JobStatus.QUEUED, 1)
    assert rows(db)["hang"][:2] == ("queued", 1)
    registry = trioqueue.TaskRegistry()
    registry.submittable(crash_wave2_child.hang)
    async with trioqueue.open_queue(registry, config(db)) as q:
        with trio.fail_after(30):
            done = await q.wait("hang")
    assert (done.status, done.result, done.attempts) == (JobStatus.COMPLETED, "h", 2)
    assert [line[1:] for line in ran(db)] == [("start", "hang(h)")] * 2


async def test_redis_a_submitted_call_of_a_killed_node_waits_for_a_node_that_knows_it(
    here: Path,
) -> None:
    """Node A runs a submitted call and is killed.  Node B, which lacks the function,
    takes A's lease when it runs out and leaves the job queued (not failed, not run);
    node C, which names the function, runs it with its args."""
    queue = unique("crash-submit")
    env = {**ENV, "CRASH_WAVE2_QUEUE": queue, "CRASH_WAVE2_LEASE": "0.5",
           "CRASH_WAVE2_RAN": f"{here}.ran"}
    try:
        with spawn("submitrun", REDIS_URL, env=env) as child:
            assert await trio.to_thread.run_sync(read_line, child) == "running"
            kill(child)
        config = trioqueue.QueueConfig(redis_url=REDIS_URL, queue_name=queue, lease=0.5)
        async with trioqueue.open_queue(trioqueue.TaskRegistry(), config) as b:
            with trio.fail_after(20):
                while (job := await b.get("hang")).status is not JobStatus.QUEUED:  # noqa: ASYNC110 - Redis' clock
                    await trio.sleep(0.02)
            assert job.attempts == 1
            await trio.sleep(0.3)  # (a worker of B would have had it by now)
            assert (await b.get("hang")).status is JobStatus.QUEUED
        registry = trioqueue.TaskRegistry()
        registry.submittable(crash_wave2_child.hang)
        async with trioqueue.open_queue(registry, config) as c:
            with trio.fail_after(20):
                done = await c.wait("hang")
        assert (done.status, done.result, done.attempts) == (JobStatus.COMPLETED, "h", 2)
        assert done.payload == {"args": ["h"]}
        assert [line[1:] for line in ran(here)] == [("start", "hang(h)")] * 2
    finally:
        async with admin() as client:
            await delete_queue(client, queue)


# ---------------------------------------------------------------------- periodic


async def test_periodic_runs_stay_unique_and_catch_up_once_across_kills(
    here: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The hourly run of 10:00 is stored, and the process dies before its mark; a second
    process in the same hour is killed while the run runs; a third finishes it and
    enqueues nothing; a fourth at 15:05 catches up once (15:00), not once per missed
    hour; a fifth in that hour adds nothing.  One job per due time, no other id ran."""
    from trioqueue.testing import engine

    db = here
    first, late = "hourly@2026-12-05T10:00:00.000Z", "hourly@2026-12-05T15:00:00.000Z"
    run("hourly", str(db), "2026-12-05T10:20:00", "die-at-mark")
    assert set(rows(db)) == {first}
    with spawn("hourly", str(db), "2026-12-05T10:40:00") as child:
        assert await trio.to_thread.run_sync(read_line, child) == "open"
        assert await trio.to_thread.run_sync(read_line, child) == first  # runs again
        kill(child)
    assert set(rows(db)) == {first}

    def mark() -> str | None:
        with sqlite_at(db) as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'periodic:hourly'"
                               ).fetchone()
        return None if row is None else str(row[0])

    for wall in ("2026-12-05T10:50:00", "2026-12-05T15:05:00", "2026-12-05T15:59:00"):
        when = datetime.fromisoformat(wall).replace(tzinfo=UTC).timestamp()
        monkeypatch.setattr(engine, "time", SimpleNamespace(time=lambda t=when: t))
        async with trioqueue.open_queue(crash_wave2_child.periodic, config(db)) as q:
            with trio.fail_after(30):  # the last due time is marked: its run is enqueued
                while mark() != repr(when // 3600 * 3600):  # noqa: ASYNC110 - the store
                    await trio.sleep(0.01)
            await settle(q)
    assert {job: status for job, (status, _, _) in rows(db).items()} == {
        first: "completed", late: "completed"}
    starts = Counter(job for _, what, job in ran(db) if what == "start")
    assert set(starts) == {first, late}
    assert starts[late] == 1


async def test_redis_periodic_runs_stay_unique_and_catch_up_once_across_a_node_kill(
    here: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A node is killed while the 10:00 run runs; a node opened at 10:40 takes the run
    over once the lease ran out (the same id, attempt 2) and enqueues nothing of its own;
    one opened at 15:05 catches up once (15:00)."""
    from trioqueue.testing import engine

    queue = unique("crash-periodic")
    first, late = "hourly@2026-12-05T10:00:00.000Z", "hourly@2026-12-05T15:00:00.000Z"
    env = {**ENV, "CRASH_WAVE2_QUEUE": queue, "CRASH_WAVE2_LEASE": "0.5",
           "CRASH_WAVE2_RAN": f"{here}.ran"}
    try:
        with spawn("hourly", REDIS_URL, "2026-12-05T10:20:00", env=env) as child:
            assert await trio.to_thread.run_sync(read_line, child) == "open"
            assert await trio.to_thread.run_sync(read_line, child) == first
            kill(child)
        config = trioqueue.QueueConfig(redis_url=REDIS_URL, queue_name=queue, lease=0.5)
        async with admin() as client:
            for wall, run_id in (("2026-12-05T10:40:00", first), ("2026-12-05T15:05:00", late)):
                when = datetime.fromisoformat(wall).replace(tzinfo=UTC).timestamp()
                monkeypatch.setattr(engine, "time", SimpleNamespace(time=lambda t=when: t))
                async with trioqueue.open_queue(crash_wave2_child.periodic, config) as q:
                    with trio.fail_after(30):
                        done = await wait_for(q, run_id)
                        due = str(round(when // 3600 * 3600 * 1000))
                        while await client.hget(f"tq:{{{queue}}}:periodic", "hourly") != due:  # noqa: ASYNC110
                            await trio.sleep(0.01)
                    assert done.status is JobStatus.COMPLETED
                    page = await q.list_page(None, 100)
                    assert sorted(job.id for job in page.jobs) == sorted({first, run_id})
        starts = [(pid, job) for pid, what, job in ran(here) if what == "start"]
        assert [job for _, job in starts] == [first, first, late]
        assert starts[0][0] == child.pid
        assert done.attempts == 1
    finally:
        async with admin() as client:
            await delete_queue(client, queue)


# ---------------------------------------------------------------------- concurrency


async def test_jobs_set_aside_by_a_concurrency_limit_run_after_a_kill_within_the_limit(
    here: Path,
) -> None:
    db = here
    with spawn("limited", str(db), "6") as child:
        assert await trio.to_thread.run_sync(read_line, child) == "enqueued"
        with trio.fail_after(30):
            while sum(what == "start" for _, what, _ in ran(db)) < 2:  # noqa: ASYNC110
                await trio.sleep(0.01)
        await trio.sleep(0.1)  # (4 set aside: a third start would show the limit broke)
        kill(child)
    assert len(ran(db)) == 2  # the limit held before the kill: 2 of 6 ran
    assert len(rows(db)) == 6
    assert {status for status, _, _ in rows(db).values()} <= {"queued", "processing"}
    async with trioqueue.open_queue(crash_wave2_child.registry, config(db, workers=8)) as q:
        await settle(q)
    assert {status for status, _, _ in rows(db).values()} == {"completed"}
    running = peak = 0
    for _, what, _ in ran(db)[2:]:
        running += 1 if what == "start" else -1
        peak = max(peak, running)
    assert peak <= 2  # never more than the limit after the restart either
    ends = Counter(job for _, what, job in ran(db) if what == "end")
    assert ends == Counter(f"t{i}" for i in range(6))


# ---------------------------------------------------------------------- progress


async def test_stored_progress_outlives_a_kill(here: Path) -> None:
    db = here
    with spawn("progress", str(db)) as child:
        assert await trio.to_thread.run_sync(read_line, child) == "reported"
        with trio.fail_after(30):
            while rows(db).get("p", ("", 0, None))[2] is None:  # noqa: ASYNC110 - its flush
                await trio.sleep(0.01)
        kill(child)
    progress = {"fraction": 0.5, "note": "half"}
    assert json.loads(rows(db)["p"][2] or "null") == progress
    async with trioqueue.open_queue(trioqueue.TaskRegistry(), config(db)) as q:
        job = await q.get("p")  # interrupted: back to QUEUED, its progress kept
        assert (job.status, job.attempts, job.progress) == (JobStatus.QUEUED, 1, progress)


# ---------------------------------------------------------------------- bulk retry


async def test_a_bulk_retry_cut_off_by_a_kill_loses_and_doubles_nothing(here: Path) -> None:
    """100 FAILED jobs; ``POST /jobs/retry`` in a process killed right after its store's
    K-th commit (K at random): each job is FAILED or retried (fresh attempts), none lost;
    the request sent again retries exactly the rest, and each job runs once more."""
    seed = int(os.environ.get("CRASH_SEED", random.randrange(1 << 30)))
    n = 100
    db = here
    registry = crash_wave2_child.registry
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CRASH_WAVE2_QUICK", "0")  # the first runs fail
        async with trioqueue.open_queue(registry, config(db)) as q:
            await q.enqueue_batch([trioqueue.BatchItem("fails", job_id=f"f{i}")
                                   for i in range(n)])
            await settle(q)
    assert {status for status, _, _ in rows(db).values()} == {"failed"}
    writes = random.Random(seed).randrange(3, 60)
    out = run("retryall", str(db), str(writes), env=QUICK)
    assert "202" not in out, f"seed {seed}: the retry ended before the kill"
    after = rows(db)
    assert len(after) == n
    retried = {job for job, (status, _, _) in after.items() if status != "failed"}
    assert retried, f"seed {seed}: nothing retried before the kill"
    for job in retried:  # fresh attempts (a run cut off by the kill counted)
        assert after[job][:2] in {("queued", 0), ("processing", 1), ("completed", 1)}, job
    async with trioqueue.open_queue(registry, config(db)) as q:
        await settle(q)  # what was retried runs
        status, _, body = await call(App(q), "POST", "/jobs/retry", {"status": "failed"})
        assert (status, body) == (202, {"retried": n - len(retried)}), seed
        await settle(q)
    final = rows(db)
    assert len(final) == n
    assert {status for status, _, _ in final.values()} == {"completed"}
    starts = Counter(job for _, what, job in ran(db) if what == "start")
    assert set(starts) == {f"f{i}" for i in range(n)}
    assert max(starts.values()) <= 3  # failed once; then run once, or cut off and again
