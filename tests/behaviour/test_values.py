"""Values a job keeps: what JSON cannot hold is refused or fails the attempt (never the
queue), and payloads and results are kept as JSON gives them back, on every backend."""

from __future__ import annotations

import enum
from collections import OrderedDict
from typing import Any, NamedTuple

import pytest
from trio.testing import MockClock

from trioqueue import BatchItem, InvalidJob, Job, JobStatus

from .conftest import Backend, Harness

HUGE = 10**5000
"""An int Python writes in no JSON: more digits than ``sys.get_int_max_str_digits()``."""
NOT_JSON = "not JSON-serializable"


async def test_a_huge_int_result_fails_the_attempt_not_the_queue(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    """``return 10**5000`` completed in memory with a result no JSON holds, stopped the
    SQLite store's writer (the queue closed with an error, and again at each restart:
    the recovered job ran again) and took a Redis node down."""

    @h.registry.task(max_retries=0)
    async def huge(job: Job) -> int:
        return int(job.payload) * HUGE

    @h.registry.task
    async def large(job: Job) -> int:
        return int(10**700 * job.payload)  # 701 digits: JSON holds it

    async with backend.open(h.registry) as q:
        failed = [await q.wait((await q.enqueue("huge", sign)).id) for sign in (1, -1)]
        fine = await q.wait((await q.enqueue("large", -1)).id)
        after = await q.wait((await q.enqueue("echo", 7)).id)
    for done in failed:
        assert done.status is JobStatus.FAILED
        assert done.error is not None
        assert done.error.startswith(f"InvalidJob: result: {NOT_JSON}"), done.error
        assert done.result is None
    assert (fine.status, fine.result) == (JobStatus.COMPLETED, -(10**700))
    assert (after.status, after.result) == (JobStatus.COMPLETED, 7)
    if backend.persistent:  # opens again, and the jobs are as they ended
        async with backend.open(h.registry) as q:
            for done in failed:
                again = await q.get(done.id)
                assert (again.status, again.error) == (JobStatus.FAILED, done.error)
            assert (await q.get(fine.id)).result == -(10**700)


def _add(a: Any, b: Any = 0) -> int:  # (module-level: a store's submit needs one)
    return 1


async def test_a_huge_int_in_a_payload_is_refused_naming_it(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with backend.open(h.registry) as q:
        with pytest.raises(InvalidJob, match=f"^payload: {NOT_JSON}"):
            await q.enqueue("echo", HUGE)
        with pytest.raises(InvalidJob, match=f"^payload: {NOT_JSON}"):
            q.enqueue_nowait("echo", {"n": [HUGE]})
        with pytest.raises(InvalidJob, match=rf"^payloads\[1\]: {NOT_JSON}"):
            await q.enqueue_many("echo", [1, (HUGE,)])
        with pytest.raises(InvalidJob, match=rf"^payloads\[0\]: {NOT_JSON}"):
            q.enqueue_many_nowait("echo", [-HUGE])
        with pytest.raises(InvalidJob, match=rf"^jobs\[1\]\.payload: {NOT_JSON}"):
            await q.enqueue_batch([BatchItem("echo", 1), BatchItem("echo", [HUGE])])
        if backend.id != "memory":  # (memory mode calls fn with the args themselves)
            with pytest.raises(InvalidJob, match=rf"^args\[0\]: {NOT_JSON}"):
                await q.submit(_add, HUGE)
            with pytest.raises(InvalidJob, match=rf"^args\[1\]: {NOT_JSON}"):
                q.submit_nowait(_add, 1, [HUGE])
        assert await q.list_jobs() == []  # nothing of them was enqueued
        done = await q.wait((await q.enqueue("echo", "after")).id)
    assert (done.status, done.result) == (JobStatus.COMPLETED, "after")


class Point(NamedTuple):
    x: int
    y: list[int]


class Colour(enum.IntEnum):
    RED = 1


class Tag(enum.StrEnum):
    A = "a"


class Items(list[Any]):
    pass


async def test_tuples_and_other_json_kinds_are_kept_as_json_gives_them_back(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    """A tuple payload or result was kept as it was (the caller's object) in memory and
    with SQLite, so a change to it after the enqueue, or to a snapshot, changed the job;
    Redis gave a list back.  Now every backend keeps such values as JSON gives them
    back: a tuple (a named one too) a list, a dict or list subclass a dict or list, an
    enum its value."""
    returned: list[Any] = []

    @h.registry.task
    async def gives(job: Job) -> Any:
        returned.append(("r", [1], Point(2, [3]), OrderedDict(k=[4]), Items([5])))
        return returned[-1]

    async with backend.open(h.registry) as q:
        inner: list[Any] = [1]
        job = await q.enqueue("echo", ("x", inner), delay=0.01)
        inner.append("changed by the caller")
        assert job.payload == ["x", [1]]
        shown = await q.get(job.id)
        assert shown.payload == ["x", [1]]
        assert type(shown.payload) is list
        shown.payload[1].append("changed in a snapshot")
        done = await q.wait(job.id)
        assert (done.payload, done.result) == (["x", [1]], ["x", [1]])
        assert type(done.result) is list

        kinds = await q.wait((await q.enqueue("echo", {
            "point": Point(1, [2]), "ordered": OrderedDict(b=1), "items": Items([1]),
            "colour": Colour.RED, "tag": Tag.A,
        })).id)
        for value in (kinds.payload, kinds.result):
            assert value == {"point": [1, [2]], "ordered": {"b": 1}, "items": [1],
                             "colour": 1, "tag": "a"}
            assert [type(v) for v in value.values()] == [list, dict, list, int, str]
        for payload, plain in ((Point(1, [2]), [1, [2]]), (OrderedDict(a=[1]), {"a": [1]}),
                               (Items([1]), [1]), (Colour.RED, 1), (Tag.A, "a")):
            got = await q.wait((await q.enqueue("echo", payload)).id)
            assert type(got.payload) is type(got.result) is type(plain)
            assert got.payload == got.result == plain

        result_job = await q.wait((await q.enqueue("gives")).id)
        returned[0][1].append("changed by the handler")
        result_job.result[1].append("changed in a snapshot")
        again = await q.get(result_job.id)
    expected = ["r", [1], [2, [3]], {"k": [4]}, [5]]
    assert result_job.result[:1] + result_job.result[2:] == expected[:1] + expected[2:]
    assert again.result == expected
    assert [type(v) for v in again.result] == [str, list, list, dict, list]
