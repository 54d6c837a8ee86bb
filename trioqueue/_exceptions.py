"""The exceptions trioqueue raises.

Every one is a subclass of :class:`TrioQueueError`, split by who is at fault::

    TrioQueueError
    ├── QueueFull          the queue is at capacity right now; try again later (HTTP 429)
    ├── ShuttingDown       the queue no longer takes jobs (HTTP 503)
    ├── JobNotFound        no job has this id (HTTP 404)
    ├── DuplicateJob       the id exists with another task or payload (HTTP 409)
    ├── InvalidTransition  the job is not in a state that allows this (HTTP 409)
    ├── UnknownTask        no handler is registered under this name (HTTP 404)
    ├── InvalidJob         a field of the job is bad: the caller's fault (HTTP 400)
    └── StoreError         the store file is unreadable, foreign, newer or unwritable

The first three describe the queue's state, the next four the caller's request, the
last the environment.  Messages name the field and the value.
"""

from __future__ import annotations


class TrioQueueError(Exception):
    """Base class of every error trioqueue raises on purpose."""


class QueueFull(TrioQueueError):
    """The priority's ready queue is at capacity; ``enqueue_nowait`` does not wait.

    :attr:`retry_after` is how many seconds to wait before trying again, when whoever
    raised it knows: the HTTP client reads it from the server's ``Retry-After``; the
    queue itself cannot know when room comes and leaves it ``None``.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[type[QueueFull], tuple[str, float | None]]:
        return type(self), (str(self), self.retry_after)


class ShuttingDown(TrioQueueError):
    """The queue is closing (or closed) and takes no new jobs."""


class JobNotFound(TrioQueueError, LookupError):
    """No job with this id exists (or it has left memory and no store keeps it)."""


class DuplicateJob(TrioQueueError):
    """A job with this id already exists with a different task or payload."""

    def __init__(self, message: str, job_id: str | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id
        """The id that is taken, when the queue knows it."""


class InvalidTransition(TrioQueueError):
    """The job's current state does not allow the requested change.

    For example, cancelling a job that already completed, or retrying one that is still
    queued.  :attr:`status` is the state the job was in.
    """

    def __init__(self, message: str, status: object = None) -> None:
        super().__init__(message)
        self.status = status


class UnknownTask(TrioQueueError, LookupError):
    """No handler is registered in the queue's :class:`TaskRegistry` under this name."""


class InvalidJob(TrioQueueError, ValueError):
    """A field of a job is invalid.  The message names the field and the value."""


class StoreError(TrioQueueError):
    """The persistent store cannot be used: not ours, too new, corrupt, or unwritable.

    The message names the file and what is wrong.  trioqueue never resets a store it
    cannot read.
    """
