"""The Redis state layer (trioqueue/_redis) against the real Redis at 127.0.0.1:6379.

Each test works on a queue of its own (a uuid name) and deletes its keys at the end.
Leases and delays run on Redis' clock, so the few tests about expiry wait for real time:
short leases (50-200 ms), every wait bounded by ``trio.fail_after``.  No test asserts
how fast anything is.
"""

from __future__ import annotations

import functools
import gc
import json
import subprocess
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import coredis
import pytest
import trio
from coredis.retry import NoRetryPolicy

from tests.redis_util import (
    REDIS_URL,
    admin,
    blocked_clients,
    delete_queue,
    free_port,
    kill_clients,
    poll,
    unique,
)
from trioqueue import InvalidJob, InvalidTransition, JobNotFound, JobStatus, Priority, QueueFull
from trioqueue.testing import (
    RECORD_FIELDS,
    Admission,
    CorruptRecord,
    FairPicker,
    NewJob,
    Outcome,
    RedisClient,
    RedisState,
    StoredJob,
    canonical_digest,
    connect,
    stored_job,
)

H, M, L = "high", "medium", "low"


@attrs.define
class Env:
    client: RedisClient
    admin: coredis.Redis[str]
    queue: str
    client_name: str

    def state(self, **kw: Any) -> RedisState:
        return RedisState(self.client, self.queue, **kw)

    def key(self, suffix: str) -> str:
        return f"tq:{{{self.queue}}}:{suffix}"


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    queue, name = unique("q"), unique("c")
    async with admin() as a, connect(REDIS_URL, client_name=name) as client:
        try:
            # Events are written only while some node reads them: this test does.
            await RedisState(client, queue).read_events("test", 3600)
            yield Env(client, a, queue, name)
        finally:
            await delete_queue(a, queue)


def new(job_id: str, prio: str = H, payload: Any = None, **kw: Any) -> NewJob:
    return NewJob.build(job_id, "t", payload, priority=prio, **kw)


async def events(env: Env) -> list[dict[str, str]]:
    return [dict(e.field_values) for e in await env.admin.xrange(env.key("events"))]


async def record(env: Env, job_id: str) -> dict[str, str]:
    return dict(await env.admin.hgetall(env.key(f"job:{job_id}")))


# ---------------------------------------------------------------------------- round trip


async def test_round_trip_enqueue_claim_complete(env: Env) -> None:
    s = env.state(result_ttl=120)
    (adm,) = await s.enqueue([new("a", H, {"x": 1}, timeout=2.5, max_retries=2)])
    assert adm.code is Admission.ACCEPTED
    assert adm.job is not None
    assert adm.job.status is JobStatus.QUEUED
    assert adm.job.timeout == 2.5
    assert adm.job.max_retries == 2

    fc = await s.finish_and_claim("node-a", [], 4, lease=30)
    assert fc.results == []
    (c,) = fc.claimed
    assert (c.job.id, c.fence, c.owner, c.job.attempts) == ("a", 1, "node-a", 1)
    assert c.job.status is JobStatus.PROCESSING
    assert c.job.payload == {"x": 1}
    assert c.job.started_at is not None
    assert c.job.created_at == adm.job.created_at
    assert await env.admin.zscore(env.key("leases"), "a") is not None

    fc = await s.finish_and_claim("node-a", [Outcome.completed("a", 1, [1, "two"], 0.25)], 4, 30)
    assert fc.results == ["ok"]
    assert fc.claimed == []
    got = await s.get("a")
    assert got is not None
    assert got.job.status is JobStatus.COMPLETED
    assert got.job.result == [1, "two"]
    assert got.job.finished_at is not None
    assert got.job.finished_at >= got.job.started_at
    assert await env.admin.zscore(env.key("leases"), "a") is None
    ttl = await env.admin.pttl(env.key("job:a"))
    assert 100_000 < ttl <= 120_000
    assert await env.admin.zscore(env.key("idx:completed"), "a") is not None

    counts = await s.counts()
    assert counts.total("enqueued") == 1
    assert counts.totals["completed:high"] == 1
    assert counts.queued == (0, 0, 0)
    assert counts.processing == 0
    assert counts.scheduled == 0

    evs = await events(env)
    assert [(e["type"], e["seq"], e["job_id"]) for e in evs] == [
        ("enqueued", "1", "a"), ("started", "2", "a"), ("completed", "3", "a"),
    ]
    assert evs[1]["node"] == "node-a"
    assert evs[1]["attempt"] == "1"
    assert evs[2]["duration"] == "0.25"
    assert evs[2]["priority"] == "high"


async def test_get_missing_and_bad_ids(env: Env) -> None:
    s = env.state()
    assert await s.get("nope") is None
    with pytest.raises(JobNotFound):
        await s.cancel("nope")
    with pytest.raises(JobNotFound):
        await s.retry("nope")
    # An id no job can have names none, as on the other backends (HTTP: 404, not 400).
    assert await s.get("bad id with spaces") is None
    for bad in ("bad id with spaces", "*", "x" * 200, ""):
        with pytest.raises(JobNotFound):
            await s.cancel(bad)
        with pytest.raises(JobNotFound):
            await s.retry(bad)


# ---------------------------------------------------------------------------- idempotency


async def test_same_id_same_body_is_existing_else_duplicate(env: Env) -> None:
    s = env.state()
    (first,) = await s.enqueue([new("x", M, {"a": 1, "b": [1, 2]})])
    assert first.code is Admission.ACCEPTED
    # Same body with its keys in another order: the same digest.
    (again,) = await s.enqueue([new("x", M, {"b": [1, 2], "a": 1})])
    assert again.code is Admission.EXISTING
    assert again.job == first.job
    (other,) = await s.enqueue([new("x", M, {"a": 2, "b": [1, 2]})])
    assert other.code is Admission.DUPLICATE
    assert other.job is None
    (task,) = await s.enqueue([NewJob.build("x", "other", {"a": 1, "b": [1, 2]}, priority=M)])
    assert task.code is Admission.DUPLICATE
    # Inside one batch: a repeat is EXISTING (the batch's own job), a clash DUPLICATE.
    res = await s.enqueue([new("y", L, 1), new("y", L, 1), new("y", L, 2)])
    assert [a.code for a in res] == [Admission.ACCEPTED, Admission.EXISTING, Admission.DUPLICATE]
    assert res[1].job == res[0].job
    assert await env.admin.lrange(env.key("ready:low"), 0, -1) == ["y"]
    assert (await s.counts()).total("enqueued") == 2


def test_digest_is_canonical() -> None:
    assert canonical_digest("t", {"a": 1, "b": 2}) == canonical_digest("t", {"b": 2, "a": 1})
    assert canonical_digest("t", {"a": 1}) != canonical_digest("u", {"a": 1})
    assert canonical_digest("t", [1, 2]) != canonical_digest("t", [2, 1])
    # The task name cannot bleed into the payload.
    assert canonical_digest("a:1", 2) != canonical_digest("a", "1:2")


# ---------------------------------------------------------------------------- capacity


async def test_capacity_per_priority(env: Env) -> None:
    s = env.state(capacity=5)
    res = await s.enqueue([new(f"h{i}", H) for i in range(6)])
    assert [a.code for a in res] == [Admission.ACCEPTED] * 5 + [Admission.FULL]
    assert res[5].job is None
    assert await env.admin.exists([env.key("job:h5")]) == 0
    (med,) = await s.enqueue([new("m0", M)])
    assert med.code is Admission.ACCEPTED
    (quiet,) = await s.enqueue([new("h6", H)], count_rejected=False)
    assert quiet.code is Admission.FULL
    counts = await s.counts()
    assert counts.queued == (5, 1, 0)
    assert counts.totals["rejected:high"] == 1
    assert counts.total("rejected") == 1
    # A claim frees room for exactly one more.
    await s.finish_and_claim("n", [], 1, 30)
    res = await s.enqueue([new("h7", H), new("h8", H)])
    assert [a.code for a in res] == [Admission.ACCEPTED, Admission.FULL]


async def test_delayed_jobs_have_their_own_bound(env: Env) -> None:
    s = env.state(capacity=2)
    res = await s.enqueue([new(f"d{i}", L, delay=60) for i in range(3)])
    assert [a.code for a in res] == [Admission.ACCEPTED, Admission.ACCEPTED, Admission.FULL]
    assert res[0].job is not None
    assert res[0].job.status is JobStatus.SCHEDULED
    assert res[0].job.scheduled_for == pytest.approx(res[0].job.created_at + 60)
    assert (await s.counts()).delayed == (0, 0, 2)
    # The ready list is still empty and open.
    res = await s.enqueue([new("r0", L), new("r1", L)])
    assert [a.code for a in res] == [Admission.ACCEPTED] * 2
    # Cancelling a delayed job frees its slot.
    await s.cancel("d0")
    (again,) = await s.enqueue([new("d3", L, delay=60)])
    assert again.code is Admission.ACCEPTED


