"""Intake: from the arguments of ``enqueue`` to a validated new job record.

Nothing here touches the queue's state: a job that fails a check is refused before any
part of the queue sees it, so nothing is ever half enqueued.
"""

from __future__ import annotations

from json import loads as _loads
from math import floor as _floor
from typing import Any

import trio

from ._config import QueueConfig
from ._ids import new_id
from ._job import (
    JobStatus,
    Priority,
    check_delay,
    check_job_id,
    check_json,
    check_max_retries,
    check_timeout,
)
from ._record import AS_IS, CONTAINERS, JobRecord, OwnedPayload
from ._registry import TaskRegistry, TaskSpec
from ._submit import Call, check_call_payload, is_call_task

QUEUED = JobStatus.QUEUED
SCHEDULED = JobStatus.SCHEDULED


class Intake:
    """Builds :class:`JobRecord` values for new jobs: the task's defaults, the caller's
    overrides (each checked, errors naming the field), a new id, the creation time."""

    def __init__(self, registry: TaskRegistry, config: QueueConfig, clock: trio.abc.Clock,
                 wall_offset: float) -> None:
        self._registry = registry
        self._config = config
        self._now = clock.current_time
        self._wall = wall_offset
        self._defaults: dict[str, tuple[TaskSpec, int, int, float | None]] = {}
        """Per task name: its spec and resolved job defaults (see :meth:`_defaults_of`)."""
        self._calls: dict[str, tuple[TaskSpec, int, int, float | None]] = {}
        """The same for submitted functions' tasks, kept apart: :meth:`build` finds them
        by :meth:`_defaults_of`, which checks their payload (the other tasks' jobs pay
        nothing for it)."""

    def build(
        self,
        task: str,
        payload: Any,
        priority: Priority | str | None,
        job_id: str | None,
        delay: float,
        max_retries: int | None,
        timeout: float | None,
    ) -> JobRecord:
        """Validate everything and make the new job's record (QUEUED, or SCHEDULED with
        a ``delay``); raise :class:`UnknownTask` or :class:`InvalidJob`."""
        try:
            defaults = self._defaults[task]
        except (KeyError, TypeError):  # a task not seen yet (or not a name at all), or
            # a submitted function's (never kept above: its payload is checked here)
            defaults = self._defaults_of(task, payload)  # raises UnknownTask, InvalidJob
        spec, prio, retries, limit = defaults
        if priority is not None:
            prio = int(Priority.coerce(priority))
        if delay:
            check_delay(delay)
        if max_retries is not None:
            retries = check_max_retries(max_retries)
        if timeout is not None:
            limit = check_timeout(timeout)
        make = JobRecord
        if payload is None:
            payload_json = "null"
        else:
            payload_json = check_json("payload", payload)
            kind = payload.__class__
            if kind in CONTAINERS:  # the job's own copy, as JSON gives it back
                payload = _loads(payload_json)
                make = OwnedPayload
            elif kind not in AS_IS and kind is not Call:  # a tuple, an OrderedDict, ...:
                payload = _loads(payload_json)  # kept as JSON gives it back, too
                if payload.__class__ in CONTAINERS:
                    make = OwnedPayload
        now = self._now()
        created = now + self._wall
        # The id's millisecond is the job's creation time: one clock read for both
        # (floor, not int(): a call into C that CPython 3.11 makes faster than a type's).
        if job_id is None:
            job_id = new_id(_floor(created * 1000.0))
            if delay:
                return make(job_id, task, payload, payload_json, prio, SCHEDULED,
                            retries, limit, created, created + delay, spec, now)
            return make(job_id, task, payload, payload_json, prio, QUEUED, retries,
                        limit, created, None, spec, now)
        rec = make(check_job_id(job_id), task, payload, payload_json, prio,
                   SCHEDULED if delay else QUEUED, retries, limit, created,
                   created + delay if delay else None, spec, now)
        rec.id_given = True
        return rec

    def restamp(self, rec: JobRecord, delay: float) -> None:
        """Date a new record that had to wait for room as of now (its id stays)."""
        now = self._now()
        rec.ready_at = now
        rec.created_at = now + self._wall
        if rec.status is SCHEDULED:
            rec.scheduled_for = rec.created_at + delay

    def _defaults_of(self, task: str, payload: Any
                     ) -> tuple[TaskSpec, int, int, float | None]:
        """A task's spec with its job defaults resolved: priority (an int), retries and
        timeout, the task's own or else the config's.  Looked up once per task name (the
        registry only grows, and specs and the config are frozen).  For a submitted
        function's task, ``payload`` must be a call's (``{"args": [...]}``), else
        :class:`InvalidJob` naming ``payload``: no attempt of it could run."""
        if task.__class__ is str and (known := self._calls.get(task)) is not None:
            check_call_payload(task, payload)
            return known
        spec = self._registry.get(task)  # raises UnknownTask
        call = is_call_task(spec)
        if call:
            check_call_payload(task, payload)
        config = self._config
        defaults = (
            spec,
            int(spec.priority),
            config.max_retries if spec.max_retries is None else spec.max_retries,
            config.default_timeout if spec.timeout is None else spec.timeout,
        )
        (self._calls if call else self._defaults)[task] = defaults
        return defaults
