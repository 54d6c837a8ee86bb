"""Values JSON cannot hold never reach a store's writer, and the writer writes the
other jobs of its batch if one does anyway; the int bound of the workers' fast path
(the behaviour suite, tests/behaviour/test_values.py, has the user-visible rules)."""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import trioqueue
from trioqueue import Job, JobStatus
from trioqueue.testing import EventKind, JobRecord, Persistence, SqliteStore

HUGE = 10**5000

registry = trioqueue.TaskRegistry()


@registry.task(max_retries=0)
async def echo(job: Job) -> Any:
    return job.payload


@registry.task(max_retries=0)
async def power(job: Job) -> int:
    return int(10 ** job.payload)


def _record(job_id: str, result: Any, progress: dict[str, Any] | None = None) -> JobRecord:
    rec = JobRecord.restored(job_id, "echo", [1], "[1]", 1, JobStatus.COMPLETED, 1, 0,
                             None, 1.0, None, 2.0, 3.0, result, None, None)
    rec.progress = progress
    return rec


def test_the_store_writes_a_batch_holding_a_value_no_json_holds(
        caplog: pytest.LogCaptureFixture) -> None:
    """A record whose result (or progress) the writer cannot encode (the workers refuse
    such a result: here it is put there by hand) used to raise out of the writer, which
    stopped the queue: now its row is written without that value, the error column
    saying why, and the other rows of the batch as they are."""
    config = trioqueue.QueueConfig()
    bad_result = _record("bad-result", HUGE)
    bad_progress = _record("bad-progress", "fine", {"fraction": HUGE, "note": None})
    good = _record("good", {"k": [1, "x"]}, {"fraction": 0.5, "note": "n"})
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore.open(Path(tmp) / "q.db")
        closed = False
        try:

            async def write_and_read() -> None:
                nonlocal closed
                persistence = Persistence(config, registry, store)
                async with trio.open_nursery() as nursery:
                    await nursery.start(persistence.run, time.time)
                    for rec in (bad_result, good, bad_progress):
                        persistence.changed(EventKind.ENQUEUED, rec)
                    await persistence.wait_committed()
                    assert persistence.error is None
                    back = {}
                    for rec in (bad_result, good, bad_progress):
                        row = await persistence.read(store.get, rec.id)
                        assert row is not None
                        back[rec.id] = persistence.record(row).snapshot()
                    await persistence.close()
                    closed = True
                assert back["good"] == good.snapshot()
                lost = back["bad-result"]
                assert (lost.status, lost.result, lost.progress) == (
                    JobStatus.COMPLETED, None, None)
                assert lost.error is not None
                assert lost.error.startswith(
                    "StoreError: not stored: result: not JSON-serializable (Exceeds"), lost.error
                assert lost.payload == [1]
                other = back["bad-progress"]
                assert (other.result, other.progress) == ("fine", None)
                assert other.error is not None
                assert other.error.startswith("StoreError: not stored: progress: not JSON")

            with caplog.at_level(logging.ERROR, logger="trioqueue"):
                trio.run(write_and_read)
        finally:
            if not closed:
                store.close()
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("job bad-result (task echo): result: not JSON" in m for m in said), said
    assert any("job bad-progress (task echo): progress: not JSON" in m for m in said), said


@pytest.fixture
def int_digits_640() -> Iterator[None]:
    """Python's int-to-text limit at its least (640 digits): the workers' fast path for
    ints must not let through an int the limit forbids."""
    was = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(640)
    try:
        yield
    finally:
        sys.set_int_max_str_digits(was)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_the_int_fast_path_holds_under_the_lowest_digit_limit(
        kind: str, int_digits_640: None, tmp_path: Path) -> None:
    kwargs: dict[str, Any] = {} if kind == "memory" else {"persist_path": tmp_path / "q.db"}

    async def main() -> tuple[Job, ...]:
        async with trioqueue.open_queue(registry, trioqueue.QueueConfig(**kwargs)) as q:
            return tuple([await q.wait((await q.enqueue("power", n)).id)
                          for n in (639, 640, 700)])

    below, at, over = trio.run(main)
    assert (below.status, below.result) == (JobStatus.COMPLETED, 10**639)  # 640 digits
    for done in (at, over):  # 641 and 701 digits: more than the limit
        assert done.status is JobStatus.FAILED
        assert done.error is not None
        assert done.error.startswith("InvalidJob: result: not JSON-serializable"), done.error


def test_a_large_int_result_that_json_holds_is_kept_exactly(tmp_path: Path) -> None:
    """An int past the fast path's bound that the limit allows is checked, not refused,
    and written as the text it was checked with."""
    async def main() -> tuple[Job, Job]:
        config = trioqueue.QueueConfig(persist_path=tmp_path / "q.db")
        async with trioqueue.open_queue(registry, config) as q:
            done = await q.wait((await q.enqueue("power", 4299)).id)
        async with trioqueue.open_queue(registry, config) as q:
            return done, await q.get(done.id)

    done, again = trio.run(main)
    assert done.result == again.result == 10**4299
    assert json.dumps(again.to_dict())  # (what a listing or the server writes)


def test_a_memory_submit_keeps_its_call_with_any_args() -> None:
    """A memory-mode ``submit``'s payload (the call itself, a dict subclass) is not made
    a plain dict by the rule that keeps payloads as JSON gives them back."""
    seen: list[Any] = []
    marker = object()

    def call(a: object, b: int) -> tuple[int, list[int]]:
        seen.append((a, b))
        return (1, [2])

    async def main() -> Job:
        async with trioqueue.open_queue(trioqueue.TaskRegistry()) as q:
            job = await q.submit(call, marker, HUGE)
            return await q.wait(job.id)

    done = trio.run(main)
    assert seen == [(marker, HUGE)]
    assert (done.status, done.result) == (JobStatus.COMPLETED, [1, [2]])