async def test_all_or_nothing_batch(env: Env) -> None:
    s = env.state(capacity=5)
    await s.enqueue([new(f"h{i}", H) for i in range(3)])
    res = await s.enqueue([new(f"b{i}", H) for i in range(3)], whole=True)
    assert [a.code for a in res] == [Admission.FULL] * 3
    assert await env.admin.llen(env.key("ready:high")) == 3
    assert await env.admin.exists([env.key(f"job:b{i}") for i in range(3)]) == 0
    assert (await s.counts()).totals["rejected:high"] == 3
    # One priority short refuses the whole batch, the others' jobs too.
    await s.enqueue([new(f"l{i}", L) for i in range(5)])
    res = await s.enqueue([new("b0", H), new("b1", L)], whole=True)
    assert [a.code for a in res] == [Admission.FULL, Admission.FULL]
    # A duplicate id refuses it too, the others reported ABORTED; EXISTING is fine.
    await s.enqueue([new("m0", M, 1)])
    res = await s.enqueue([new("b0", M), new("m0", M, 2)], whole=True)
    assert [a.code for a in res] == [Admission.ABORTED, Admission.DUPLICATE]
    res = await s.enqueue([new("b0", M), new("m0", M, 1), new("b1", H)], whole=True)
    assert [a.code for a in res] == [Admission.ACCEPTED, Admission.EXISTING, Admission.ACCEPTED]
    assert await env.admin.llen(env.key("ready:high")) == 4


async def test_batch_bounds_and_validation(env: Env) -> None:
    s = env.state()
    with pytest.raises(InvalidJob, match="at most 1000"):
        await s.enqueue([new(f"j{i}") for i in range(1001)])
    assert await s.enqueue([]) == []
    with pytest.raises(InvalidJob, match="payload"):
        new("j", payload=float("nan"))
    with pytest.raises(InvalidJob, match="priority"):
        new("j", prio="urgent")
    with pytest.raises(InvalidJob, match="max_retries"):
        new("j", max_retries=-1)
    with pytest.raises(InvalidJob, match="delay"):
        new("j", delay=-1)
    with pytest.raises(InvalidJob, match="timeout"):
        new("j", timeout=0)
    with pytest.raises(ValueError, match="queue_name"):
        RedisState(env.client, "a}b")
    with pytest.raises(ValueError, match="n:"):
        await s.finish_and_claim("n", [], -1, 30)
    with pytest.raises(ValueError, match="lease"):
        await s.finish_and_claim("n", [], 1, 0)


# ---------------------------------------------------------------------------- fairness


async def test_fair_claims_exact_across_callers(env: Env) -> None:
    s = env.state()
    for label in (H, M, L):
        await s.enqueue([new(f"{label}{i:03d}", label) for i in range(100)])
    picks: list[str] = []
    ids: list[str] = []
    sizes = [1, 3, 10] * 6
    for i, n in enumerate(sizes):
        fc = await s.finish_and_claim("node-a" if i % 2 else "node-b", [], n, 30)
        assert len(fc.claimed) == n
        picks += ["HML"[c.job.priority] for c in fc.claimed]
        ids += [c.job.id for c in fc.claimed]
    assert len(picks) == 84
    assert "".join(picks[:14]) == "HHMHHLHHMHHHMH"
    for start in range(0, 84, 14):
        cycle = picks[start:start + 14]
        assert (cycle.count("H"), cycle.count("M"), cycle.count("L")) == (10, 3, 1)
    # Any 14 consecutive claims, not only aligned ones.
    for start in range(84 - 13):
        window = picks[start:start + 14]
        assert (window.count("H"), window.count("M"), window.count("L")) == (10, 3, 1)
    # FIFO within a priority.
    assert ids[:3] == ["high000", "high001", "medium000"]
    assert [i for i in ids if i.startswith("low")] == [f"low{i:03d}" for i in range(6)]


async def test_claims_follow_the_engines_picker(env: Env) -> None:
    """Bursts that empty and refill priorities: Redis picks what FairPicker picks."""
    s = env.state(weights=(5, 2, 1))
    picker = FairPicker({Priority.HIGH: 5, Priority.MEDIUM: 2, Priority.LOW: 1})
    model: list[list[str]] = [[], [], []]
    plan = [((3, 0, 2), 4), ((0, 4, 0), 2), ((5, 5, 5), 7), ((0, 0, 0), 6), ((1, 0, 9), 5),
            ((2, 2, 0), 20)]
    n_id = 0
    for adds, claims in plan:
        batch = []
        for p, k in enumerate(adds):
            for _ in range(k):
                job_id = f"j{n_id:04d}"
                n_id += 1
                batch.append(new(job_id, (H, M, L)[p]))
                model[p].append(job_id)
        await s.enqueue(batch)
        expected = []
        for _ in range(claims):
            p = picker.pick(model)
            if p < 0:
                break
            expected.append(model[p].pop(0))
        fc = await s.finish_and_claim("n", [], claims, 30)
        assert [c.job.id for c in fc.claimed] == expected


# ---------------------------------------------------------------------------- leases


async def test_fencing_after_lease_expiry(env: Env) -> None:
    s = env.state()
    await s.enqueue([new("lost", H), new("kept", H)])
    fc = await s.finish_and_claim("node-a", [], 2, lease=0.2)
    held = {c.job.id: c.fence for c in fc.claimed}
    assert held == {"lost": 1, "kept": 1}

    async def renew_kept_and_reap() -> Any:
        renewal = await s.renew("node-a", [("kept", 1)], lease=0.2)
        assert renewal.lost == []
        reaped = await s.reap()
        return reaped if reaped.requeued else None

    reaped = await poll(renew_kept_and_reap)
    assert reaped.requeued == ["lost"]
    assert reaped.failed == []
    lost = await s.get("lost")
    assert lost is not None
    assert lost.job.status is JobStatus.QUEUED
    assert lost.fence == 2
    assert (await s.get("kept")).job.status is JobStatus.PROCESSING  # type: ignore[union-attr]

    fc = await s.finish_and_claim("node-b", [], 5, lease=30)
    (again,) = fc.claimed
    assert (again.job.id, again.job.attempts, again.fence, again.owner) == ("lost", 2, 3, "node-b")

    # Node A wakes up: its ack is refused and changes nothing, its renew says lost.
    late = await s.finish_and_claim("node-a", [Outcome.completed("lost", 1, "late")], 0, 30)
    assert late.results == ["stale"]
    renewal = await s.renew("node-a", [("lost", 1), ("kept", 1)], lease=30)
    assert renewal.lost == ["lost"]
    # Even with the right fence, another node's ack is refused.
    assert (await s.finish_and_claim("node-a", [Outcome.completed("lost", 3, "x")], 0, 30)
            ).results == ["stale"]
    done = await s.finish_and_claim("node-b", [Outcome.completed("lost", 3, "b")], 0, 30)
    assert done.results == ["ok"]
    got = await s.get("lost")
    assert got is not None
    assert got.job.result == "b"
    assert got.job.attempts == 2
    counts = await s.counts()
    assert counts.totals["completed:high"] == 1
    assert counts.totals["recovered:high"] == 1
    kinds = [e["type"] for e in await events(env) if e["job_id"] == "lost"]
    assert kinds == ["enqueued", "started", "recovered", "started", "completed"]


async def test_reaped_job_goes_to_the_front(env: Env) -> None:
    s = env.state(capacity=3)
    await s.enqueue([new("first", M)])
    await s.finish_and_claim("a", [], 1, lease=0.05)
    await s.enqueue([new("second", M), new("third", M), new("fourth", M)])
    await poll(lambda: _requeued(s))
    # Back in front, over the capacity: it was admitted already.
    assert await env.admin.lrange(env.key("ready:medium"), 0, -1) == [
        "first", "second", "third", "fourth",
    ]


async def test_jobs_reaped_together_go_to_the_front_in_claim_order(env: Env) -> None:
    """The jobs of a lost node's claim come back first in the order it claimed them (the
    reaper pushed each to the front in turn, which reversed them: the one it had started
    went last)."""
    s = env.state()
    await s.enqueue([new(f"j{i}", M) for i in range(4)] + [new("later", M)])
    claimed = (await s.finish_and_claim("a", [], 4, lease=0.05)).claimed
    assert [c.job.id for c in claimed] == ["j0", "j1", "j2", "j3"]
    assert await poll(lambda: _requeued(s)) == ["j0", "j1", "j2", "j3"]
    assert await env.admin.lrange(env.key("ready:medium"), 0, -1) == [
        "j0", "j1", "j2", "j3", "later",
    ]


async def test_a_reaped_job_goes_in_front_of_its_tasks_parked_jobs(env: Env) -> None:
    """Claims take a task's parked jobs before its ready list: a job reaped from a lost
    node goes in front of those (it went to the ready list, behind them: the job the
    lost node had started ran after the jobs parked while it ran)."""
    s = env.state()
    await s.enqueue([new(f"j{i}", M) for i in range(4)])
    assert [c.job.id for c in (await s.finish_and_claim("a", [], 1, 0.05)).claimed] == ["j0"]
    # A node that cannot run task "t" parks the rest.
    assert (await s.finish_and_claim("b", [], 3, 30, tasks=["other"])).claimed == []
    assert await env.admin.lrange(env.key("park:2:t"), 0, -1) == ["j1", "j2", "j3"]
    assert await poll(lambda: _requeued(s)) == ["j0"]
    assert await env.admin.lrange(env.key("park:2:t"), 0, -1) == ["j0", "j1", "j2", "j3"]
    claimed = (await s.finish_and_claim("c", [], 4, 30, tasks=["t"])).claimed
    assert [c.job.id for c in claimed] == ["j0", "j1", "j2", "j3"]


