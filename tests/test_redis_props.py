"""Random sequences of operations on the Redis state keep its invariants.

Against the real Redis: each example runs in its own ``trio.run`` on a queue of its own.
After every operation the whole queue is read back and checked:

* every job is in exactly one place, the one its status says: a ready list or the parked
  list of its priority and task (once), ``sched``, ``leases``, or (finished) its
  ``idx:<status>`` with a TTL; ``parked`` names exactly the parked lists that hold jobs,
  and only jobs of a task node "a" lacks (it runs "t"; "b" runs any) are parked;
* enqueue and promote never push a priority's queued jobs past the capacity (a reaped or
  released job may go over: it was admitted already);
* outcomes are applied only under the current fence and owner, else refused and nothing
  changes; ``attempts <= fence``; the totals agree with what was accepted.

The read-backs are pipelined (a few round trips per check, not one per key and job), and
the ``park:*`` keys are listed with a ``SCAN`` of a large ``COUNT`` (the shared Redis may
hold many other keys; ``COUNT`` 10, the default, took a round trip per ten of them).
"""

from __future__ import annotations

import contextlib
from typing import Any

import coredis
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.redis_util import REDIS_URL, admin, delete_queue, unique
from trioqueue import InvalidTransition, JobNotFound, QueueFull
from trioqueue.testing import Admission, NewJob, Outcome, RedisState, connect

CAPACITY = 3
SCAN_COUNT = 10_000
"""``SCAN``'s ``COUNT`` for the ``park:*`` keys: one round trip unless Redis holds more."""
LABELS = ("high", "medium", "low")
TARGET = {"completed": "completed", "failed": "failed", "retry": "scheduled",
          "cancelled": "cancelled", "released": "queued", "unstarted": "queued"}

enqueue_op = st.tuples(st.just("enqueue"), st.sampled_from([0, 1, 2]), st.booleans(),
                       st.integers(1, 3), st.booleans(), st.sampled_from(["t", "u"]))
claim_op = st.tuples(st.just("claim"), st.sampled_from(["a", "b"]), st.integers(0, 4),
                     st.booleans())
finish_op = st.tuples(st.just("finish"), st.integers(0, 20), st.sampled_from(sorted(TARGET)))
# An outcome under a fence the node held once (a late ack after a reap, a re-send).
stale_op = st.tuples(st.just("stale"), st.integers(0, 40), st.sampled_from(sorted(TARGET)))
ops_strategy = st.lists(
    st.one_of(
        enqueue_op, claim_op, claim_op, finish_op, finish_op, stale_op, stale_op,
        st.just(("reap",)), st.just(("reap",)), st.just(("promote",)),
        st.tuples(st.just("cancel"), st.integers(0, 30)),
        st.tuples(st.just("retry"), st.integers(0, 30)),
        st.tuples(st.just("renew"), st.sampled_from(["a", "b"])),
    ),
    min_size=5,
    max_size=40,
)
# Every example starts with two jobs in each priority, so that claims find work: the
# first of a task node "a" lacks, so that its claims park.
PROLOGUE = [("enqueue", p, False, 1, False, task) for p in (0, 1, 2) for task in "ut"]
TASKS = {"a": {"t"}, "b": None}  # what each node runs (None: any task)


