"""The transition table, the one function that applies it, and a check of the source
that nothing else changes a job's status."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import trioqueue
from trioqueue import InvalidTransition, JobStatus
from trioqueue.testing import (
    MOVES,
    TERMINAL,
    TRANSITIONS,
    EventKind,
    JobEvent,
    JobRecord,
    admitted,
    allowed,
    edge,
    move,
    transition,
)


def record(status: JobStatus) -> JobRecord:
    return JobRecord("j1", "t", None, "null", 1, status, 3, None, 1.0, None, None, 0.0)


def test_the_happy_path() -> None:
    rec = record(JobStatus.QUEUED)
    assert move(rec, JobEvent.START) is EventKind.STARTED
    assert rec.status is JobStatus.PROCESSING
    assert move(rec, JobEvent.COMPLETE) is EventKind.COMPLETED
    assert rec.status is JobStatus.COMPLETED


def test_retry_path_and_dead_letter() -> None:
    rec = record(JobStatus.PROCESSING)
    assert move(rec, JobEvent.RETRY_LATER) is EventKind.RETRYING
    assert rec.status is JobStatus.SCHEDULED
    assert move(rec, JobEvent.DUE) is EventKind.ENQUEUED
    assert rec.status is JobStatus.QUEUED
    assert transition(JobStatus.PROCESSING, JobEvent.FAIL_FINAL) is JobStatus.FAILED
    assert transition(JobStatus.FAILED, JobEvent.REQUEUE) is JobStatus.QUEUED


def test_an_invalid_move_names_event_and_state_and_changes_nothing() -> None:
    rec = record(JobStatus.COMPLETED)
    with pytest.raises(InvalidTransition, match="cannot cancel a job that is completed") as info:
        move(rec, JobEvent.CANCEL)
    assert info.value.status is JobStatus.COMPLETED
    assert rec.status is JobStatus.COMPLETED
    with pytest.raises(InvalidTransition, match="cannot start a job that is scheduled"):
        transition(JobStatus.SCHEDULED, JobEvent.START)


def test_edges_are_the_tables_moves() -> None:
    assert edge(JobStatus.QUEUED, JobEvent.START) == (JobStatus.PROCESSING, EventKind.STARTED)
    assert edge(JobStatus.PROCESSING, JobEvent.COMPLETE) == (
        JobStatus.COMPLETED, EventKind.COMPLETED,
    )
    with pytest.raises(InvalidTransition):
        edge(JobStatus.COMPLETED, JobEvent.START)


def test_terminal_states_leave_only_by_requeue_and_completed_never() -> None:
    for (status, event), _ in TRANSITIONS.items():
        if status in TERMINAL:
            assert event is JobEvent.REQUEUE
            assert status is not JobStatus.COMPLETED


def test_only_processing_jobs_finish_but_recovery_gives_up_on_queued_ones() -> None:
    for (status, event), after in TRANSITIONS.items():
        if after is JobStatus.COMPLETED:
            assert status is JobStatus.PROCESSING
        if after is JobStatus.FAILED:
            assert status is JobStatus.PROCESSING or event is JobEvent.GIVE_UP


def test_each_move_names_the_event_subscribers_see() -> None:
    for (_, event), (after, kind) in MOVES.items():
        assert kind in EventKind
        if after in TERMINAL:
            assert kind.value == after.value  # completed, failed, cancelled
        if event in (JobEvent.REQUEUE, JobEvent.INTERRUPT):
            assert kind is EventKind.REQUEUED
    assert admitted(JobStatus.QUEUED) is EventKind.ENQUEUED
    assert admitted(JobStatus.SCHEDULED) is EventKind.SCHEDULED


@given(st.sampled_from(list(JobStatus)), st.lists(st.sampled_from(list(JobEvent)), max_size=50))
def test_random_event_sequences_follow_the_table(start: JobStatus, events: list[JobEvent]) -> None:
    rec = record(start)
    for event in events:
        before = rec.status
        if allowed(before, event):
            kind = move(rec, event)
            assert (rec.status, kind) == MOVES[(before, event)]
        else:
            with pytest.raises(InvalidTransition):
                move(rec, event)
            assert rec.status is before


# The status of a record is set in one function, and applied in place at the two hot
# edges of the local backend, each looked up from the table (``edge``) at import.
ALLOWED_STATUS_WRITES = {
    ("_state.py", "move"): 1,
    ("_local/ready.py", "take"): 1,
    ("_local/table.py", "finish"): 1,
    ("server/_lean.py", "_refuse_large"): 1,  # an HTTP request's status (503 sent)
}


def test_nothing_else_sets_a_records_status() -> None:
    package = Path(trioqueue.__file__).parent
    found: dict[tuple[str, str], int] = {}
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                targets: list[ast.expr] = []
                if isinstance(node, ast.Assign):
                    targets = node.targets
                elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                    targets = [node.target]
                for target in targets:
                    for t in ast.walk(target):
                        if not (isinstance(t, ast.Attribute) and t.attr == "status"
                                and isinstance(t.ctx, ast.Store)):
                            continue
                        where = path.relative_to(package).as_posix()
                        own = isinstance(t.value, ast.Name) and t.value.id == "self"
                        if own and where != "_record.py":
                            continue  # an HTTP response's or an exception's own status
                        key = (where, func.name)
                        found[key] = found.get(key, 0) + 1
    found.pop(("_record.py", "__init__"), None)  # a new record's first status
    assert found == ALLOWED_STATUS_WRITES
