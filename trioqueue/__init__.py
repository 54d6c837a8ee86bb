"""trioqueue: a job queue for Trio programs.

Open one with :func:`open_queue` inside ``trio.run``; see docs/python-api.md.
"""

from ._backoff import RetryPolicy
from ._batch import BatchItem
from ._config import QueueConfig
from ._engine import JobQueue, open_queue
from ._events import Event
from ._exceptions import (
    DuplicateJob,
    InvalidJob,
    InvalidTransition,
    JobNotFound,
    QueueFull,
    ShuttingDown,
    StoreError,
    TrioQueueError,
    UnknownTask,
)
from ._job import Job, JobPage, JobStatus, Priority
from ._metrics import Metrics
from ._progress import report_progress
from ._registry import TaskRegistry, TaskSpec

__version__ = "0.1.0"

__all__ = [
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
]

# Public objects say they live here (reprs, docs, pickling of exceptions).
for _name in __all__:
    _obj = globals()[_name]
    if hasattr(_obj, "__module__") and not isinstance(_obj, str):
        try:
            _obj.__module__ = "trioqueue"
        except (AttributeError, TypeError):  # pragma: no cover - builtins
            pass
del _name, _obj