async def test_a_claim_takes_no_more_of_a_task_than_its_bound(env: Env) -> None:
    """``tasks`` as a mapping bounds what a call claims of each task (-1: no bound): the
    task's jobs past it are parked, still queued and unclaimed, and the claim goes on
    with the others; its parked jobs come first in a later call."""
    s = env.state()
    await s.enqueue([NewJob.build(f"l{i}", "lim", None, priority=M) for i in range(4)]
                    + [new("t0", M)])
    first = await s.finish_and_claim("a", [], 5, 30, tasks={"lim": 1, "t": -1})
    assert [c.job.id for c in first.claimed] == ["l0", "t0"]
    assert await env.admin.lrange(env.key("park:2:lim"), 0, -1) == ["l1", "l2", "l3"]
    assert [(await s.get(f"l{i}")).job.attempts for i in (1, 2, 3)] == [0, 0, 0]  # type: ignore[union-attr]
    again = await s.finish_and_claim("a", [], 5, 30, tasks={"lim": 2, "t": -1})
    assert [c.job.id for c in again.claimed] == ["l1", "l2"]
    assert await env.admin.lrange(env.key("park:2:lim"), 0, -1) == ["l3"]


async def test_a_reaped_record_without_its_task_goes_to_the_ready_list(env: Env) -> None:
    """A record edited to lose its task field is requeued to its priority's ready list
    (a claim then fails it as unreadable); the reap does not stop half way, stranding the
    jobs of its call with no lease and in no list."""
    s = env.state()
    await s.enqueue([new("j0", M), new("j1", M)])
    await s.finish_and_claim("a", [], 2, lease=0.05)
    await env.admin.hdel(env.key("job:j1"), ["task"])
    assert sorted(await poll(lambda: _requeued(s))) == ["j0", "j1"]
    assert await env.admin.lrange(env.key("ready:medium"), 0, -1) == ["j0", "j1"]


async def _requeued(s: RedisState) -> list[str]:
    return (await s.reap()).requeued


async def test_poison_job_ends_failed(env: Env) -> None:
    s = env.state()
    await s.enqueue([new("poison", L, max_retries=1)])
    for attempt in (1, 2):
        fc = await s.finish_and_claim(f"node-{attempt}", [], 1, lease=0.05)
        assert fc.claimed[0].job.attempts == attempt
        reaped = await poll(_reap_any(s))
        if attempt == 1:
            assert reaped.requeued == ["poison"]
        else:
            assert reaped.failed == ["poison"]
            assert reaped.requeued == []
    got = await s.get("poison")
    assert got is not None
    assert got.job.status is JobStatus.FAILED
    assert got.job.error is not None
    assert "lease expired (worker lost)" in got.job.error
    assert got.job.error.startswith("LeaseExpired: ")
    assert await env.admin.zscore(env.key("idx:failed"), "poison") is not None
    assert await env.admin.pttl(env.key("job:poison")) > 0
    assert (await s.counts()).totals["failed:low"] == 1
    assert (await events(env))[-1]["type"] == "failed"


def _reap_any(s: RedisState) -> Any:
    async def go() -> Any:
        r = await s.reap()
        return r if (r.requeued or r.failed or r.cancelled) else None
    return go


async def test_renew_keeps_a_live_job(env: Env) -> None:
    s = env.state()
    await s.enqueue([new("long", H)])
    (c,) = (await s.finish_and_claim("a", [], 1, lease=0.3)).claimed
    before = await env.admin.zscore(env.key("leases"), "long")
    renewal = await s.renew("a", [("long", c.fence)], lease=60)
    assert renewal.lost == []
    assert renewal.cancel_requested == []
    after = await env.admin.zscore(env.key("leases"), "long")
    assert before is not None
    assert after is not None
    assert after - before > 50_000
    assert (await s.reap()).requeued == []
    # Renewing something not held (never claimed, wrong fence) reports it lost.
    assert (await s.renew("a", [("long", c.fence + 1), ("ghost", 1)], 1)).lost == [
        "long", "ghost",
    ]
    assert await env.admin.zscore(env.key("leases"), "ghost") is None


# ---------------------------------------------------------------------------- outcomes


async def test_failed_retry_cancelled_released(env: Env) -> None:
    s = env.state()
    await s.enqueue([new(f"j{i}", H) for i in range(4)])
    held = {c.job.id: c.fence for c in (await s.finish_and_claim("n", [], 4, 30)).claimed}
    fc = await s.finish_and_claim("n", [
        Outcome.failed("j0", held["j0"], "ValueError: no", "Traceback...", 0.5),
        Outcome.retry("j1", held["j1"], 60.0, "KeyError: k", "tb"),
        Outcome.cancelled("j2", held["j2"]),
        Outcome.released("j3", held["j3"]),
    ], 0, 30)
    assert fc.results == ["ok"] * 4
    j0, j1, j2, j3 = [await s.get(f"j{i}") for i in range(4)]
    assert j0 is not None
    assert j0.job.status is JobStatus.FAILED
    assert (j0.job.error, j0.job.traceback) == ("ValueError: no", "Traceback...")
    assert j1 is not None
    assert j1.job.status is JobStatus.SCHEDULED
    assert j1.job.scheduled_for is not None
    assert j1.job.error == "KeyError: k"
    assert await env.admin.zscore(env.key("sched"), "j1") == pytest.approx(
        j1.job.scheduled_for * 1000
    )
    assert j2 is not None
    assert j2.job.status is JobStatus.CANCELLED
    assert j3 is not None
    assert j3.job.status is JobStatus.QUEUED
    assert j3.job.attempts == 1
    assert j3.job.started_at is None
    assert await env.admin.lrange(env.key("ready:high"), 0, -1) == ["j3"]
    assert await env.admin.zcard(env.key("leases")) == 0
    counts = await s.counts()
    assert counts.totals["failed:high"] == 1
    assert counts.totals["retried:high"] == 1
    assert counts.totals["cancelled:high"] == 1
    types = [e["type"] for e in await events(env)][-4:]
    assert types == ["failed", "retrying", "cancelled", "requeued"]
    # A released job is claimed again with its attempt counted.
    (again,) = (await s.finish_and_claim("n", [], 1, 30)).claimed
    assert again.job.id == "j3"
    assert again.job.attempts == 2


async def test_unstarted_jobs_go_back_in_order_with_their_attempt_uncounted(
    env: Env,
) -> None:
    s = env.state()
    await s.enqueue([new(f"u{i}", H) for i in range(5)])
    held = {c.job.id: c.fence for c in (await s.finish_and_claim("n", [], 4, 30)).claimed}
    assert await env.admin.lrange(env.key("ready:high"), 0, -1) == ["u4"]
    fc = await s.finish_and_claim("n", [
        Outcome.unstarted("u0", held["u0"]), Outcome.released("u1", held["u1"]),
        Outcome.unstarted("u2", held["u2"]), Outcome.unstarted("u3", held["u3"]),
    ], 0, 30)
    assert fc.results == ["ok"] * 4
    # The first put back is taken first; the job that ran (released) keeps its attempt.
    assert await env.admin.lrange(env.key("ready:high"), 0, -1) == [
        "u0", "u1", "u2", "u3", "u4"]
    back = [await s.get(f"u{i}") for i in range(4)]
    assert [(b.job.status, b.job.attempts, b.job.started_at) for b in back if b] == [
        (JobStatus.QUEUED, 0, None), (JobStatus.QUEUED, 1, None),
        (JobStatus.QUEUED, 0, None), (JobStatus.QUEUED, 0, None)]
    assert await env.admin.zcard(env.key("leases")) == 0
    assert [e["type"] for e in await events(env)][-4:] == ["requeued"] * 4
    again = (await s.finish_and_claim("n", [], 5, 30)).claimed
    assert [(c.job.id, c.job.attempts) for c in again] == [
        ("u0", 1), ("u1", 2), ("u2", 1), ("u3", 1), ("u4", 1)]
    # Sent again (a reply lost): applied once.
    assert (await s.finish_and_claim("n", [Outcome.unstarted("u0", held["u0"])], 0, 30)
            ).results == ["stale"]


async def test_retry_then_promote_when_due(env: Env) -> None:
    s = env.state()
    await s.enqueue([new("r", M)])
    (c,) = (await s.finish_and_claim("n", [], 1, 30)).claimed
    await s.finish_and_claim("n", [Outcome.retry("r", c.fence, 0.3, "E: x")], 0, 30)
    early = await s.promote()
    assert early.promoted == 0
    assert early.next_due is not None
    assert (await s.get("r")).job.status is JobStatus.SCHEDULED  # type: ignore[union-attr]
    assert (await s.finish_and_claim("n", [], 1, 30)).claimed == []

    async def promoted() -> int:
        return (await s.promote()).promoted

    assert await poll(promoted) == 1
    got = await s.get("r")
    assert got is not None
    assert got.job.status is JobStatus.QUEUED
    assert got.job.scheduled_for is None
    (again,) = (await s.finish_and_claim("n", [], 1, 30)).claimed
    assert again.job.attempts == 2
    assert again.fence == 2
    assert (await s.promote()).next_due is None


