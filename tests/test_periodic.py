"""Periodic tasks: ``@registry.task(schedule=...)`` (cron) and ``every=``.  One job per due
time, id ``"<task>@<due time RFC 3339 UTC with ms>"``, payload null, one catch-up run at
start, no duplicate across a close and reopen with a store.

The queue's wall clock is read once at open (``time.time()`` in the engine): tests set it
to a known instant, and trio's mock clock moves it on from there.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import trioqueue
from tests.sqlite_util import sqlite_at
from tests.test_server_app import call
from trioqueue import JobNotFound, JobStatus
from trioqueue.server import App


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.fixture
def wall(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Set the wall time the next queue opens at."""
    from trioqueue.testing import engine

    def set_wall(text: str) -> None:
        start = at(text)
        # The engine's own name for the time module only (read once, at open): the rest
        # of the process (the store's thread, trio) keeps the real clock.
        monkeypatch.setattr(engine, "time", SimpleNamespace(time=lambda: start))

    return set_wall


def make_registry(runs: list[str]) -> trioqueue.TaskRegistry:
    registry = trioqueue.TaskRegistry()

    @registry.task(schedule="*/5 * * * *")
    async def cleanup(job: trioqueue.Job) -> None:
        assert job.payload is None
        runs.append(job.id)

    @registry.task(every=30.0)
    async def heartbeat(job: trioqueue.Job) -> None:
        runs.append(job.id)

    @registry.task(schedule="0 9 * * *", tz="Europe/Paris")
    async def morning(job: trioqueue.Job) -> None:
        runs.append(job.id)

    return registry


async def test_one_catch_up_then_each_due_time(wall: Any, autojump_clock: Any) -> None:
    runs: list[str] = []
    wall("2026-12-05T09:58:40")
    async with trioqueue.open_queue(make_registry(runs), trioqueue.QueueConfig()) as q:
        await trio.sleep(125)  # to 10:00:45
        await trio.testing.wait_all_tasks_blocked()
        job = await q.get("cleanup@2026-12-05T10:00:00.000Z")
        assert (job.payload, job.status) == (None, JobStatus.COMPLETED)
    assert sorted(r for r in runs if r.startswith("cleanup")) == [
        "cleanup@2026-12-05T09:55:00.000Z",  # the catch-up: the last due time before start
        "cleanup@2026-12-05T10:00:00.000Z",
    ]
    assert sorted(r for r in runs if r.startswith("heartbeat")) == [
        "heartbeat@2026-12-05T09:58:30.000Z",
        "heartbeat@2026-12-05T09:59:00.000Z",
        "heartbeat@2026-12-05T09:59:30.000Z",
        "heartbeat@2026-12-05T10:00:00.000Z",
        "heartbeat@2026-12-05T10:00:30.000Z",
    ]
    # 09:00 in Paris is 08:00 UTC in December: today's run, caught up once.
    assert [r for r in runs if r.startswith("morning")] == ["morning@2026-12-05T08:00:00.000Z"]


async def test_a_long_gap_gives_one_catch_up_run_not_one_per_missed_time(
    wall: Any, autojump_clock: Any
) -> None:
    runs: list[str] = []
    registry = trioqueue.TaskRegistry()

    @registry.task(every=60.0)
    async def tick(job: trioqueue.Job) -> None:
        runs.append(job.id)

    wall("2026-12-05T10:00:10")
    async with trioqueue.open_queue(registry, trioqueue.QueueConfig()) as q:
        await trio.sleep(1)
    assert runs == ["tick@2026-12-05T10:00:00.000Z"]
    wall("2026-12-05T13:30:10")  # 210 due times missed while nothing ran
    async with trioqueue.open_queue(registry, trioqueue.QueueConfig()) as q:
        await trio.sleep(1)
    assert runs == ["tick@2026-12-05T10:00:00.000Z", "tick@2026-12-05T13:30:00.000Z"]
    assert q.metrics().enqueued == 1


async def test_sub_second_intervals_have_distinct_ids(wall: Any, autojump_clock: Any) -> None:
    runs: list[str] = []
    registry = trioqueue.TaskRegistry()

    @registry.task(every=0.25)
    async def fast(job: trioqueue.Job) -> None:
        runs.append(job.id)

    wall("2026-12-05T10:00:00.1")
    async with trioqueue.open_queue(registry, trioqueue.QueueConfig()) as q:
        await trio.sleep(0.6)
        await trio.testing.wait_all_tasks_blocked()
        assert q.metrics().enqueued == 3
    assert runs == ["fast@2026-12-05T10:00:00.000Z", "fast@2026-12-05T10:00:00.250Z",
                    "fast@2026-12-05T10:00:00.500Z"]


