from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioqueue import InvalidTransition, JobStatus
from trioqueue._job import TERMINAL
from trioqueue._state import TRANSITIONS, JobEvent, allowed, transition


def test_the_happy_path() -> None:
    # The worker sets these two moves directly (its hot path): the table must agree.
    s = JobStatus.QUEUED
    s = transition(s, JobEvent.START)
    assert s is JobStatus.PROCESSING
    assert transition(s, JobEvent.COMPLETE) is JobStatus.COMPLETED


def test_retry_path_and_dead_letter() -> None:
    s = transition(JobStatus.PROCESSING, JobEvent.RETRY_LATER)
    assert s is JobStatus.SCHEDULED
    assert transition(s, JobEvent.DUE) is JobStatus.QUEUED
    assert transition(JobStatus.PROCESSING, JobEvent.FAIL_FINAL) is JobStatus.FAILED
    assert transition(JobStatus.FAILED, JobEvent.REQUEUE) is JobStatus.QUEUED


def test_invalid_move_names_event_and_state() -> None:
    with pytest.raises(InvalidTransition, match="cannot cancel a job that is completed") as info:
        transition(JobStatus.COMPLETED, JobEvent.CANCEL)
    assert info.value.status is JobStatus.COMPLETED


def test_terminal_states_leave_only_by_requeue_and_completed_never() -> None:
    for (status, event), _ in TRANSITIONS.items():
        if status in TERMINAL:
            assert event is JobEvent.REQUEUE
            assert status is not JobStatus.COMPLETED


def test_only_processing_jobs_finish() -> None:
    for (status, _event), after in TRANSITIONS.items():
        if after in (JobStatus.COMPLETED, JobStatus.FAILED):
            assert status is JobStatus.PROCESSING


@given(st.lists(st.sampled_from(list(JobEvent)), max_size=50))
def test_random_event_sequences_follow_the_table(events: list[JobEvent]) -> None:
    status = JobStatus.QUEUED
    for event in events:
        if allowed(status, event):
            status = transition(status, event)
            assert status in JobStatus
        else:
            with pytest.raises(InvalidTransition):
                transition(status, event)