async def test_due_jobs_enter_a_full_ready_list_and_new_ones_wait_for_it_to_drain(
    env: Env,
) -> None:
    """A job accepted already is never refused (python-api.md, "Capacity, precisely"):
    due jobs go into their ready list even when it is full, and new jobs find the
    priority full until it drains below the capacity.  (Due jobs used to wait in
    ``sched``, SCHEDULED past their due time, counted in ``queued`` by the nodes that
    wrote last and not by the others.)"""
    s = env.state(capacity=2)
    await s.enqueue([new("d0", H, delay=0.05), new("d1", H, delay=0.05)])
    await s.enqueue([new("q0", H), new("q1", H)])

    async def promoted_two() -> Any:
        p = await s.promote()
        return p if p.promoted == 2 else None

    await poll(promoted_two)
    assert await env.admin.lrange(env.key("ready:high"), 0, -1) == ["q0", "q1", "d0", "d1"]
    assert (await s.get("d0")).job.status is JobStatus.QUEUED  # type: ignore[union-attr]
    counts = await s.counts()
    assert (counts.queued, counts.delayed) == ((4, 0, 0), (0, 0, 0))
    refused = await s.admit([new("late", H)])
    assert refused.jobs[0].code is Admission.FULL
    assert refused.view is not None
    assert refused.view.ready == counts.queued  # the nodes' two views agree
    await s.finish_and_claim("n", [], 2, 30)  # 2 left: still at the capacity
    (refused,) = await s.enqueue([new("late", H)])
    assert refused.code is Admission.FULL
    await s.finish_and_claim("n", [], 1, 30)
    (ok,) = await s.enqueue([new("late", H)])
    assert ok.code is Admission.ACCEPTED


async def test_promote_drops_the_blocked_counts_an_older_version_left(env: Env) -> None:
    """Versions before this one kept due jobs that found their list full in ``sched``
    and their count in ``room`` (``blocked:<p>``), which enqueue then kept free."""
    s = env.state(capacity=2)
    await env.admin.hset(env.key("room"), {"blocked:high": "2", "delayed:low": "0"})
    await s.promote()
    assert await env.admin.hgetall(env.key("room")) == {"delayed:low": "0"}
    (ok,) = await s.enqueue([new("j", H)])
    assert ok.code is Admission.ACCEPTED


# ---------------------------------------------------------------------------- cancel, retry


async def test_cancel_in_each_state(env: Env) -> None:
    s = env.state()
    await s.enqueue([new("run", H), new("queued", H), new("later", M, delay=60)])
    (c,) = (await s.finish_and_claim("owner", [], 1, 30)).claimed
    assert c.job.id == "run"

    code, got = await s.cancel("queued")
    assert code == "cancelled"
    assert got.job.status is JobStatus.CANCELLED
    assert await env.admin.llen(env.key("ready:high")) == 0
    assert await env.admin.zscore(env.key("idx:cancelled"), "queued") is not None
    assert await env.admin.pttl(env.key("job:queued")) > 0

    code, got = await s.cancel("later")
    assert code == "cancelled"
    assert got.job.status is JobStatus.CANCELLED
    assert await env.admin.zcard(env.key("sched")) == 0
    assert (await s.counts()).delayed == (0, 0, 0)

    code, got = await s.cancel("run")
    assert code == "requested"
    assert got.job.status is JobStatus.PROCESSING
    assert got.cancel_requested
    ev = (await events(env))[-1]
    assert (ev["type"], ev["job_id"], ev["node"]) == ("cancel_requested", "run", "owner")
    assert (await s.cancel("run"))[0] == "requested"
    assert (await s.renew("owner", [("run", c.fence)], 30)).cancel_requested == ["run"]
    fc = await s.finish_and_claim("owner", [Outcome.cancelled("run", c.fence)], 0, 30)
    assert fc.results == ["ok"]
    assert (await s.get("run")).job.status is JobStatus.CANCELLED  # type: ignore[union-attr]

    with pytest.raises(InvalidTransition, match="cancelled") as info:
        await s.cancel("run")
    assert info.value.status is JobStatus.CANCELLED
    assert (await s.counts()).total("cancelled") == 3


async def test_cancel_requested_wins_over_retry_release_and_reap(env: Env) -> None:
    s = env.state()
    await s.enqueue([new("a", H), new("b", H), new("c", H)])
    held = {c.job.id: c.fence for c in (await s.finish_and_claim("n", [], 2, 30)).claimed}
    (c3,) = (await s.finish_and_claim("m", [], 1, lease=0.05)).claimed
    for job_id in ("a", "b", "c"):
        assert (await s.cancel(job_id))[0] == "requested"
    fc = await s.finish_and_claim("n", [
        Outcome.retry("a", held["a"], 1.0, "E: x"), Outcome.released("b", held["b"]),
    ], 0, 30)
    assert fc.results == ["cancelled", "cancelled"]
    reaped = await poll(_reap_any(s))
    assert reaped.cancelled == [c3.job.id]
    for job_id in ("a", "b", "c"):
        assert (await s.get(job_id)).job.status is JobStatus.CANCELLED  # type: ignore[union-attr]
    assert await env.admin.llen(env.key("ready:high")) == 0
    assert await env.admin.zcard(env.key("sched")) == 0


async def test_user_retry(env: Env) -> None:
    s = env.state(capacity=1)
    await s.enqueue([new("f", H, max_retries=0)])
    (c,) = (await s.finish_and_claim("n", [], 1, 30)).claimed
    await s.finish_and_claim("n", [Outcome.failed("f", c.fence, "E: boom")], 0, 30)
    await s.enqueue([new("fill", H)])
    with pytest.raises(QueueFull):
        await s.retry("f")
    await s.finish_and_claim("n", [], 1, 30)  # takes "fill"
    job = await s.retry("f")
    assert job.status is JobStatus.QUEUED
    assert job.attempts == 0
    assert job.finished_at is None
    assert job.error == "E: boom"
    assert await env.admin.pttl(env.key("job:f")) == -1
    assert await env.admin.zscore(env.key("idx:failed"), "f") is None
    with pytest.raises(InvalidTransition, match="queued"):
        await s.retry("f")
    (again,) = (await s.finish_and_claim("n", [], 1, 30)).claimed
    assert again.job.id == "f"
    assert again.job.attempts == 1
    assert (await events(env))[-2]["type"] == "requeued"


# ---------------------------------------------------------------------------- re-sends


async def test_scripts_are_idempotent_when_sent_again(env: Env) -> None:
    s = env.state()
    batch = [new("a", H, 1), new("b", M, 2)]
    first = await s.enqueue(batch)
    second = await s.enqueue(batch)
    assert [a.code for a in second] == [Admission.EXISTING] * 2
    assert [a.job for a in second] == [a.job for a in first]
    assert await env.admin.llen(env.key("ready:high")) == 1
    assert (await s.counts()).total("enqueued") == 2

    # What coredis does after a lost reply: the very same command.  An enqueue carries no
    # request id: its re-send finds the jobs by id.
    (sent,) = await s.enqueue([new("c", L, 3)])
    (resent,) = await s.enqueue([new("c", L, 3)])
    assert sent.code is Admission.ACCEPTED
    assert resent.code is Admission.EXISTING
    assert resent.job == sent.job
    assert await env.admin.llen(env.key("ready:low")) == 1
    assert (await s.counts()).total("enqueued") == 3

    s.request_id = lambda: "resent-2"
    claim = await s.finish_and_claim("n", [], 2, 30)
    again = await s.finish_and_claim("n", [], 2, 30)
    assert [c.job.id for c in again.claimed] == [c.job.id for c in claim.claimed] == ["a", "b"]
    assert [c.fence for c in again.claimed] == [1, 1]
    assert await env.admin.llen(env.key("ready:low")) == 1  # nothing more was claimed

    # An ack sent twice: applied once, answered "ok" both times, counted once.
    acks = [Outcome.completed("a", 1, "r"), Outcome.failed("b", 1, "E: e")]
    s.request_id = lambda: "resent-3"
    assert (await s.finish_and_claim("n", acks, 0, 30)).results == ["ok", "ok"]
    assert (await s.finish_and_claim("n", acks, 0, 30)).results == ["ok", "ok"]
    counts = await s.counts()
    assert counts.totals["completed:high"] == 1
    assert counts.totals["failed:medium"] == 1
    kinds = [e["type"] for e in await events(env)]
    assert kinds.count("completed") == 1
    assert kinds.count("failed") == 1
    assert kinds.count("started") == 2
    # ... but an ack of another kind for a finished job is refused.
    assert (await s.finish_and_claim("n", [Outcome.completed("b", 1, "r")], 0, 30)
            ).results == ["stale"]

    s.request_id = lambda: "resent-4"
    assert (await s.cancel("c"))[0] == "cancelled"
    assert (await s.cancel("c"))[0] == "cancelled"  # the first answer, not "finished"
    s.request_id = lambda: "resent-5"
    assert (await s.retry("c")).status is JobStatus.QUEUED
    assert (await s.retry("c")).status is JobStatus.QUEUED
    assert await env.admin.lrange(env.key("ready:low"), 0, -1) == ["c"]


# ---------------------------------------------------------------------------- reads