async def test_the_timer_stops_at_shutdown(wall: Any, autojump_clock: Any) -> None:
    runs: list[str] = []
    wall("2026-12-05T10:00:10")
    async with trioqueue.open_queue(make_registry(runs), trioqueue.QueueConfig()) as q:
        await trio.sleep(1)
    n = len(runs)
    await trio.sleep(3600)
    assert len(runs) == n
    assert q.metrics().enqueued == n


async def _wait_for(q: trioqueue.JobQueue, job_id: str) -> trioqueue.Job:
    for _ in range(500):
        try:
            return await q.wait(job_id)
        except JobNotFound:
            await trio.sleep(0.01)
    raise AssertionError(f"{job_id} never enqueued")


async def test_no_duplicate_run_across_close_and_reopen_with_a_store(
    wall: Any, tmp_path: Path
) -> None:
    """(The real trio clock: the store's thread does not mix with the mock clock.)"""
    runs: list[str] = []
    registry = trioqueue.TaskRegistry()

    @registry.task(schedule="0 * * * *")
    async def hourly(job: trioqueue.Job) -> None:
        runs.append(job.id)

    config = trioqueue.QueueConfig(persist_path=tmp_path / "q.db")
    wall("2026-12-05T10:20:00")
    async with trioqueue.open_queue(registry, config) as q:
        done = await _wait_for(q, "hourly@2026-12-05T10:00:00.000Z")
        assert done.status is JobStatus.COMPLETED
    wall("2026-12-05T10:40:00")  # the same hour: its run is in the store, not run again
    async with trioqueue.open_queue(registry, config) as q:
        await trio.sleep(0.2)
        assert (await q.get("hourly@2026-12-05T10:00:00.000Z")).status is JobStatus.COMPLETED
        assert q.metrics().enqueued == 0
    wall("2026-12-05T15:05:00")  # four due times missed: one catch-up run
    async with trioqueue.open_queue(registry, config) as q:
        await _wait_for(q, "hourly@2026-12-05T15:00:00.000Z")
        for hour in (11, 12, 13, 14):
            with pytest.raises(JobNotFound):
                await q.get(f"hourly@2026-12-05T{hour}:00:00.000Z")
    assert runs == ["hourly@2026-12-05T10:00:00.000Z", "hourly@2026-12-05T15:00:00.000Z"]


async def _delete_job(backend: str, tmp_path: Path, queue_name: str, job_id: str) -> None:
    """Take a run's job away, as ``retention`` (SQLite) or ``result_ttl`` (Redis) would."""
    from tests.redis_util import admin

    if backend == "sqlite":
        with sqlite_at(tmp_path / "q.db") as conn:
            conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
    else:
        async with admin() as client:
            await client.delete([f"tq:{{{queue_name}}}:job:{job_id}"])


