"""Priority and fairness: one worker, a full backlog, the exact pick order.

The reference below is the documented algorithm (docs/architecture.md, "The fair
picker"): smooth weighted round robin over the priorities that have waiting jobs; each
pick, every priority with work earns its weight, the richest is picked (ties to the more
urgent) and pays back the total weight of those that took part; a priority with no work
takes no part and its credit is cleared.  With one worker the order the handlers start
in is the order of the picks, so it must match the reference job for job.
"""

from __future__ import annotations

from collections import Counter

from trio.testing import MockClock

from trioqueue import Job, JobQueue, Priority

from .conftest import Backend, Harness


def reference_order(
    counts: dict[Priority, int],
    weights: dict[Priority, int],
    arrivals: dict[tuple[Priority, int], tuple[Priority, int]] | None = None,
) -> list[Priority]:
    """The priorities picked, in order, until every backlog is empty.  ``arrivals``:
    when the n-th job of priority p is picked, k jobs of priority q arrive
    (``{(p, n): (q, k)}``)."""
    left = dict(counts)
    credit = dict.fromkeys(Priority, 0)
    order: list[Priority] = []
    arrivals = arrivals or {}
    while any(left.values()):
        contenders = [p for p in Priority if left[p]]
        for p in Priority:
            if p not in contenders:
                credit[p] = 0
        for p in contenders:
            credit[p] += weights[p]
        best = max(contenders, key=lambda p: (credit[p], -p))  # ties: more urgent
        credit[best] -= sum(weights[p] for p in contenders)
        left[best] -= 1
        order.append(best)
        arrival = arrivals.get((best, order.count(best)))
        if arrival is not None:
            left[arrival[0]] += arrival[1]
    return order


def test_the_reference_is_10_3_1_in_every_window_of_14() -> None:
    order = reference_order(dict.fromkeys(Priority, 1000), {Priority.HIGH: 10,
                            Priority.MEDIUM: 3, Priority.LOW: 1})
    assert order[0] is Priority.HIGH
    for start in range(14 * 60):
        assert Counter(order[start : start + 14]) == {
            Priority.HIGH: 10, Priority.MEDIUM: 3, Priority.LOW: 1,
        }


async def fill_behind_one_busy_worker(
    q: JobQueue, h: Harness, counts: dict[Priority, int]
) -> dict[str, tuple[Priority, int]]:
    """Hold the only worker, then queue ``counts`` jobs of each priority, interleaved."""
    await q.enqueue("gated", "hold")
    await h.entered("hold")
    jobs: dict[str, tuple[Priority, int]] = {}
    for i in range(max(counts.values())):
        for p in (Priority.LOW, Priority.MEDIUM, Priority.HIGH):
            if i < counts[p]:
                jobs[(await q.enqueue("echo", [p.label, i], priority=p)).id] = (p, i)
    return jobs