async def test_list_jobs_pages_newest_first(env: Env) -> None:
    s = env.state(result_ttl=60)
    for i in range(7):  # one batch per job: distinct creation times are not needed
        await s.enqueue([NewJob.build(f"j{i}", "even" if i % 2 == 0 else "odd", i)])
    seen: list[str] = []
    before = None
    while True:
        page, before = await s.list_jobs(limit=3, before=before)
        seen += [j.id for j in page]
        if before is None:
            break
    assert seen == [f"j{i}" for i in reversed(range(7))]
    odd, nxt = await s.list_jobs(task="odd", limit=10)
    assert [j.id for j in odd] == ["j5", "j3", "j1"]
    assert nxt is None

    held = {c.job.id: c.fence for c in (await s.finish_and_claim("n", [], 3, 30)).claimed}
    await s.finish_and_claim("n", [Outcome.completed(i, f, None) for i, f in held.items()],
                             0, 30)
    done, _ = await s.list_jobs(status="completed", limit=10)
    assert sorted(j.id for j in done) == sorted(held)
    queued, _ = await s.list_jobs(status=JobStatus.QUEUED, limit=2)
    assert len(queued) == 2
    assert all(j.status is JobStatus.QUEUED for j in queued)
    rest, nxt = await s.list_jobs(status="queued", limit=10, before=queued[-1].id)
    assert nxt is None
    assert {j.id for j in queued + rest} == {f"j{i}" for i in range(7)} - set(held)
    with pytest.raises(InvalidJob, match="status"):
        await s.list_jobs(status="lost")
    with pytest.raises(InvalidJob, match="limit"):
        await s.list_jobs(limit=0)


async def _finish(s: RedisState, ids: list[str]) -> None:
    """Enqueue ``ids`` (in order) and complete them."""
    await s.enqueue([new(job_id, H) for job_id in ids])
    claimed = (await s.finish_and_claim("n", [], len(ids), 30)).claimed
    await s.finish_and_claim("n", [Outcome.completed(c.job.id, c.fence, 1)
                                   for c in claimed], 0, 30)


async def _all_pages(s: RedisState, status: str | None, limit: int, budget: int = 10_000,
                     ) -> list[str]:
    seen: list[str] = []
    before = None
    for _ in range(50):
        page, before = await s.list_jobs(status=status, limit=limit, before=before,
                                         budget=budget)
        seen += [j.id for j in page]
        if before is None:
            return seen
    raise AssertionError(f"no last page: {seen}")


async def test_finished_entries_of_an_earlier_version_list_last_and_are_moved(
    env: Env,
) -> None:
    """``idx:<status>`` entries written before it held creation orders hold finish
    times: a cursor on one was looked up by its creation order and found nothing after
    it, so the same page came back for ever.  Reap moves them to ``ended:`` and gives
    them their creation order."""
    s = env.state()
    await _finish(s, ["old0", "old1", "old2", "new0", "new1"])
    for job_id in ("old0", "old1", "old2"):  # as the earlier version wrote them
        finished = await env.admin.zscore(env.key("ended:completed"), job_id)
        await env.admin.zadd(env.key("idx:completed"), {job_id: finished})
        await env.admin.zrem(env.key("ended:completed"), [job_id])
    assert await _all_pages(s, "completed", 2) == ["new1", "new0", "old2", "old1", "old0"]
    await s.reap()
    assert await _all_pages(s, "completed", 2) == ["new1", "new0", "old2", "old1", "old0"]
    for job_id in ("old0", "old1", "old2"):
        assert await env.admin.zscore(env.key("idx:completed"), job_id) == (
            await env.admin.zscore(env.key("idx:all"), job_id))
        assert await env.admin.zscore(env.key("ended:completed"), job_id) is not None


async def test_a_page_of_expired_entries_is_not_taken_for_the_last(env: Env) -> None:
    """Entries whose records expired before reap dropped them are dropped by the listing
    without using its budget: a budget spent on them ended the listing (``next``
    ``None``) with live jobs behind them."""
    s = env.state(result_ttl=0.05)
    await _finish(s, [f"gone{i}" for i in range(30)])

    async def expired() -> bool:  # (on Redis' clock)
        return await env.admin.exists([env.key(f"job:gone{i}") for i in range(30)]) == 0

    await poll(expired)
    live = env.state(result_ttl=3600)
    await _finish(live, ["live0", "live1", "live2"])
    # Listed newest first: the live jobs come first unless their entries are older.
    for job_id in ("live0", "live1", "live2"):
        for key in ("idx:all", "idx:completed"):
            await env.admin.zadd(env.key(key), {job_id: int(job_id[-1]) + 1})
    assert await _all_pages(s, "completed", 2, budget=20) == ["live2", "live1", "live0"]
    assert await env.admin.zcard(env.key("idx:completed")) == 3
    assert await _all_pages(s, None, 2, budget=20) == ["live2", "live1", "live0"]


async def test_a_cursor_on_an_entry_left_by_a_job_made_again_goes_on(env: Env) -> None:
    """A finished job's entry stays in ``idx:<status>`` until reap drops it; its id made
    again meanwhile has a new creation order: a cursor on that entry, looked up by the
    new order, gave the same page for ever."""
    s = env.state()
    await _finish(s, ["b0", "b1", "again", "c0", "c1"])
    await env.admin.delete([env.key("job:again")])  # expired, not reaped yet ...
    await s.enqueue([new("again", H)])  # ... and made again (queued, newest)
    assert await _all_pages(s, "completed", 3, budget=3) == ["c1", "c0", "b1", "b0"]


async def test_list_jobs_pages_end_at_a_byte_budget(env: Env) -> None:
    """A page of 1,000 jobs with 1 MiB payloads would be a gigabyte in one reply: a page
    ends once its payloads and results pass ``max_bytes``, and the pages still walk
    every job once, in both of the script's orders."""
    s = env.state()
    await s.enqueue([new(f"b{i}", M, "x" * 1000) for i in range(7)])
    for status in (None, "queued"):
        seen: list[str] = []
        before = None
        while True:
            page, before = await s.list_jobs(status=status, limit=100, before=before,
                                             max_bytes=2_500)
            assert 1 <= len(page) <= 3  # 1,002 bytes a payload: the third passes 2,500
            seen += [j.id for j in page]
            if before is None:
                break
        assert seen == [f"b{i}" for i in reversed(range(7))], status


async def test_reap_trims_indexes_of_expired_records(env: Env) -> None:
    s = env.state(result_ttl=0.1)
    await s.enqueue([new("gone", H), new("live", H)])
    (c, _) = (await s.finish_and_claim("n", [], 2, 30)).claimed
    await s.finish_and_claim("n", [Outcome.completed("gone", c.fence, 1)], 0, 30)
    assert await env.admin.zscore(env.key("idx:completed"), "gone") is not None

    async def trimmed() -> bool:
        await s.reap()
        return await env.admin.zscore(env.key("idx:completed"), "gone") is None

    await poll(trimmed)
    assert await env.admin.exists([env.key("job:gone")]) == 0
    assert await env.admin.zscore(env.key("idx:all"), "gone") is None
    assert await env.admin.zscore(env.key("idx:all"), "live") is not None


async def test_reap_drops_a_record_at_its_expiry_with_its_idx_all_entry(env: Env) -> None:
    """A record's expiry is set a moment after the time its index entry holds: a reap
    between the two trimmed ``idx:completed`` but kept ``idx:all`` (the record was still
    there), and nothing dropped that entry once the record had gone (seen once in a full
    run).  A record at most a second from its expiry goes with both entries now; one kept
    longer (by a node with a longer ``result_ttl``) keeps its record and ``idx:all``."""
    s = env.state(result_ttl=60)
    await s.enqueue([new("ending", H), new("kept", H)])
    claimed = (await s.finish_and_claim("n", [], 2, 30)).claimed
    await s.finish_and_claim("n", [Outcome.completed(c.job.id, c.fence, 1)
                                   for c in claimed], 0, 30)
    past = (await env.admin.zscore(env.key("ended:completed"), "ending")) - 61_000
    await env.admin.zadd(env.key("ended:completed"), {"ending": past, "kept": past})
    await env.admin.pexpire(env.key("job:ending"), 800)  # its expiry a moment away
    await env.admin.pexpire(env.key("job:kept"), 3_600_000)
    await s.reap()
    assert await env.admin.exists([env.key("job:ending")]) == 0
    assert await env.admin.zscore(env.key("idx:all"), "ending") is None
    assert await env.admin.exists([env.key("job:kept")]) == 1
    assert await env.admin.zscore(env.key("idx:all"), "kept") is not None
    assert await env.admin.zscore(env.key("idx:completed"), "kept") is None
    assert await env.admin.zscore(env.key("ended:completed"), "kept") is None


async def test_dead_letters_outlive_finished_jobs(env: Env) -> None:
    """A FAILED job expires after ``failed_ttl``, the other finished ones after
    ``result_ttl``; reap trims each index by its own TTL, whichever script finished the
    job (a handler's failure, a lease lost on the last attempt, a cancel)."""
    s = env.state(result_ttl=0.1, failed_ttl=3600)
    await s.enqueue([new("done", H), new("dead", H), new("lost", H, max_retries=0),
                     new("gone", H)])
    held = {c.job.id: c.fence for c in (await s.finish_and_claim("n", [], 3, 0.05)).claimed}
    assert sorted(held) == ["dead", "done", "lost"]
    await s.finish_and_claim("n", [Outcome.completed("done", held["done"], 1),
                                   Outcome.failed("dead", held["dead"], "E: x", "")], 0, 30)
    assert (await s.cancel("gone"))[0] == "cancelled"
    assert 0 < await env.admin.pttl(env.key("job:done")) <= 100
    assert 3_590_000 < await env.admin.pttl(env.key("job:dead")) <= 3_600_000

    async def reaped() -> bool:  # "lost"'s lease (50 ms) expires: its last attempt
        return "lost" in (await s.reap()).failed

    await poll(reaped)
    assert 3_590_000 < await env.admin.pttl(env.key("job:lost")) <= 3_600_000

    async def trimmed() -> bool:
        await s.reap()
        return (await env.admin.zscore(env.key("idx:completed"), "done") is None
                and await env.admin.zscore(env.key("idx:cancelled"), "gone") is None)

    await poll(trimmed)
    assert await env.admin.exists([env.key("job:done"), env.key("job:gone")]) == 0
    assert {j.id for j in (await s.list_jobs(status="failed"))[0]} == {"dead", "lost"}
    assert (await s.get("dead")) is not None
    with pytest.raises(ValueError, match="failed_ttl"):
        env.state(failed_ttl=float("inf"))


