"""Property test of the store's row format: whatever state a job is in, what the
persistence task writes is what is read back (JSON payloads and results, unicode text,
floats, None)."""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import trioqueue
from trioqueue import JobStatus
from trioqueue.testing import (
    EventKind,
    IdGenerator,
    JobRecord,
    Persistence,
    SqliteStore,
    generated_shape,
    sqlite_store,
)

from .strategies import json_values

registry = trioqueue.TaskRegistry()


@registry.task
async def echo(job: trioqueue.Job) -> None:  # pragma: no cover - never run here
    return None


times = st.none() | st.floats(min_value=0, max_value=4e9, allow_nan=False)
# error and traceback are never empty when set ("Type: message", a formatted traceback):
# the writer sends None as "" for them (cheaper to bind), so "" would come back None.
texts = st.none() | st.text(min_size=1, max_size=200)
ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,40}", fullmatch=True)


@st.composite
def records(draw: st.DrawFn) -> JobRecord:
    payload = draw(json_values)
    rec = JobRecord.restored(
        draw(ids), "echo", payload, json.dumps(payload), draw(st.integers(0, 2)),
        draw(st.sampled_from(list(JobStatus))), draw(st.integers(0, 1000)),
        draw(st.integers(0, 1000)),
        draw(st.none() | st.floats(min_value=0.001, max_value=1e6)),
        draw(st.floats(min_value=0, max_value=4e9)), draw(times), draw(times), draw(times),
        draw(json_values), draw(texts), draw(texts),
    )
    rec.progress = draw(st.none() | st.fixed_dictionaries({
        "fraction": st.floats(min_value=0, max_value=1), "note": texts}))
    return rec


@settings(max_examples=60, deadline=None)
@given(st.lists(records(), min_size=1, max_size=30, unique_by=lambda r: r.id))
def test_what_is_written_is_read_back(recs: list[JobRecord]) -> None:
    config = trioqueue.QueueConfig()
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore.open(Path(tmp) / "q.db")
        closed = False
        try:

            async def write_and_read() -> None:  # the way the persistence task writes
                nonlocal closed
                persistence = Persistence(config, registry, store)
                async with trio.open_nursery() as nursery:
                    await nursery.start(persistence.run, time.time)
                    for rec in recs:
                        persistence.changed(EventKind.ENQUEUED, rec)
                    await persistence.wait_committed()
                    for rec in recs:
                        row = await persistence.read(store.get, rec.id)
                        assert row is not None
                        back = persistence.record(row)
                        assert back.snapshot() == rec.snapshot()
                        assert back.payload_json == rec.payload_json
                    await persistence.close()
                    closed = True

            trio.run(write_and_read)
        finally:
            if not closed:
                store.close()


def test_a_flat_value_list_must_hold_whole_rows() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore.open(Path(tmp) / "q.db")
        try:
            row = ("a1", "echo", "null", 1, "queued", 0, 3, None, 1.0, None, None, None, None,
                   None, None, None)
            with pytest.raises(ValueError, match="31 values is not a whole number of 16-col"):
                store.write_values([*row, *row[:-1]])
            assert store.get("a1") is None  # nothing of it was written
            store.write_values([*row])
            assert store.get("a1") is not None
        finally:
            store.close()


# A column whose value is the same in every row of a statement is bound once: records
# drawn from a few values each, so that columns are now shared, now not, in batches that
# fill a statement's size exactly, pad it, or take more than one statement.
few_times = st.sampled_from([None, 1.5, 1e9])
few_texts = st.sampled_from([None, "boom", "Traceback: x"])
few_json = st.sampled_from([None, 1, "x", [1, 2]])


@st.composite
def similar_records(draw: st.DrawFn, job_id: str) -> JobRecord:
    payload = draw(few_json)
    rec = JobRecord.restored(
        job_id, "echo", payload, json.dumps(payload), draw(st.sampled_from([0, 1])),
        draw(st.sampled_from([JobStatus.QUEUED, JobStatus.COMPLETED])),
        draw(st.sampled_from([0, 1])), 3, draw(st.sampled_from([None, 2.0])),
        draw(st.sampled_from([1.0, 2.0])), draw(few_times), draw(few_times),
        draw(few_times), draw(few_json), draw(few_texts), draw(few_texts),
    )
    rec.progress = draw(st.sampled_from([None, {"fraction": 0.5, "note": None}]))
    return rec


