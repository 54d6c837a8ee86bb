"""Several node processes on one Redis queue (real processes, the real Redis)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import trio

import trioqueue
from trioqueue import Job, JobStatus, QueueConfig, TaskRegistry
from trioqueue.testing import NewJob, RedisState, connect

from .redis_util import REDIS_URL, admin, delete_queue, unique

ROOT = Path(__file__).resolve().parent.parent


def spawn(queue: str, runs: Path, lease: float = 30.0) -> subprocess.Popen[bytes]:
    """A node process with 3 workers (started from a plain function: Popen returns at
    once)."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.redis_node_child", REDIS_URL, queue, "3", str(runs),
         str(lease)],
        cwd=ROOT, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )


async def ready(p: subprocess.Popen[bytes]) -> None:
    assert p.stdout is not None
    line = await trio.to_thread.run_sync(p.stdout.readline)
    assert line == b"ready\n", line


async def test_three_node_processes_run_every_job_exactly_once(tmp_path: Path) -> None:
    """Three node processes of 3 workers, and this process as a fourth node of one worker,
    share 300 jobs: each runs once, attempt 1, its result the pid of the one that ran it."""
    queue = unique("nodes")
    runs = tmp_path / "runs.txt"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(3):
            procs.append(spawn(queue, runs))
        for p in procs:
            assert p.stdout is not None
            line = await trio.to_thread.run_sync(p.stdout.readline)
            assert line == b"ready\n", line
        # This process is a fourth node (enqueue needs the task registered here).
        registry = TaskRegistry()
        me = str(os.getpid())

        @registry.task
        async def record(job: Job) -> int:
            with runs.open("a") as f:
                f.write(f"{me} {job.id} {job.attempts}\n")
            return os.getpid()

        config = QueueConfig(redis_url=REDIS_URL, queue_name=queue, workers=1)
        with trio.fail_after(60):
            async with trioqueue.open_queue(registry, config) as q:
                by_index: dict[int, Job] = {}
                done_by_index: dict[int, Job] = {}

                async def enqueue(i: int) -> None:  # as concurrent producers would
                    by_index[i] = await q.enqueue("record", i)

                async def wait(i: int) -> None:
                    done_by_index[i] = await q.wait(by_index[i].id)

                for step in (enqueue, wait):
                    async with trio.open_nursery() as nursery:
                        for i in range(300):
                            nursery.start_soon(step, i)
                jobs = [by_index[i] for i in range(300)]
                done = [done_by_index[i] for i in range(300)]
        assert [d.status for d in done] == [JobStatus.COMPLETED] * 300
        assert [d.attempts for d in done] == [1] * 300
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            assert await trio.to_thread.run_sync(p.wait, 30) == 0
        lines = runs.read_text().split("\n")[:-1]
        ran = Counter(line.split()[1] for line in lines)
        assert ran == Counter({j.id: 1 for j in jobs})  # each job once, nothing else
        by_pid = Counter(line.split()[0] for line in lines)
        assert sorted(str(d.result) for d in done) == sorted(
            pid for pid, n in by_pid.items() for _ in range(n))  # results say who ran it
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()
        with trio.CancelScope(shield=True):
            async with admin() as client:
                await delete_queue(client, queue)


async def test_jobs_of_a_killed_node_run_again_on_another_after_the_lease(
    tmp_path: Path,
) -> None:
    """SIGKILL a node while it runs two jobs: once its lease (1 s) expires, a live node's
    reaper puts them back and that node runs them, the attempt counted; nothing else runs
    twice (the other jobs are enqueued once the node is dead: its idle worker would take
    one, and it would rightly run twice)."""
    queue = unique("nodes")
    runs = tmp_path / "runs.txt"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        async with connect(REDIS_URL) as client:
            state = RedisState(client, queue)
            first = spawn(queue, runs, lease=1.0)
            procs.append(first)
            await ready(first)
            hung = [NewJob.build(f"hang-{i}", "record", {"hang_in": first.pid})
                     for i in range(2)]
            plain = [NewJob.build(f"plain-{i}", "record", i) for i in range(20)]
            await state.enqueue(hung)
            with trio.fail_after(30):
                while True:  # another process: its progress is read, not awaited
                    text = runs.read_text() if runs.exists() else ""
                    if all(f" {j.id} " in text for j in hung):
                        break
                    await trio.sleep(0.02)
            first.kill()
            first.wait()
            await state.enqueue(plain)
            second = spawn(queue, runs, lease=1.0)
            procs.append(second)
            await ready(second)
            with trio.fail_after(30):
                for j in hung + plain:
                    while True:
                        stored = await state.get(j.id)
                        assert stored is not None
                        if stored.job.status.terminal:
                            break
                        await trio.sleep(0.05)
            done = {j.id: (await state.get(j.id)) for j in hung + plain}
        second.send_signal(signal.SIGTERM)
        assert await trio.to_thread.run_sync(second.wait, 30) == 0
        for j in hung:
            job = done[j.id]
            assert job is not None
            assert (job.job.status, job.job.attempts, job.job.result) == (
                JobStatus.COMPLETED, 2, second.pid)
        lines = [line.split() for line in runs.read_text().split("\n")[:-1]]
        ran = Counter(job_id for _, job_id, _ in lines)
        killed_pid = str(first.pid)
        # The two hung jobs ran twice (killed node, then the other); every other job once.
        assert ran == Counter({**{j.id: 2 for j in hung}, **{j.id: 1 for j in plain}})
        assert sorted((pid, job_id, attempt) for pid, job_id, attempt in lines
                      if job_id.startswith("hang")) == sorted(
            [(killed_pid, j.id, "1") for j in hung] + [(str(second.pid), j.id, "2")
                                                     for j in hung])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()
        with trio.CancelScope(shield=True):
            async with admin() as client:
                await delete_queue(client, queue)