async def _mark(backend: str, tmp_path: Path, queue_name: str, task: str) -> str | None:
    """The task's latest due time as the store or Redis keeps it (None: not kept)."""
    from tests.redis_util import admin

    if backend == "sqlite":
        with sqlite_at(tmp_path / "q.db") as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?",
                               (f"periodic:{task}",)).fetchone()
            return None if row is None else str(row[0])
    async with admin() as client:
        value = await client.hget(f"tq:{{{queue_name}}}:periodic", task)
        return None if value is None else str(value)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_a_queue_closed_as_its_run_is_enqueued_keeps_the_runs_mark(
    wall: Any, tmp_path: Path, backend: str
) -> None:
    """A run's mark is written once its job is stored, a moment after the enqueue: the
    shutdown cancelled the scheduler in that moment (a queue closed as a run came due),
    no mark was kept, and a queue reopened in the same period once the job was gone ran
    that due time again.  The run being enqueued is carried through, with its mark."""
    from tests.redis_util import REDIS_URL, admin, delete_queue, unique

    started = trio.Event()
    registry = trioqueue.TaskRegistry()

    @registry.task(schedule="0 9 * * *")
    async def daily(job: trioqueue.Job) -> None:
        started.set()  # (the job is stored in memory; on SQLite, not committed yet)

    queue_name = unique("periodic")
    config = (trioqueue.QueueConfig(persist_path=tmp_path / "q.db") if backend == "sqlite"
              else trioqueue.QueueConfig(redis_url=REDIS_URL, queue_name=queue_name))
    try:
        wall("2026-12-05T09:00:30")
        async with trioqueue.open_queue(registry, config):
            await started.wait()
        assert await _mark(backend, tmp_path, queue_name, "daily") is not None
    finally:
        if backend == "redis":
            async with admin() as client:
                await delete_queue(client, queue_name)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_a_run_whose_job_is_gone_is_not_run_again(
    wall: Any, tmp_path: Path, backend: str
) -> None:
    """A run's job is not kept for ever (``retention``; on Redis ``result_ttl``, one
    hour): once it was gone, a queue opened later in the same period enqueued that due
    time again as its catch-up run (a daily report sent again on every deploy).  The
    latest enqueued due time is kept apart, per task, and the catch-up skips it."""
    from tests.redis_util import REDIS_URL, admin, delete_queue, unique

    runs: list[str] = []
    registry = trioqueue.TaskRegistry()

    @registry.task(schedule="0 9 * * *")
    async def daily(job: trioqueue.Job) -> None:
        runs.append(job.id)

    queue_name = unique("periodic")
    config = (trioqueue.QueueConfig(persist_path=tmp_path / "q.db") if backend == "sqlite"
              else trioqueue.QueueConfig(redis_url=REDIS_URL, queue_name=queue_name))
    first = "daily@2026-12-05T09:00:00.000Z"
    try:
        wall("2026-12-05T09:00:30")
        async with trioqueue.open_queue(registry, config) as q:
            await _wait_for(q, first)
        assert await _mark(backend, tmp_path, queue_name, "daily") is not None
        # The run's job goes, as retention or result_ttl would take it.
        await _delete_job(backend, tmp_path, queue_name, first)
        wall("2026-12-05T15:00:00")  # the same day: 09:00 is still the last due time
        async with trioqueue.open_queue(registry, config) as q:
            await trio.sleep(0.3)  # (real time: the periodic task's first pass is done)
            with pytest.raises(JobNotFound):
                await q.get(first)
            assert q.next_run("daily") == at("2026-12-06T09:00:00")
        wall("2026-12-07T10:00:00")  # two due times later: one catch-up run, as ever
        async with trioqueue.open_queue(registry, config) as q:
            await _wait_for(q, "daily@2026-12-07T09:00:00.000Z")
        assert runs == [first, "daily@2026-12-07T09:00:00.000Z"]
    finally:
        if backend == "redis":
            async with admin() as client:
                await delete_queue(client, queue_name)


async def test_get_tasks_shows_schedule_every_and_next_run(
    wall: Any, autojump_clock: Any
) -> None:
    registry = make_registry([])

    @registry.task()
    async def plain(job: trioqueue.Job) -> None: ...

    wall("2026-12-05T09:58:40")
    async with trioqueue.open_queue(registry, trioqueue.QueueConfig(workers=1)) as q:
        # Known as soon as the queue is open, before its periodic task has run at all.
        assert q.next_run("heartbeat") == at("2026-12-05T09:59:00")
        assert q.next_run("plain") is None
        await trio.testing.wait_all_tasks_blocked()
        status, _, body = await call(App(q), "GET", "/tasks")
        assert q.next_run("heartbeat") == at("2026-12-05T09:59:00")
        await trio.sleep(30)
        _, _, later = await call(App(q), "GET", "/tasks")
    assert status == 200
    by_name = {t["name"]: t for t in body["tasks"]}
    assert (by_name["cleanup"]["schedule"], by_name["cleanup"]["every"]) == ("*/5 * * * *", None)
    assert (by_name["heartbeat"]["schedule"], by_name["heartbeat"]["every"]) == (None, 30.0)
    assert by_name["cleanup"]["next_run"] == "2026-12-05T10:00:00.000000Z"
    assert by_name["heartbeat"]["next_run"] == "2026-12-05T09:59:00.000000Z"
    assert by_name["morning"]["next_run"] == "2026-12-06T08:00:00.000000Z"
    assert (by_name["morning"]["tz"], by_name["cleanup"]["tz"]) == ("Europe/Paris", None)
    assert by_name["plain"]["next_run"] is None
    assert {t["name"]: t["next_run"] for t in later["tasks"]}["heartbeat"] == (
        "2026-12-05T09:59:30.000000Z")


