"""The public namespace is the contract: a name appearing or vanishing must be on purpose."""

from __future__ import annotations

import types

import trioqueue

EXPECTED = {
    "BatchItem",
    "DuplicateJob",
    "Event",
    "InvalidJob",
    "InvalidTransition",
    "Job",
    "JobNotFound",
    "JobPage",
    "JobQueue",
    "JobStatus",
    "Metrics",
    "Priority",
    "QueueConfig",
    "QueueFull",
    "RetryPolicy",
    "ShuttingDown",
    "StoreError",
    "TaskRegistry",
    "TaskSpec",
    "TrioQueueError",
    "UnknownTask",
    "__version__",
    "open_queue",
    "report_progress",
}


def test_all_is_exactly_the_contract() -> None:
    assert set(trioqueue.__all__) == EXPECTED


def test_no_other_public_names_leak() -> None:
    public = {
        name
        for name, value in vars(trioqueue).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public | {"__version__"} == EXPECTED


def test_exceptions_share_one_base() -> None:
    for name in ("QueueFull", "ShuttingDown", "JobNotFound", "DuplicateJob", "UnknownTask",
                 "InvalidJob", "InvalidTransition", "StoreError"):
        assert issubclass(getattr(trioqueue, name), trioqueue.TrioQueueError)


def test_public_objects_claim_the_public_module() -> None:
    # Reprs and docs say trioqueue.Job, not trioqueue._job.Job.
    for name in EXPECTED - {"__version__"}:
        assert getattr(trioqueue, name).__module__ == "trioqueue", name


def test_job_queue_has_no_public_constructor() -> None:
    import pytest

    with pytest.raises(TypeError, match="open_queue"):
        trioqueue.JobQueue(trioqueue.TaskRegistry(), trioqueue.QueueConfig())