async def test_nodes_registry(env: Env) -> None:
    s = env.state()
    t = await s.heartbeat("node-a", {"workers": 4, "busy": 1})
    await s.heartbeat("node-b", {"workers": 2})
    nodes = {n.node: n for n in await s.nodes(max_age=30)}
    assert set(nodes) == {"node-a", "node-b"}
    assert nodes["node-a"].info == {"workers": 4, "busy": 1}
    assert nodes["node-a"].heartbeat == pytest.approx(t)
    assert await s.remove_node("node-a") is True
    assert await s.remove_node("node-a") is False
    assert [n.node for n in await s.nodes()] == ["node-b"]
    with pytest.raises(ValueError, match="node"):
        await s.heartbeat("bad node")


async def test_a_heartbeat_forgets_the_nodes_silent_for_long(env: Env) -> None:
    """A killed node never removes its entries from ``nodes`` and ``beats``: one per
    crash stayed for good (23 after 30 kills).  A heartbeat drops those of nodes silent
    for ``forget`` seconds, its own kept."""
    s = env.state()
    await s.heartbeat("killed", {"workers": 1})

    async def forgotten() -> bool:  # (silent for 50 ms of Redis' clock)
        await s.heartbeat("live", {"workers": 2}, forget=0.05)
        return not await env.admin.hexists(env.key("nodes"), "killed")

    await poll(forgotten)
    assert await env.admin.zscore(env.key("beats"), "killed") is None
    assert await env.admin.hget(env.key("nodes"), "live") is not None
    assert [n.node for n in await s.nodes()] == ["live"]


async def test_reap_says_when_it_left_expired_entries_and_catches_up(env: Env) -> None:
    """Reap drops a bounded number of expired index entries a call, and says when it
    may have left some (``behind``), so that its caller calls again: one call every
    ``lease / 4`` fell behind a queue finishing more than 27 jobs a second, and the
    indexes (and Redis' memory) grew for as long as it ran."""
    s = env.state(result_ttl=0.05)
    ids = [f"j{i}" for i in range(5)]
    await s.enqueue([new(job_id, H) for job_id in ids])
    claimed = (await s.finish_and_claim("n", [], 5, 30)).claimed
    await s.finish_and_claim("n", [Outcome.completed(c.job.id, c.fence, 1)
                                   for c in claimed], 0, 30)

    async def expired() -> bool:  # (on Redis' clock)
        return await env.admin.exists([env.key(f"job:{job_id}") for job_id in ids]) == 0

    await poll(expired)
    rounds = []
    while True:
        reaped = await s.reap(trim_n=2)
        rounds.append((reaped.behind, await env.admin.zcard(env.key("idx:completed"))))
        if not reaped.behind:
            break
    assert rounds == [(True, 3), (True, 1), (False, 0)]
    assert await env.admin.zcard(env.key("ended:completed")) == 0
    assert await env.admin.zcard(env.key("idx:all")) == 0


def test_corrupt_record_is_named() -> None:
    good: list[Any] = ["j", "t", "1", "0", "queued", "0", "3", None, "1000", None, None,
                       None, None, None, None, "0", None, None, None]
    assert len(good) == len(RECORD_FIELDS)
    assert isinstance(stored_job(good), StoredJob)
    bad = list(good)
    bad[2] = "{not json"
    with pytest.raises(CorruptRecord, match="'j': payload"):
        stored_job(bad)
    bad = list(good)
    bad[4] = "exploded"
    with pytest.raises(CorruptRecord, match="status"):
        stored_job(bad)
    with pytest.raises(CorruptRecord, match="expected 19 fields"):
        stored_job(good[:5])


# ---------------------------------------------------------------------------- events


async def test_event_reader_follows_and_counts_gaps(env: Env) -> None:
    s = env.state(events_maxlen=10)
    reader = await s.event_reader()
    await s.enqueue([new(f"a{i}", H) for i in range(5)])
    batch = await reader.read(block_ms=1000)
    assert [e.job_id for e in batch.events] == [f"a{i}" for i in range(5)]
    assert [e.seq for e in batch.events] == [1, 2, 3, 4, 5]
    assert batch.dropped == 0
    assert batch.last_id == batch.events[-1].stream_id
    assert (await reader.read(block_ms=50)).events == []

    # MAXLEN ~ trims in whole stream nodes (100 entries): write well past that.
    for k in range(6):
        await s.enqueue([new(f"b{k}-{i}", L) for i in range(100)])
    first = dict((await env.admin.xrange(env.key("events"), count=1))[0].field_values)
    assert int(first["seq"]) > 6  # entries the reader had not read are gone
    got = 0
    dropped = 0
    while True:
        batch = await reader.read(count=250, block_ms=50)
        if not batch.events:
            break
        got += len(batch.events)
        dropped += batch.dropped
    assert dropped == int(first["seq"]) - 6
    assert got + dropped == 600

    # A reader started at the end sees only what comes next; stop() ends iteration.
    late = await s.event_reader()
    assert late.last_seq == 605

    async def stop_soon() -> None:
        await s.enqueue([new("c0", M)])
        late.stop()

    seen: list[str] = []
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_soon)
            async for b in late:
                seen += [e.job_id for e in b.events]
    # stop() lands after the read that saw c0 began; if that read returned before the
    # enqueue, c0 is simply the next thing read.
    if not seen:
        seen = [e.job_id for e in (await late.read(block_ms=1000)).events]
    assert seen == ["c0"]


# ---------------------------------------------------------------------------- wake-ups


async def test_wait_for_work_token_timeout_and_stop(env: Env) -> None:
    s = env.state()
    await s.enqueue([new("w", H)])
    with trio.fail_after(5):
        assert await s.wait_for_work("node-a", timeout=1.0) == "work"
        assert await s.wait_for_work("node-a", timeout=0.2) is None  # one token per job
    got: list[Any] = []

    async def waiter() -> None:
        got.append(await s.wait_for_work("node-a", timeout=5.0))

    # A stop push wakes a waiter well before its 5 s timeout: fail_after(3) cannot cut the
    # shielded call short, so a waiter not woken would end after 5 s and fail this.
    with trio.fail_after(3):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await poll(lambda: blocked_clients(env.admin, env.client_name, "blpop"))
            await s.stop_waiting("node-a")
    assert got == ["stop"]
    # Another node's stop is not ours.
    await s.stop_waiting("node-b")
    assert await s.wait_for_work("node-a", timeout=0.1) is None
    with pytest.raises(ValueError, match="timeout"):
        await s.wait_for_work("node-a", timeout=10)


async def test_cancelled_waiter_finishes_its_call_first(env: Env) -> None:
    """Cancelling the task of a waiter does not cancel the BLPOP: with a lane of ONE
    connection, a cancelled call would lose the only slot and the next call would fail."""
    name = unique("c")
    async with connect(REDIS_URL, client_name=name, blocking_connections=1,
                       pool_timeout=1.0) as client:
        s = RedisState(client, env.queue)
        for _ in range(3):
            got: list[Any] = []

            async def waiter(out: list[Any]) -> None:
                try:
                    out.append(await s.wait_for_work("n", 5.0))
                finally:
                    out.append("left")

            # The waiter's 5 s would trip fail_after(3) if the stop push did not end it.
            with trio.fail_after(3):
                async with trio.open_nursery() as outer:
                    with trio.CancelScope() as scope:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(waiter, got)
                            await poll(lambda: blocked_clients(env.admin, name, "blpop"))
                            scope.cancel()
                            outer.start_soon(s.stop_waiting, "n")  # what shutdown does next
            # The call ran to its end (the stop token), then the task was cancelled.
            assert got == ["stop", "left"]
        await s.enqueue([new("x", H)])
        with trio.fail_after(3):
            assert await s.wait_for_work("n", 1.0) == "work"
        assert client.rebuilds == (0, 0)


