"""Random sequences of enqueue / fail / cancel / retry / delay against a simple model.

Each example runs in its own ``trio.run`` under a MockClock that jumps whenever every
task is blocked, so an example covering minutes of retries takes milliseconds.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import trioqueue
from trioqueue import InvalidTransition, Job, JobStatus, QueueConfig, TaskRegistry

enqueue_op = st.tuples(
    st.just("enqueue"),
    st.sampled_from(["ok", "fail", "slow"]),
    st.sampled_from(["high", "medium", "low"]),
    st.sampled_from([0.0, 0.5, 3.0]),
    st.integers(min_value=0, max_value=2),
)
# Controls mostly aim at the newest jobs, which are the ones still queued or running.
control_op = st.tuples(st.sampled_from(["cancel", "retry"]), st.integers(0, 3) | st.integers(0, 30))
burst_op = st.tuples(st.just("burst"), st.integers(min_value=2, max_value=6))
advance_op = st.tuples(st.just("advance"), st.sampled_from([0.1, 1.0, 5.0]))
ops_strategy = st.lists(st.one_of(enqueue_op, control_op, advance_op, burst_op), max_size=40)


def run_example(ops: list[tuple[Any, ...]], workers: int) -> None:
    registry = TaskRegistry()
    invocations: Counter[str] = Counter()
    completions: Counter[str] = Counter()

    @registry.task
    async def ok(job: Job) -> Any:
        invocations[job.id] += 1
        completions[job.id] += 1
        return job.payload

    @registry.task
    async def fail(job: Job) -> None:
        invocations[job.id] += 1
        raise ValueError("always")

    @registry.task
    async def slow(job: Job) -> str:
        invocations[job.id] += 1
        await trio.sleep(2)
        completions[job.id] += 1
        return "slept"

    config = QueueConfig(
        workers=workers, capacity=100, retry_base=0.5, retry_factor=2.0, retry_jitter=0.25
    )

    async def main() -> None:
        jobs: list[tuple[str, str, int]] = []  # (id, kind, max_retries)
        ended_failed = 0
        cancels = 0
        async with trioqueue.open_queue(registry, config) as q:
            for op in ops:
                if op[0] == "enqueue":
                    _, kind, prio, delay, retries = op
                    job = await q.enqueue(kind, len(jobs), priority=prio, delay=delay,
                                          max_retries=retries)
                    expected = JobStatus.SCHEDULED if delay else JobStatus.QUEUED
                    assert job.status is expected
                    jobs.append((job.id, kind, retries))
                elif op[0] == "burst":  # back the queue up behind slow jobs
                    for _ in range(op[1]):
                        job = q.enqueue_nowait("slow", len(jobs), max_retries=0)
                        jobs.append((job.id, "slow", 0))
                elif op[0] == "advance":
                    await trio.sleep(op[1])
                elif jobs:
                    job_id = jobs[-1 - op[1] % len(jobs)][0]
                    before = q.get_nowait(job_id).status
                    if op[0] == "cancel":
                        if before.terminal:
                            try:
                                await q.cancel(job_id)
                            except InvalidTransition:
                                pass
                            else:
                                raise AssertionError(f"cancelled a {before} job")
                        else:
                            assert (await q.cancel(job_id)).status is JobStatus.CANCELLED
                            cancels += 1
                    elif before in (JobStatus.FAILED, JobStatus.CANCELLED):
                        ended_failed += before is JobStatus.FAILED
                        assert (await q.retry(job_id)).status is JobStatus.QUEUED
                    else:
                        try:
                            await q.retry(job_id)
                        except InvalidTransition:
                            pass
                        else:
                            raise AssertionError(f"retried a {before} job")
            # Let everything settle: the longest chain is 3 attempts with backoff.
            await trio.sleep(1000)
            m = q.metrics()
            for job_id, kind, retries in jobs:
                snap = q.get_nowait(job_id)
                assert snap.status.terminal, snap
                if snap.status is JobStatus.CANCELLED:
                    assert completions[job_id] == 0
                elif kind == "fail":
                    assert snap.status is JobStatus.FAILED
                    assert snap.attempts == retries + 1
                    assert snap.error == "ValueError: always"
                else:
                    assert snap.status is JobStatus.COMPLETED
                    assert completions[job_id] == 1
                    assert snap.attempts == 1
            finals = Counter(q.get_nowait(j).status for j, _, _ in jobs)
            assert m.completed == sum(completions.values()) == finals[JobStatus.COMPLETED]
            assert m.failed == ended_failed + finals[JobStatus.FAILED]
            assert m.cancelled == cancels
            assert m.started == sum(invocations.values())
            assert m.enqueued == len(jobs)
            assert (m.processing, m.scheduled) == (0, 0)
            assert m.queued == {"high": 0, "medium": 0, "low": 0}

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@settings(max_examples=300)
@given(ops_strategy, st.sampled_from([1, 2, 4]))
def test_random_operation_sequences_match_the_model(
    ops: list[tuple[Any, ...]], workers: int
) -> None:
    run_example(ops, workers)