@settings(max_examples=20, deadline=None)
@given(st.data(), st.sampled_from([1, 3, 17, 32, 33, 100]), st.randoms(use_true_random=False))
def test_rows_with_shared_columns_are_read_back(data: st.DataObject, n: int,
                                                rnd: random.Random) -> None:
    distinct = data.draw(st.integers(1, 3))  # at most this many distinct rows
    pool = [data.draw(similar_records(f"tmpl{i}")) for i in range(distinct)]
    picks = [rnd.randrange(distinct) for _ in range(n)]
    recs = []
    for i, k in enumerate(picks):
        rec = pool[k].snapshot()
        recs.append(JobRecord.restored(
            f"j{i}", rec.task, rec.payload, json.dumps(rec.payload), int(rec.priority),
            rec.status, rec.attempts, rec.max_retries, rec.timeout, rec.created_at,
            rec.scheduled_for, rec.started_at, rec.finished_at, rec.result, rec.error,
            rec.traceback,
        ))
        recs[-1].progress = pool[k].progress
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore.open(Path(tmp) / "q.db")
        store.rows_per_statement = 32  # 33 rows and more: a statement per 32
        try:
            persistence = Persistence(trioqueue.QueueConfig(), registry, store)

            async def write() -> None:
                await persistence.write_batch()

            for rec in recs:
                persistence.changed(EventKind.ENQUEUED, rec)
            trio.run(write)
            rows = {row[0]: row for row in store.newest(None, n + 1)}
            assert len(rows) == n
            for rec in recs:
                back = persistence.record(rows[rec.id])
                assert back.snapshot() == rec.snapshot()
                assert back.progress == rec.progress
        finally:
            store.close()



def test_large_statements_are_capped_and_rows_still_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``MAX_LARGE_STATEMENTS`` distinct large statements, a write of another size
    or shape goes in statements of ``LARGE_STATEMENT`` rows, in one transaction, and
    every row is written as it was."""
    monkeypatch.setattr(sqlite_store, "LARGE_STATEMENT", 4)
    monkeypatch.setattr(sqlite_store, "MAX_LARGE_STATEMENTS", 1)
    store = SqliteStore.open(tmp_path / "q.db")
    store.rows_per_statement = 16
    try:
        persistence = Persistence(trioqueue.QueueConfig(), registry, store)

        def batch(prefix: str, n: int, own_results: bool) -> list[JobRecord]:
            return [JobRecord.restored(
                f"{prefix}{i:03}", "echo", i, json.dumps(i), 1, JobStatus.COMPLETED, 1, 3,
                None, 1.0 + i, None, 2.0 + i, 3.0 + i, f"r{i}" if own_results else "done",
                None, None) for i in range(n)]

        written: list[JobRecord] = []
        # A shape is which columns are the same in every row: results shared, or not.
        for prefix, n, own_results in (("a", 10, False),  # a 16-row statement: large
                                       ("b", 10, True),  # another shape: capped
                                       ("c", 16, False),  # a's size and shape again
                                       ("d", 3, True)):  # small
            recs = batch(prefix, n, own_results)
            for rec in recs:
                persistence.changed(EventKind.ENQUEUED, rec)
            trio.run(persistence.write_batch)
            assert store.large_statements == 1
            written += recs
        rows = {row[0]: row for row in store.newest(None, 100)}
        assert len(rows) == len(written)
        for rec in written:
            assert persistence.record(rows[rec.id]).snapshot() == rec.snapshot()
    finally:
        store.close()



_ID_ALPHABET = "abcdef0123456789ABCXYZ_.:@-7"
_ids = st.text(_ID_ALPHABET, min_size=1, max_size=40).filter(lambda s: s[0].isalnum())
_shaped = st.builds(lambda a, b: a + "7" + b,  # 32 or 33 characters, '7' at index 12
                    st.text(_ID_ALPHABET, min_size=12, max_size=12).filter(
                        lambda s: s[0].isalnum()),
                    st.text(_ID_ALPHABET, min_size=19, max_size=20))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(_ids, _shaped,
                          st.integers(0, 2**48 - 1).map(lambda ms: IdGenerator().new(ms))),
                min_size=1, max_size=40, unique=True))
def test_the_store_reads_back_the_ids_of_other_shapes_than_the_generated(
    ids: list[str],
) -> None:
    """What recovery keeps in memory (:meth:`SqliteStore.given_ids`, in SQL) and what the
    queue keeps as jobs leave memory (:func:`generated_shape`, in Python) are the same
    ids."""
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore.open(Path(tmp) / "q.db")
        try:
            store.write([(i, "echo", "null", 1, "completed", 1, 0, None, 1.0, None, 1.0,
                          2.0, None, None, None, None) for i in ids])
            assert sorted(store.given_ids()) == sorted(
                i for i in ids if not generated_shape(i))
        finally:
            store.close()


@given(st.integers(0, 2**48 - 2), st.integers(0, 2**32), st.integers(1, 5000))
def test_every_generated_id_has_the_generated_shape(ms: int, seed: int, n: int) -> None:
    ids = IdGenerator(seed=seed)
    assert all(generated_shape(ids.new(ms)) for _ in range(n))