class Model:
    def __init__(self, state: RedisState, r: coredis.Redis[str]) -> None:
        self.s = state
        self.r = r
        self.ids: list[str] = []
        self.held: dict[str, tuple[str, int]] = {}
        self.old: list[tuple[str, str, int]] = []
        self.n = 0

    def key(self, suffix: str) -> str:
        return self.s.key(suffix)

    async def rec(self, job_id: str) -> dict[str, str]:
        return dict(await self.r.hgetall(self.key(f"job:{job_id}")))

    async def lens(self) -> list[int]:
        """Queued jobs per priority: its ready list and its parked lists."""
        async with self.r.pipeline(transaction=False) as pipe:
            ready = [pipe.llen(self.key(f"ready:{label}")) for label in LABELS]
            parked = pipe.smembers(self.key("parked"))
        n = [await length for length in ready]
        members = await parked
        if members:
            async with self.r.pipeline(transaction=False) as pipe:
                lengths = [(m, pipe.llen(self.key(f"park:{m}"))) for m in members]
            for member, length in lengths:
                n[int(member[0]) - 1] += await length
        return n

    def expected(self, rec: dict[str, str], node: str, fence: int, kind: str) -> str:
        if rec.get("fence") != str(fence) or rec.get("owner") != node:
            return "stale"
        if rec.get("status") != "processing":
            return "ok" if rec.get("status") == TARGET[kind] else "stale"
        if kind in ("retry", "released", "unstarted") and rec.get("cancel_requested"):
            return "cancelled"
        return "ok"

    @staticmethod
    def outcome(kind: str, job_id: str, fence: int) -> Outcome:
        return {
            "completed": Outcome.completed(job_id, fence, "r"),
            "failed": Outcome.failed(job_id, fence, "E: x"),
            "retry": Outcome.retry(job_id, fence, 0.0, "E: x"),
            "cancelled": Outcome.cancelled(job_id, fence),
            "released": Outcome.released(job_id, fence),
            "unstarted": Outcome.unstarted(job_id, fence),
        }[kind]

    async def apply(self, op: tuple[Any, ...]) -> None:
        s = self.s
        kind = op[0]
        if kind == "enqueue":
            _, prio, delayed, k, whole, task = op
            before = await self.lens()
            jobs = []
            for _ in range(k):
                self.n += 1
                jobs.append(NewJob.build(f"j{self.n}", task, self.n, priority=LABELS[prio],
                                         max_retries=1, delay=0.001 if delayed else 0))
            res = await s.enqueue(jobs, whole=whole)
            if whole:
                assert len({a.code for a in res}) == 1
            self.ids += [j.id for j, a in zip(jobs, res, strict=True)
                         if a.code is Admission.ACCEPTED]
            after = await self.lens()
            for b, a in zip(before, after, strict=True):
                assert a <= max(b, CAPACITY)
        elif kind == "claim":
            _, node, n, short = op
            fc = await s.finish_and_claim(node, [], n, lease=0.001 if short else 30,
                                          tasks=TASKS[node])
            assert len(fc.claimed) <= n
            for c in fc.claimed:
                assert c.owner == node
                assert TASKS[node] is None or c.job.task in TASKS[node]
                assert c.job.status.value == "processing"
                # Never past its max_retries (a released last attempt fails instead).
                assert c.job.attempts <= c.job.max_retries + 1, c.job
                self.held[c.job.id] = (node, c.fence)
                self.old.append((c.job.id, node, c.fence))
        elif kind == "finish" and self.held:
            _, i, outcome = op
            job_id = sorted(self.held)[i % len(self.held)]
            node, fence = self.held.pop(job_id)
            before = await self.rec(job_id)
            expect = self.expected(before, node, fence, outcome)
            o = self.outcome(outcome, job_id, fence)
            (got,) = (await s.finish_and_claim(node, [o], 0, 30)).results
            assert got == expect, (job_id, before, outcome)
            if got == "stale":
                assert await self.rec(job_id) == before
            elif outcome in ("released", "unstarted") and got == "ok":
                after = await self.rec(job_id)
                uncounted = 1 if outcome == "unstarted" else 0
                assert (after["status"], int(after["attempts"])) == (
                    "queued", int(before["attempts"]) - uncounted), (before, after)
        elif kind == "stale" and self.old:
            job_id, node, fence = self.old[op[1] % len(self.old)]
            before = await self.rec(job_id)
            expect = self.expected(before, node, fence, op[2])
            (got,) = (await s.finish_and_claim(
                node, [self.outcome(op[2], job_id, fence)], 0, 30)).results
            assert got == expect, (job_id, node, fence, before, op[2])
            if expect == "stale" or before.get("status") != "processing":
                assert await self.rec(job_id) == before  # refused, or a no-op re-send
            elif self.held.get(job_id) == (node, fence):
                del self.held[job_id]
        elif kind == "cancel" and self.ids:
            job_id = self.ids[op[1] % len(self.ids)]
            with contextlib.suppress(InvalidTransition, JobNotFound):  # finished, or gone
                await s.cancel(job_id)
        elif kind == "retry" and self.ids:
            job_id = self.ids[op[1] % len(self.ids)]
            before = await self.lens()
            with contextlib.suppress(InvalidTransition, JobNotFound, QueueFull):
                await s.retry(job_id)
            for b, a in zip(before, await self.lens(), strict=True):
                assert a <= max(b, CAPACITY)
        elif kind == "renew":
            node = op[1]
            mine = [(i, f) for i, (n, f) in self.held.items() if n == node]
            renewal = await s.renew(node, mine, 30)
            for job_id in renewal.lost:
                rec = await self.rec(job_id)
                assert not (rec.get("status") == "processing" and rec.get("owner") == node
                            and rec.get("fence") == str(self.held[job_id][1]))
        elif kind == "promote":
            # Due jobs enter their lists full or not (accepted jobs are never refused):
            # each list grows by the jobs moved into it, and only promote grows one past
            # the capacity (enqueue and retry above never do).
            before = await self.lens()
            promoted = await s.promote()
            after = await self.lens()
            assert all(a >= b for b, a in zip(before, after, strict=True))
            assert sum(after) - sum(before) == promoted.promoted
        elif kind == "reap":
            await s.reap()

    async def check(self) -> None:
        r = self.r
        ids = list(self.ids)
        # Round trip 1: the lists, the sets and every job's record.
        async with r.pipeline(transaction=False) as pipe:
            ready_q = {label: pipe.lrange(self.key(f"ready:{label}"), 0, -1)
                       for label in LABELS}
            members_q = pipe.smembers(self.key("parked"))
            sched_q = pipe.zrange(self.key("sched"), 0, -1)
            leases_q = pipe.zrange(self.key("leases"), 0, -1)
            recs_q = [pipe.hgetall(self.key(f"job:{job_id}")) for job_id in ids]
            scan_q = pipe.scan(0, match=self.key("park:*"), count=SCAN_COUNT)
        only_ready = {label: list(await q) for label, q in ready_q.items()}
        members = await members_q
        sched = set(await sched_q)
        leases = set(await leases_q)
        recs = {job_id: dict(await q) for job_id, q in zip(ids, recs_q, strict=True)}
        cursor, keys = await scan_q
        park_keys = set(keys)
        while cursor:  # a Redis holding more than SCAN_COUNT keys
            cursor, keys = await r.scan(cursor, match=self.key("park:*"), count=SCAN_COUNT)
            park_keys |= set(keys)
        assert park_keys == {self.key(f"park:{m}") for m in members}
        # Round trip 2: what those name (the parked lists; where finished jobs are kept).
        finished = [job_id for job_id, rec in recs.items()
                    if rec["status"] not in ("queued", "scheduled", "processing")]
        parked_q: dict[str, Any] = {}
        kept_q: dict[str, tuple[Any, ...]] = {}
        if members or finished:
            async with r.pipeline(transaction=False) as pipe:
                parked_q = {m: pipe.lrange(self.key(f"park:{m}"), 0, -1) for m in members}
                for job_id in finished:
                    status = recs[job_id]["status"]
                    kept_q[job_id] = (
                        pipe.zscore(self.key(f"idx:{status}"), job_id),
                        pipe.zscore(self.key("idx:all"), job_id),
                        pipe.zscore(self.key(f"ended:{status}"), job_id),
                        pipe.pttl(self.key(f"job:{job_id}")),
                    )
        parked = {m: list(await q) for m, q in parked_q.items()}
        kept = {job_id: [await q for q in qs] for job_id, qs in kept_q.items()}
        ready = {label: list(ids_) for label, ids_ in only_ready.items()}
        for m, parked_ids in parked.items():
            assert parked_ids, m
            assert m.split(":", 1)[1] not in (TASKS["a"] or ()), (m, parked_ids)
            ready[LABELS[int(m[0]) - 1]] += parked_ids
        in_ready = [i for ids_ in ready.values() for i in ids_]
        assert len(in_ready) == len(set(in_ready)), ready
        delayed = [0, 0, 0]
        for job_id in ids:
            rec = recs[job_id]
            status = rec["status"]
            where = [job_id in in_ready, job_id in sched, job_id in leases]
            assert int(rec["attempts"]) <= int(rec["fence"]), rec
            if status == "queued":
                assert where == [True, False, False], (job_id, rec, where)
                assert job_id in ready[LABELS[int(rec["prio"])]]
                if job_id not in only_ready[LABELS[int(rec["prio"])]]:
                    assert job_id in parked[f"{int(rec['prio']) + 1}:{rec['task']}"]
            elif status == "scheduled":
                assert where == [False, True, False], (job_id, rec, where)
            elif status == "processing":
                assert where == [False, False, True], (job_id, rec, where)
            else:
                assert where == [False, False, False], (job_id, rec, where)
                in_status, in_all, ended, pttl = kept[job_id]
                # Listed by creation (its idx:all score); reaped by finish time.
                assert in_status == in_all, (job_id, status)
                assert ended is not None
                assert pttl > 0
            if rec.get("dslot"):
                assert status == "scheduled"
                delayed[int(rec["prio"])] += 1
        assert set(in_ready) | sched | leases <= set(ids)
        counts = await self.s.counts()
        assert list(counts.queued) == [len(ids_) for ids_ in ready.values()]
        assert counts.delayed == tuple(delayed)
        assert counts.total("enqueued") == len(ids)
        assert counts.processing == len(leases)
        assert counts.scheduled == len(sched)


async def run_example(ops: list[tuple[Any, ...]]) -> None:
    queue = unique("p")
    async with admin() as r, connect(REDIS_URL, client_name=unique("c")) as client:
        try:
            model = Model(RedisState(client, queue, capacity=CAPACITY, result_ttl=60), r)
            for op in PROLOGUE + ops:
                await model.apply(op)
                await model.check()
        finally:
            await delete_queue(r, queue)


@settings(max_examples=40)
@given(ops_strategy)
def test_random_operations_keep_the_invariants(ops: list[tuple[Any, ...]]) -> None:
    trio.run(run_example, ops)