async def test_cron_nicknames_run_as_the_fields_they_stand_for(
    wall: Any, autojump_clock: Any
) -> None:
    runs: list[str] = []
    registry = trioqueue.TaskRegistry()

    @registry.task(schedule="@hourly")
    async def hourly(job: trioqueue.Job) -> None:
        runs.append(job.id)

    @registry.task(schedule="@Daily", tz="Europe/Paris")  # (case does not count)
    async def daily(job: trioqueue.Job) -> None:
        runs.append(job.id)

    wall("2026-12-05T22:30:00")  # 23:30 in Paris
    async with trioqueue.open_queue(registry, trioqueue.QueueConfig(workers=1)) as q:
        await trio.sleep(2 * 3600)  # to 00:30 UTC
        await trio.testing.wait_all_tasks_blocked()
        _, _, body = await call(App(q), "GET", "/tasks")
    assert sorted(r for r in runs if r.startswith("hourly")) == [
        "hourly@2026-12-05T22:00:00.000Z",  # the catch-up
        "hourly@2026-12-05T23:00:00.000Z",
        "hourly@2026-12-06T00:00:00.000Z",
    ]
    assert sorted(r for r in runs if r.startswith("daily")) == [
        "daily@2026-12-04T23:00:00.000Z",  # midnight in Paris: the catch-up
        "daily@2026-12-05T23:00:00.000Z",
    ]
    shown = {t["name"]: t for t in body["tasks"]}
    assert (shown["hourly"]["schedule"], shown["hourly"]["next_run"]) == (
        "@hourly", "2026-12-06T01:00:00.000000Z")
    assert shown["daily"]["next_run"] == "2026-12-06T23:00:00.000000Z"


@pytest.mark.parametrize(("options", "message"), [
    ({"schedule": "* * *"}, "schedule: expected five fields (minute, hour, day of month, "
                            "month, day of week) or one of @yearly, @annually, @monthly, "
                            "@weekly, @daily, @midnight, @hourly, got 3 in '* * *'"),
    ({"schedule": "@reboot"}, "schedule: expected five fields"),  # (no due times)
    ({"schedule": "* * * * * *"}, "schedule: expected five fields"),  # (seconds: no)
    ({"schedule": "61 * * * *"}, "schedule: '61 * * * *' is not a cron expression"),
    ({"every": 0.0005}, "every: expected 0.001 to 1e+10 seconds, got 0.0005"),
    ({"every": 1e300}, "every: expected 0.001 to 1e+10 seconds"),
    ({"schedule": "*/5 * * * *", "every": 5}, "schedule and every: give one, not both"),
    ({"every": 0}, "every: expected a number of seconds > 0, got 0"),
    ({"every": float("nan")}, "every: expected a number of seconds > 0"),
    ({"schedule": "0 * * * *", "tz": "Mars/Olympus"}, "tz: unknown time zone 'Mars/Olympus'"),
    ({"every": 5, "tz": "UTC"}, "tz: only with schedule="),
    ({"tz": "UTC"}, "tz: only with schedule="),
    ({"schedule": "0 * * * *", "name": "bad name"},
     "a periodic task's name must be usable in a job id"),
])
def test_bad_periodic_options_are_refused_at_registration(
    options: dict[str, Any], message: str
) -> None:
    registry = trioqueue.TaskRegistry()

    async def handler(job: trioqueue.Job) -> None: ...

    with pytest.raises(ValueError, match="task '.*': " + message.replace("(", r"\(")
                       .replace(")", r"\)").replace("*", r"\*").replace("?", r"\?")
                       .replace("+", r"\+")):
        registry.task(**options)(handler)


# ---------------------------------------------------------------- clocks going back

DST_ZONES = ["Europe/Paris", "America/New_York", "Australia/Lord_Howe", "UTC"]
DST_SCHEDULES = ["30 2 * * *", "30 1 * * *", "15,45 2 * * *", "*/30 * * * *", "0 * * * *",
                 "45 1 * * 0"]