async def test_one_worker_picks_in_exactly_the_10_3_1_order_and_fifo_within_a_priority(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    counts = {Priority.HIGH: 100, Priority.MEDIUM: 40, Priority.LOW: 25}
    async with backend.open(h.registry, workers=1) as q:
        jobs = await fill_behind_one_busy_worker(q, h, counts)
        m = q.metrics()
        assert m.queued == {"high": 100, "medium": 40, "low": 25}
        h.open_gate("hold")
        for job_id in jobs:
            await q.wait(job_id)
    started = h.started("echo")
    assert sorted(started) == sorted(jobs)  # each exactly once
    picks = [jobs[job_id][0] for job_id in started]
    assert picks == reference_order(counts, {Priority.HIGH: 10, Priority.MEDIUM: 3,
                                             Priority.LOW: 1})
    # While all three have work (HIGH runs out after 10 full windows): 10:3:1 exactly.
    for start in range(14 * 9 + 1):
        assert Counter(picks[start : start + 14]) == {
            Priority.HIGH: 10, Priority.MEDIUM: 3, Priority.LOW: 1,
        }, start
    for p in Priority:  # first in, first out within a priority
        assert [jobs[i][1] for i in started if jobs[i][0] is p] == list(range(counts[p]))


async def test_configured_weights_are_followed(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    weights = {Priority.HIGH: 2, Priority.MEDIUM: 2, Priority.LOW: 1}
    counts = {Priority.HIGH: 20, Priority.MEDIUM: 20, Priority.LOW: 20}
    async with backend.open(h.registry, workers=1, fairness={"high": 2, "medium": 2,
                                                             "low": 1}) as q:
        jobs = await fill_behind_one_busy_worker(q, h, counts)
        h.open_gate("hold")
        for job_id in jobs:
            await q.wait(job_id)
    picks = [jobs[job_id][0] for job_id in h.started("echo")]
    assert picks == reference_order(counts, weights)
    assert Counter(picks[:25]) == {Priority.HIGH: 10, Priority.MEDIUM: 10, Priority.LOW: 5}


async def test_a_lone_priority_gets_every_pick_and_a_fresh_burst_starts_with_high(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    async with backend.open(h.registry, workers=1) as q:
        low = await fill_behind_one_busy_worker(q, h, {Priority.HIGH: 0, Priority.MEDIUM: 0,
                                                       Priority.LOW: 5})
        h.open_gate("hold")
        for job_id in low:
            await q.wait(job_id)
        assert h.started("echo") == list(low)
        h.runs.clear()
        # A second burst behind a second blocker: HIGH first, then the reference order
        # (nothing is owed from the LOW-only stretch).
        await q.enqueue("gated", "hold2")
        await h.entered("hold2")
        second: dict[str, Priority] = {}
        for p in (Priority.LOW, Priority.MEDIUM, Priority.HIGH):
            for _ in range(2):
                second[(await q.enqueue("echo", priority=p)).id] = p
        h.open_gate("hold2")
        for job_id in second:
            await q.wait(job_id)
    picks = [second[i] for i in h.started("echo")]
    assert picks == reference_order(dict.fromkeys(Priority, 2), {Priority.HIGH: 10,
                                    Priority.MEDIUM: 3, Priority.LOW: 1})
    assert picks[0] is Priority.HIGH


async def test_a_priority_that_ran_out_banks_no_turns_while_it_has_no_work(
    backend: Backend, clock: MockClock | None, h: Harness
) -> None:
    """MEDIUM runs out while HIGH and LOW still compete, then three MEDIUM jobs arrive
    (the third HIGH job enqueues them): MEDIUM starts again from no credit, neither
    owed turns nor in debt for the time it had no work."""
    order: list[Priority] = []
    arrived: list[str] = []

    @h.registry.task
    async def spawn(job: Job) -> None:
        order.append(job.priority)
        for i in range(3):
            arrived.append(q.enqueue_nowait("note", f"arrived {i}", priority="medium").id)

    @h.registry.task
    async def note(job: Job) -> None:
        order.append(job.priority)

    counts = {Priority.HIGH: 5, Priority.MEDIUM: 1, Priority.LOW: 2}
    async with backend.open(h.registry, workers=1) as q:
        await q.enqueue("gated", "hold")
        await h.entered("hold")
        jobs = [await q.enqueue("spawn" if i == 2 else "note", priority="high")
                for i in range(5)]
        jobs.append(await q.enqueue("note", priority="medium"))
        jobs += [await q.enqueue("note", priority="low") for _ in range(2)]
        h.open_gate("hold")
        for job in jobs:
            await q.wait(job.id)
        assert len(arrived) == 3
        for job_id in arrived:
            await q.wait(job_id)
    expected = reference_order(
        counts, {Priority.HIGH: 10, Priority.MEDIUM: 3, Priority.LOW: 1},
        arrivals={(Priority.HIGH, 3): (Priority.MEDIUM, 3)},
    )
    assert "".join(p.label[0] for p in expected) == "hhmhhhmmlml"
    assert order == expected