async def test_no_hang_after_100_stop_wake_cycles(env: Env) -> None:
    """The fetcher's pattern, 100 times, on a lane of 2 connections: never a cancelled
    blocking call, so no pool slot is lost and nothing hangs (coredis 6.9.0 loses one per
    cancelled call: see test_coredis_loses_a_slot_per_cancelled_blpop)."""
    name = unique("c")
    async with connect(REDIS_URL, client_name=name, blocking_connections=2,
                       pool_timeout=1.0) as client:
        s = RedisState(client, env.queue)
        with trio.fail_after(60):
            for i in range(100):
                woken: list[str | None] = []

                async def fetcher(out: list[str | None]) -> None:
                    # The node's fetcher: wait, claim on "work", leave on "stop".
                    while True:
                        got = await s.wait_for_work("n", 5.0)
                        out.append(got)
                        if got == "stop":
                            return

                async def woke(out: list[str | None]) -> int:
                    await trio.lowlevel.checkpoint()
                    return len(out)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(fetcher, woken)
                    if i % 2:
                        await s.enqueue([new(f"j{i}", H)])  # a wake token first
                        await poll(functools.partial(woke, woken))
                    await s.stop_waiting("n")
                assert woken == (["work", "stop"] if i % 2 else ["stop"])
        assert client.rebuilds == (0, 0)
        with trio.fail_after(3):
            await s.enqueue([new("last", H)])
            assert await s.wait_for_work("n", 1.0) in ("work", "stop")


@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_coredis_loses_a_slot_per_cancelled_blpop(env: Env) -> None:
    """What the adapter works around (coredis 6.9.0): a pool of 3, three BLPOPs cancelled
    in flight, and the next command cannot get a connection.  If this starts failing, the
    leak is fixed upstream: update docs/redis-design.md."""
    async with coredis.Redis.from_url(REDIS_URL, decode_responses=True, max_connections=3,
                                      pool_timeout=0.5, retry_policy=NoRetryPolicy()) as raw:
        for _ in range(3):
            with trio.move_on_after(0.05):
                await raw.blpop([env.key("never")], 5)
        with pytest.raises(TimeoutError), trio.fail_after(5):
            await raw.blpop([env.key("never")], 0.1)
    # The cancelled calls leave coredis' memory streams unclosed: collected here, under
    # this test's filter, not whenever the collector next runs (it failed a run once,
    # as an unraisable ResourceWarning).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


async def test_client_kill_mid_run(env: Env) -> None:
    """Connections dropped by the server: blocked ones and idle ones.  The next call
    works; the lane (2 connections) is rebuilt, so 10 dropped BLPOPs lose no slot."""
    name = unique("c")
    async with connect(REDIS_URL, client_name=name, blocking_connections=2,
                       pool_timeout=1.0) as client:
        s = RedisState(client, env.queue)
        await s.enqueue([new(f"j{i}", H) for i in range(20)])
        await env.admin.delete([env.key("wake")])  # so that every wait blocks
        for _ in range(10):
            got: list[Any] = []

            async def waiter(out: list[Any]) -> None:
                out.append(await s.wait_for_work("n", 5.0))

            with trio.fail_after(4):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(waiter, got)
                    await poll(lambda: blocked_clients(env.admin, name, "blpop"))
                    assert await kill_clients(env.admin, name, "blpop") == 1
            assert got == [None]  # the connection was lost: a hint missed, nothing else
            # Kill the idle main connection too; the next script call re-connects.
            await kill_clients(env.admin, name)
            fc = await s.finish_and_claim("n", [], 2, 30)
            assert len(fc.claimed) == 2
        counts = await s.counts()
        assert counts.processing == 20
        assert counts.queued == (0, 0, 0)
        await s.enqueue([new("last", H)])
        with trio.fail_after(3):
            assert await s.wait_for_work("n", 1.0) == "work"
        assert client.rebuilds == (0, 10)  # the lane, once per dropped call


async def test_closing_the_adapter_waits_for_a_blocked_call(env: Env) -> None:
    got: list[Any] = []
    name = unique("c")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            async with connect(REDIS_URL, client_name=name) as client:
                s = RedisState(client, env.queue)

                async def waiter() -> None:
                    got.append(await s.wait_for_work("n", 1.0))

                nursery.start_soon(waiter)
                await poll(lambda: blocked_clients(env.admin, name, "blpop"))
            # The adapter closed after the wait returned by itself: not cut off.
    assert got == [None]


@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_unreachable_redis_raises_redis_unavailable() -> None:
    from trioqueue.testing import RedisUnavailable

    with trio.fail_after(10):
        async with connect("redis://127.0.0.1:1/0", connect_timeout=1.0) as client:
            s = RedisState(client, unique("q"))
            with pytest.raises(RedisUnavailable):
                await s.counts()
            assert await s.wait_for_work("n", 0.1) is None
    with warnings.catch_warnings():  # collected here, under this test's filter
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    with pytest.raises(ValueError, match="redis_url"):
        async with connect("http://127.0.0.1:6379"):
            pass


def test_record_fields_match_the_lua_list() -> None:
    from trioqueue.testing import source

    lua = source("get")
    start = lua.index("local FIELDS = {")
    body = lua[start:lua.index("}", start)]
    names = [part.strip().strip("'") for part in body.split("{", 1)[1].split(",")]
    assert tuple(n for n in names if n) == RECORD_FIELDS


def test_payload_json_keeps_key_order() -> None:
    job = NewJob.build("j", "t", {"b": 1, "a": 2})
    assert json.loads(job.payload_json) == {"b": 1, "a": 2}
    assert job.payload_json == '{"b":1,"a":2}'


async def test_unicode_and_lone_surrogates_round_trip(env: Env) -> None:
    s = env.state()
    payload = {"clé": "😀 \u00e9", "lone": "\ud800"}
    await s.enqueue([NewJob.build("u", "tâche", payload, priority=L)])
    (c,) = (await s.finish_and_claim("n", [], 1, 30)).claimed
    assert c.job.payload == payload
    assert c.job.task == "tâche"
    err = "ValueError: bad \ud800 é"
    fc = await s.finish_and_claim("n", [Outcome.failed("u", c.fence, err, "tb \udcff")], 0, 30)
    assert fc.results == ["ok"]
    got = await s.get("u")
    assert got is not None
    assert got.job.error == "ValueError: bad \\ud800 é"
    assert got.job.traceback == "tb \\udcff"
    with pytest.raises(InvalidJob, match="task"):
        NewJob.build("v", "t\ud800", None)


async def test_a_malformed_batch_changes_nothing(env: Env) -> None:
    s = env.state()
    await s.enqueue([new("a", H), new("b", H)])
    held = {c.job.id: c.fence for c in (await s.finish_and_claim("n", [], 2, 30)).claimed}
    with pytest.raises(ValueError, match="unknown kind"):
        await s.finish_and_claim("n", [Outcome("a", held["a"], "exploded")], 0, 30)  # type: ignore[arg-type]
    # The script checks the whole batch before writing: a bad second outcome leaves the
    # first one unapplied.
    bad = json.dumps([["a", str(held["a"]), "completed", "null", "", "", ""],
                      ["b", str(held["b"]), "retry", "soon", "", "", ""]])
    with pytest.raises(coredis.exceptions.ResponseError, match="retry delay"):
        await s.run_script("finish_and_claim", ["", 100, 1000, "n", 1000, 0, 10, 3, 1, bad])
    assert (await s.get("a")).job.status is JobStatus.PROCESSING  # type: ignore[union-attr]
    assert await env.admin.zcard(env.key("leases")) == 2