@settings(max_examples=300, deadline=None)
@given(
    schedule=st.sampled_from(DST_SCHEDULES),
    tz=st.sampled_from(DST_ZONES),
    # Within hours of a 2026 clock change (UTC): Paris, New York, Lord Howe (half an hour).
    change=st.sampled_from(["2026-03-29T01:00", "2026-10-25T01:00", "2026-03-08T07:00",
                            "2026-11-01T06:00", "2026-04-04T15:00", "2026-10-03T15:30"]),
    offset=st.floats(min_value=-4 * 3600, max_value=4 * 3600),
)
def test_due_times_are_ordered_through_clock_changes(
    schedule: str, tz: str, change: str, offset: float
) -> None:
    """``last_due(t) <= t < next_due(t)``, and nothing is due between them.  cronsim reads a
    local time in an hour repeated by a clock change as its first instance: trusted as
    it came, the latest due time was a day old and the next one already past (the
    scheduler then enqueued that past time again and again, a busy loop)."""
    from trioqueue.testing import last_due, next_due

    spec = SimpleNamespace(name="t", schedule=schedule, every=None, tz=tz)
    t = at(change) + offset
    last, nxt = last_due(spec, t), next_due(spec, t)  # type: ignore[arg-type]
    assert last <= t < nxt
    assert next_due(spec, last) == nxt  # type: ignore[arg-type]


async def test_a_queue_opened_in_a_repeated_hour_catches_up_once(wall: Any) -> None:
    """Opened at 02:10 Paris time in the hour repeated on 25 October (01:10 UTC), a daily
    02:30 task caught up both yesterday's and today's run, and its next run stayed in the
    past: the scheduler enqueued it again in a loop until the hour reached 02:30."""
    runs: list[str] = []
    registry = trioqueue.TaskRegistry()

    @registry.task(schedule="30 2 * * *", tz="Europe/Paris")
    async def nightly(job: trioqueue.Job) -> None:
        runs.append(job.id)

    wall("2026-10-25T01:10:00")
    async with trioqueue.open_queue(registry, trioqueue.QueueConfig()) as q:
        await _wait_for(q, "nightly@2026-10-25T00:30:00.000Z")  # 02:30 CEST, today
        await trio.sleep(0.2)  # (real time: a busy scheduler would have run by now)
        assert q.next_run("nightly") == at("2026-10-26T01:30:00")  # 02:30 CET, tomorrow
    assert runs == ["nightly@2026-10-25T00:30:00.000Z"]


async def test_a_run_waiting_for_room_holds_back_no_other_task(
    wall: Any, autojump_clock: Any
) -> None:
    """The LOW queue full: ``lowtick``'s run waits for room.  ``hightick`` (HIGH, with room)
    got no run at all meanwhile (one scheduler awaited each enqueue in turn)."""
    runs: list[str] = []
    registry = trioqueue.TaskRegistry()

    @registry.task(every=10.0, priority="low")
    async def lowtick(job: trioqueue.Job) -> None:
        runs.append(job.id)

    @registry.task(every=10.0, priority="high")
    async def hightick(job: trioqueue.Job) -> None:
        runs.append(job.id)

    @registry.task(priority="low")
    async def long(job: trioqueue.Job) -> None:
        await trio.sleep(1000)

    wall("2026-12-05T10:00:05")
    config = trioqueue.QueueConfig(workers=2, capacity=10)
    async with trioqueue.open_queue(registry, config) as q:
        await trio.testing.wait_all_tasks_blocked()
        runs.clear()  # the catch-up runs
        blockers = [await q.enqueue("long") for _ in range(2)]
        await trio.testing.wait_all_tasks_blocked()  # both workers busy for good
        blockers += [await q.enqueue("long") for _ in range(10)]  # LOW full
        await trio.sleep(60)  # to 10:01:05
        for m, s in [(0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (1, 0)]:
            await q.get(f"hightick@2026-12-05T10:0{m}:{s}0.000Z")  # enqueued, not run
        with pytest.raises(JobNotFound):
            await q.get("lowtick@2026-12-05T10:00:10.000Z")  # still waiting for room
        assert q.next_run("lowtick") == at("2026-12-05T10:01:00")  # the one it waits as
        for job in blockers:
            await q.cancel(job.id)
        await trio.testing.wait_all_tasks_blocked()
        # The run that waited stands for the due times that passed meanwhile, as the
        # latest of them (it was the first: several nodes waiting on one queue each
        # enqueued their own oldest, one run each when room came).
        assert [r for r in runs if r.startswith("lowtick")] == [
            "lowtick@2026-12-05T10:01:00.000Z"]
        assert q.next_run("lowtick") == at("2026-12-05T10:01:10")
        assert len([r for r in runs if r.startswith("hightick")]) == 6


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_a_fractional_interval_is_marked_to_its_millisecond(
    wall: Any, tmp_path: Path, backend: str
) -> None:
    """Redis keeps a mark in whole milliseconds, and 1796464799.8 read back was compared
    with the due time 1796464799.8000002 as floats: below it, so a reopen in the same
    period ran that run again once its job was gone.  Marks compare as run ids do."""
    from tests.redis_util import REDIS_URL, admin, delete_queue, unique

    runs: list[str] = []
    registry = trioqueue.TaskRegistry()

    @registry.task(every=1.1)
    async def tick(job: trioqueue.Job) -> None:
        runs.append(job.id)

    from trioqueue.testing import last_due, run_id

    spec = registry.get("tick")
    due = last_due(spec, at("2026-12-05T10:00:00.300"))
    assert round(due * 1000) / 1000 != due  # the case: not a whole millisecond as a float
    first = run_id("tick", due)
    queue_name = unique("periodic")
    config = (trioqueue.QueueConfig(persist_path=tmp_path / "q.db") if backend == "sqlite"
              else trioqueue.QueueConfig(redis_url=REDIS_URL, queue_name=queue_name))
    try:
        wall("2026-12-05T10:00:00.300")
        async with trioqueue.open_queue(registry, config) as q:
            await _wait_for(q, first)
        assert await _mark(backend, tmp_path, queue_name, "tick") is not None
        for _ in range(2):
            await _delete_job(backend, tmp_path, queue_name, first)
            async with trioqueue.open_queue(registry, config) as q:
                await trio.sleep(0.3)  # (real time: the periodic task's first pass is done)
                with pytest.raises(JobNotFound):
                    await q.get(first)
        assert runs.count(first) == 1  # (a later due time may come in the 0.3 s)
    finally:
        if backend == "redis":
            async with admin() as client:
                await delete_queue(client, queue_name)


async def test_a_run_waiting_for_room_at_shutdown_ends_with_the_queue(
    wall: Any, autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The run being enqueued is carried through the shutdown, but a wait for room is not
    what it waits out: the queue takes no more jobs, and it ends at once."""
    registry = trioqueue.TaskRegistry()

    @registry.task(every=10.0, priority="low")
    async def lowtick(job: trioqueue.Job) -> None: ...

    @registry.task(priority="low")
    async def long(job: trioqueue.Job) -> None:
        await trio.sleep(1000)

    wall("2026-12-05T10:00:05")
    config = trioqueue.QueueConfig(workers=1, capacity=2, shutdown_timeout=1.0)
    async with trioqueue.open_queue(registry, config) as q:
        await trio.testing.wait_all_tasks_blocked()  # the catch-up run is in
        for _ in range(3):  # one runs, two fill LOW
            await q.enqueue("long")
        await trio.sleep(10)  # 10:00:10's run waits for room
        with pytest.raises(JobNotFound):
            await q.get("lowtick@2026-12-05T10:00:10.000Z")
        closing = trio.current_time()
    assert trio.current_time() - closing == pytest.approx(1.0)  # the shutdown_timeout
    assert "cut off at shutdown" not in caplog.text


async def test_a_run_whose_mark_hangs_at_shutdown_is_cut_off_after_the_grace(
    wall: Any, autojump_clock: Any, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run still being enqueued (here: its mark never written) holds the shutdown
    :data:`STOP_GRACE` seconds at most, and says so."""
    from trioqueue.testing import STOP_GRACE, LocalBackend

    marking = trio.Event()

    async def never(self: object, name: str, due: float) -> None:
        marking.set()
        await trio.sleep_forever()

    monkeypatch.setattr(LocalBackend, "mark_periodic", never)
    registry = trioqueue.TaskRegistry()

    @registry.task(every=10.0)
    async def tick(job: trioqueue.Job) -> None: ...

    wall("2026-12-05T10:00:05")
    async with trioqueue.open_queue(registry, trioqueue.QueueConfig(workers=1)):
        await marking.wait()
        closing = trio.current_time()
    assert trio.current_time() - closing == pytest.approx(STOP_GRACE)
    assert "periodic run tick@2026-12-05T10:00:00.000Z cut off at shutdown" in caplog.text