def _start_redis(port: int, directory: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "yes", "--appendfsync", "always", "--dir", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


# coredis 6.9.0 leaves the memory streams of a connection that never connected unclosed:
# refused connections here are expected, and so is their ResourceWarning.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_script_cache_flushed_and_server_restarted(tmp_path: Path) -> None:
    """A private redis-server on another loopback port: the scripts are loaded again
    after SCRIPT FLUSH (as after a failover), and after a restart the next call
    reconnects and finds the state Redis kept (AOF)."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    server = _start_redis(port, tmp_path)
    try:
        async with connect(url, connect_timeout=1.0) as client:
            s = RedisState(client, unique("q"))

            async def up() -> bool:
                try:
                    await client.ping()
                except Exception:
                    return False
                return True

            await poll(up, timeout=10)
            await s.enqueue([new("a", H), new("b", M)])
            async with coredis.Redis.from_url(url, decode_responses=True) as raw:
                await raw.script_flush()
            assert (await s.counts()).queued == (1, 1, 0)

            server.kill()
            server.wait()
            from trioqueue.testing import RedisUnavailable

            with pytest.raises(RedisUnavailable):
                await s.counts()
            server = _start_redis(port, tmp_path)
            await poll(up, timeout=10)
            (c,) = (await s.finish_and_claim("n", [], 1, 30)).claimed
            assert c.job.id == "a"
            assert (await s.counts()).queued == (0, 1, 0)
        with warnings.catch_warnings():  # collected here, under this test's filter
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
    finally:
        server.kill()
        server.wait()


async def test_a_node_parks_the_jobs_of_tasks_it_lacks_and_takes_the_rest(env: Env) -> None:
    s = env.state()
    await s.enqueue([NewJob.build("x1", "other", None, priority=H),
                     NewJob.build("x2", "other", None, priority=H),
                     NewJob.build("y", "mine", None, priority=H),
                     NewJob.build("z", "mine", None, priority=M)])
    fc = await s.finish_and_claim("a", [], 3, 30, tasks={"mine"})
    # "a" cannot run "other": x1 and x2 are parked, in order, and "a" takes what is behind.
    assert [c.job.id for c in fc.claimed] == ["y", "z"]
    assert fc.parked == ["other"]
    assert await env.admin.lrange(env.key("ready:high"), 0, -1) == []
    assert await env.admin.lrange(env.key("park:1:other"), 0, -1) == ["x1", "x2"]
    assert await env.admin.smembers(env.key("parked")) == {"1:other"}
    # Still queued, in the counts, the room and the list.
    assert (await s.counts()).queued == (2, 0, 0)
    jobs, _ = await s.list_jobs(status=JobStatus.QUEUED)
    assert [j.id for j in jobs] == ["x2", "x1"]
    assert (await s.list_jobs(status=JobStatus.QUEUED, task="mine"))[0] == []
    assert [j.id for j in (await s.list_jobs(task="other"))[0]] == ["x2", "x1"]
    # Another call of "a" finds nothing it can run.
    assert (await s.finish_and_claim("a", [], 3, 30, tasks={"mine"})).claimed == []
    # A node that has the task takes them, oldest first, before newer ready jobs.
    await s.enqueue([NewJob.build("w", "other", None, priority=H)])
    fc = await s.finish_and_claim("b", [], 2, 30, tasks={"mine", "other"})
    assert [c.job.id for c in fc.claimed] == ["x1", "x2"]
    assert await env.admin.exists([env.key("park:1:other")]) == 0
    assert await env.admin.smembers(env.key("parked")) == set()
    fc = await s.finish_and_claim("b", [], 2, 30, tasks={"mine", "other"})
    assert [c.job.id for c in fc.claimed] == ["w"]
    assert (await s.get("x1")).job.attempts == 1  # type: ignore[union-attr]


async def test_a_claim_parks_at_most_128_jobs_and_leaves_wake_tokens_for_the_rest(
    env: Env,
) -> None:
    """A long run of jobs a node cannot take is moved a bounded part per call (one
    script call holds Redis), and the call leaves wake tokens so the node comes back."""
    s = env.state()
    await s.enqueue([NewJob.build(f"x{i:03d}", "other", None) for i in range(300)])
    await s.enqueue([NewJob.build("y", "mine", None)])
    await env.admin.delete([env.key("wake")])
    for parked in (128, 256):
        assert (await s.finish_and_claim("a", [], 1, 30, tasks={"mine"})).claimed == []
        assert await env.admin.llen(env.key("park:2:other")) == parked
        assert await env.admin.llen(env.key("wake")) == 64
    fc = await s.finish_and_claim("a", [], 1, 30, tasks={"mine"})
    assert [c.job.id for c in fc.claimed] == ["y"]
    assert await env.admin.lrange(env.key("park:2:other"), 0, -1) == [
        f"x{i:03d}" for i in range(300)]
    assert (await s.counts()).queued == (0, 300, 0)


async def test_parked_jobs_count_against_the_capacity(env: Env) -> None:
    s = env.state(capacity=2)
    await s.enqueue([NewJob.build("x", "other", None), NewJob.build("f", "mine", None)])
    fc = await s.finish_and_claim("a", [], 1, 30, tasks={"mine"})
    assert [c.job.id for c in fc.claimed] == ["f"]  # x parked on the way
    await s.finish_and_claim("a", [Outcome.failed("f", fc.claimed[0].fence, "E")], 0, 30)
    (adm,) = await s.enqueue([NewJob.build("y", "mine", None)])
    assert adm.code is Admission.ACCEPTED  # x and y: the priority is full
    (adm,) = await s.enqueue([NewJob.build("z", "mine", None)])
    assert adm.code is Admission.FULL
    with pytest.raises(QueueFull):
        await s.retry("f")


async def test_a_parked_job_can_be_cancelled_and_its_list_goes(env: Env) -> None:
    s = env.state()
    await s.enqueue([NewJob.build("x", "other", None, priority=L)])
    assert (await s.finish_and_claim("a", [], 1, 30, tasks={"mine"})).claimed == []
    assert await env.admin.smembers(env.key("parked")) == {"3:other"}
    code, got = await s.cancel("x")
    assert (code, got.job.status) == ("cancelled", JobStatus.CANCELLED)
    assert await env.admin.smembers(env.key("parked")) == set()
    assert await env.admin.exists([env.key("park:3:other")]) == 0
    assert (await s.counts()).queued == (0, 0, 0)
    assert (await s.finish_and_claim("b", [], 1, 30, tasks={"other"})).claimed == []


async def test_events_are_written_only_while_some_node_reads_them(env: Env) -> None:
    """No script writes an event while no node has said it reads them (``read_events``)
    or while every such word has lapsed; the event numbers count on all the same, so the
    numbers in replies still order them.  One reader of several leaving keeps them
    written; ``remove_node`` withdraws a node's word too."""
    s = env.state()
    assert await s.stop_reading_events("test")  # the fixture's own reader
    assert not await s.stop_reading_events("test")

    async def seq() -> int:
        return int(await env.admin.hget(env.key("stats"), "seq") or 0)

    await s.enqueue([new("a")])
    assert await events(env) == []
    assert await seq() == 1
    await s.read_events("n1", 0.2)  # Redis' clock: lapses in 200 ms
    await s.enqueue([new("b")])
    await trio.sleep(0.3)
    await s.enqueue([new("c")])
    await s.read_events("n1", 60)
    await s.read_events("n2", 60)
    assert await s.stop_reading_events("n1")
    await s.enqueue([new("d")])
    await s.remove_node("n2")
    await s.enqueue([new("e")])
    assert [(e["job_id"], e["seq"]) for e in await events(env)] == [("b", "2"), ("d", "4")]
    assert await seq() == 5
    assert await env.admin.zcard(env.key("readers")) == 0


async def test_only_the_event_types_some_node_reads_are_written(env: Env) -> None:
    """A reader names the types it reads (``read_events(types=...)``, replacing what it
    named before); the scripts write the union of the live readers' types, and count the
    rest in ``seq`` all the same."""
    s = env.state()
    await s.stop_reading_events("test")
    await s.read_events("n1", 60, types={"completed"})
    await s.read_events("n2", 60, types=["failed", "cancelled"])
    await s.enqueue([new("a"), new("b", max_retries=0)])
    fc = await s.finish_and_claim("node-a", [], 4, lease=30)
    assert len(fc.claimed) == 2
    done = [Outcome.completed("a", 1, None), Outcome.failed("b", 1, "boom")]
    await s.finish_and_claim("node-a", done, 4, lease=30)
    assert [(e["type"], e["job_id"], e["seq"]) for e in await events(env)] == [
        ("completed", "a", "5"), ("failed", "b", "6")]
    await s.read_events("n2", 60, types=())  # n2 reads nothing now; n1 still completions
    await s.enqueue([new("c")])
    await s.read_events("n1", 60)  # every type
    await s.enqueue([new("d")])
    assert [e["job_id"] for e in await events(env)] == ["a", "b", "d"]
    with pytest.raises(ValueError, match="types: expected event type names"):
        await s.read_events("n1", 60, types=["completed,failed"])


async def test_get_many_answers_each_id_in_order(env: Env) -> None:
    """One script call per 1,000 ids (``GET_MANY``), in order, ``None`` for an unknown id
    and for an id no job can have."""
    s = env.state(capacity=2000)
    await s.enqueue([new(f"j{i}") for i in range(1000)])
    await s.enqueue([new("j1000")])
    got = await s.get_many(["j5", "nope", "j0"])
    assert [None if g is None else g.job.id for g in got] == ["j5", None, "j0"]
    assert [g.job.id for g in await s.get_many(["j7"]) if g is not None] == ["j7"]
    ids = [f"j{i}" for i in range(1001)][::-1]
    assert [g.job.id for g in await s.get_many(ids) if g is not None] == ids
    assert await s.get_many([]) == []
    got = await s.get_many(["j1", "not an id!", "", "j2"])
    assert [None if g is None else g.job.id for g in got] == ["j1", None, None, "j2"]


async def test_find_answers_ids_and_counts_in_one_call(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``find``: what ``get_many`` and ``counts`` answer, in one script call for up to
    ``GET_MANY`` ids (more take ``get_many`` calls for the ones before the last
    ``GET_MANY``), the counts as of the last ids read."""
    s = env.state(capacity=100)
    await s.enqueue([new(f"j{i}") for i in range(5)])
    await s.heartbeat("n1", {"workers": 4})
    calls: list[str] = []
    run = s.run_script

    async def counted(name: str, args: Any) -> Any:
        calls.append(name)
        return await run(name, args)

    monkeypatch.setattr(s, "run_script", counted)
    got, counts = await s.find(["j3", "nope", "j0"], node_age=30)
    assert calls == ["find"]
    assert [None if g is None else g.job.id for g in got] == ["j3", None, "j0"]
    assert got[0] is not None
    assert got[0].job.status is JobStatus.QUEUED
    assert counts == await s.counts(node_age=30)
    assert counts.queued == (5, 0, 0)
    assert counts.total("enqueued") == 5
    assert counts.nodes == {"n1": {"workers": 4}}
    assert (await s.find(["j1"]))[1].nodes == {}  # no node age: no nodes, as counts()
    calls.clear()
    monkeypatch.setattr("trioqueue._redis._state.GET_MANY", 2)
    ids = [f"j{i}" for i in range(5)][::-1]
    got, counts = await s.find(ids)
    assert [g.job.id for g in got if g is not None] == ids
    assert calls == ["get", "get", "find"]  # get_many: 2 ids, then 1; find: the last 2
    assert counts.queued == (5, 0, 0)
    got, _ = await s.find(["j1", "not an id!", "*", "j2"])  # ids no job can have: None
    assert [None if g is None else g.job.id for g in got] == ["j1", None, None, "j2"]
