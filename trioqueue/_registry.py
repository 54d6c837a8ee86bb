"""Handlers registered by name, so a stored job can run after a restart or over HTTP."""

from __future__ import annotations

import inspect
import types
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Literal, TypeVar, overload

import attrs

from ._exceptions import InvalidJob, UnknownTask
from ._job import Job, Priority, check_max_retries, check_timeout, clean_text

F = TypeVar("F", bound=Callable[[Job], Any])
"""A handler: called with the job, its type kept by the decorator (so mypy sees it)."""
A = TypeVar("A", bound=Callable[[Job], Awaitable[object]])
"""An ``async def`` handler (``sync=False``, the default): mypy flags a plain function
registered without ``sync=True``, which would block the event loop."""
S = TypeVar("S", bound=Callable[[Job], object])
"""A ``sync=True`` handler, run in a worker thread."""
C = TypeVar("C", bound=Callable[..., Any])
"""A function for ``submit`` (``submittable``), its type kept by the decorator."""
Handler = Callable[[Job], Awaitable[Any]] | Callable[[Job], Any]

_HANDLERS: weakref.WeakKeyDictionary[TaskRegistry, dict[object, str]] = (
    weakref.WeakKeyDictionary())
"""Every registry alive -> :func:`handler_key` of each of its handlers -> its task's name
(the specs hold the handlers, so a key is never another object's while the registry
lives), so ``submit`` knows a handler registered in any of them.  The handlers ``submit``
registers are wrappers no caller holds: a function given to ``submit`` is never one."""


@attrs.frozen
class TaskSpec:
    """A registered handler and its defaults (``None``: use the queue's)."""

    name: str
    handler: Callable[[Job], Any]
    max_retries: int | None = None
    timeout: float | None = None
    priority: Priority = Priority.MEDIUM
    sync: bool = False
    """Run the handler in a worker thread (``trio.to_thread.run_sync``)."""
    schedule: str | None = None
    """A cron expression: a job of this task at each time it matches (see _periodic)."""
    every: float | None = None
    """Seconds: a job of this task every this many seconds."""
    tz: str | None = None
    """The time zone ``schedule`` is read in (``None``: UTC)."""
    concurrency: int | None = None
    """At most this many jobs of the task run at once in this process (``None``: no
    limit).  Jobs over the limit wait without holding back other tasks' jobs."""

    def to_dict(self, default_max_retries: int = 3, default_timeout: float | None = None
                ) -> dict[str, Any]:
        """The task as ``GET /tasks`` shows it: the values a job of it gets when the
        request sets none (the queue's defaults where the task sets none), and its
        periodic options (``schedule``, ``tz``, ``every``: ``None`` for other tasks).
        """
        return {
            "name": self.name,
            "priority": self.priority.label,
            "max_retries": default_max_retries if self.max_retries is None else self.max_retries,
            "timeout": default_timeout if self.timeout is None else self.timeout,
            "schedule": self.schedule,
            "tz": self.tz,
            "every": self.every,
            "concurrency": self.concurrency,
        }


class TaskRegistry:
    """Names to handlers.  ``@registry.task()`` registers an ``async def handler(job)``."""

    def __init__(self) -> None:
        self._tasks: dict[str, TaskSpec] = {}
        _HANDLERS[self] = {}

    @overload
    def task(  # an async def handler, bare or called
        self,
        fn: A,
        /,
        *,
        name: str | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        priority: Priority | str = Priority.MEDIUM,
        sync: Literal[False] = False,
        schedule: str | None = None,
        every: float | None = None,
        tz: str | None = None,
        concurrency: int | None = None,
    ) -> A: ...

    @overload
    def task(  # a plain function, with sync=True
        self,
        fn: S,
        /,
        *,
        name: str | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        priority: Priority | str = Priority.MEDIUM,
        sync: Literal[True],
        schedule: str | None = None,
        every: float | None = None,
        tz: str | None = None,
        concurrency: int | None = None,
    ) -> S: ...

    @overload
    def task(  # @registry.task(...)
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        priority: Priority | str = Priority.MEDIUM,
        sync: Literal[False] = False,
        schedule: str | None = None,
        every: float | None = None,
        tz: str | None = None,
        concurrency: int | None = None,
    ) -> Callable[[A], A]: ...

    @overload
    def task(  # @registry.task(sync=True, ...)
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        priority: Priority | str = Priority.MEDIUM,
        sync: Literal[True],
        schedule: str | None = None,
        every: float | None = None,
        tz: str | None = None,
        concurrency: int | None = None,
    ) -> Callable[[S], S]: ...

    @overload
    def task(  # sync given as a bool variable: not checked
        self,
        fn: F,
        /,
        *,
        name: str | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        priority: Priority | str = Priority.MEDIUM,
        sync: bool,
        schedule: str | None = None,
        every: float | None = None,
        tz: str | None = None,
        concurrency: int | None = None,
    ) -> F: ...

    @overload
    def task(  # the same, as a decorator
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        priority: Priority | str = Priority.MEDIUM,
        sync: bool,
        schedule: str | None = None,
        every: float | None = None,
        tz: str | None = None,
        concurrency: int | None = None,
    ) -> Callable[[F], F]: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        priority: Priority | str = Priority.MEDIUM,
        sync: bool = False,
        schedule: str | None = None,
        every: float | None = None,
        tz: str | None = None,
        concurrency: int | None = None,
    ) -> Any:
        """Register a handler; usable bare (``@registry.task``) or with options.

        ``name`` defaults to the function's ``__name__``.  A coroutine function runs on the
        event loop; ``sync=True`` runs a plain function in a thread.  ``concurrency=N``:
        at most N jobs of the task run at once in this process.  Registering a plain
        function without ``sync=True`` (or a coroutine function with it) is an error, so a
        blocking handler cannot stall the loop by accident.
        """

        def register(f: Callable[..., Any]) -> Callable[..., Any]:
            self.register(
                f,
                name=name,
                max_retries=max_retries,
                timeout=timeout,
                priority=priority,
                sync=sync,
                schedule=schedule,
                every=every,
                tz=tz,
                concurrency=concurrency,
            )
            return f

        if fn is not None and not callable(fn):
            raise TypeError(
                f"task(): expected the handler function (as a bare @registry.task), got "
                f"{fn!r}; give the task's name as a keyword: @registry.task(name={fn!r})")
        return register(fn) if fn is not None else register

    def register(
        self,
        fn: Callable[[Job], Any],
        *,
        name: str | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        priority: Priority | str = Priority.MEDIUM,
        sync: bool = False,
        schedule: str | None = None,
        every: float | None = None,
        tz: str | None = None,
        concurrency: int | None = None,
    ) -> TaskSpec:
        task_name = name if name is not None else getattr(fn, "__name__", None)
        if not isinstance(task_name, str) or not task_name or clean_text(task_name) != task_name:
            raise ValueError(f"name: expected a non-empty string that can be encoded as "
                             f"UTF-8, got {task_name!r}")
        if not task_name.isprintable():  # it is in every log line of its jobs
            raise ValueError(f"name: expected printable characters (no newline, tab or "
                             f"other control character), got {task_name!r}")
        if task_name in self._tasks:
            raise ValueError(f"name: a task named {task_name!r} is already registered")
        _check_signature(fn, task_name)
        is_coro = inspect.iscoroutinefunction(fn)
        if sync and is_coro:
            raise ValueError(f"task {task_name!r}: sync=True needs a plain function")
        if not sync and not is_coro:
            raise ValueError(
                f"task {task_name!r}: handler must be an async function "
                "(or register a plain function with sync=True)"
            )
        try:  # InvalidJob (a ValueError) naming the field, and here the task too
            if max_retries is not None:
                check_max_retries(max_retries)
            if timeout is not None:
                timeout = check_timeout(timeout)
            priority = Priority.coerce(priority)
        except InvalidJob as exc:
            raise InvalidJob(f"task {task_name!r}: {exc}") from None
        if concurrency is not None and (
            isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
        ):
            raise ValueError(
                f"task {task_name!r}: concurrency: expected a positive integer or None, "
                f"got {concurrency!r}"
            )
        _check_periodic(task_name, schedule, every, tz)
        spec = TaskSpec(
            name=task_name,
            handler=fn,
            max_retries=max_retries,
            timeout=None if timeout is None else float(timeout),
            priority=priority,
            sync=sync,
            schedule=schedule,
            every=None if every is None else float(every),
            tz=tz,
            concurrency=concurrency,
        )
        self._tasks[task_name] = spec
        _HANDLERS[self].setdefault(handler_key(fn), task_name)
        return spec

    def submittable(self, fn: C) -> C:
        """Register ``fn`` for :meth:`JobQueue.submit` now, as its first ``submit`` would;
        return it (a decorator too).  A queue opened with this registry then runs the
        calls of ``fn`` that a store or Redis kept from before a restart (a queue that
        lacks it leaves them waiting).  ``fn`` must be a function defined at a module's
        top level, as ``submit`` requires of a queue with a store or Redis."""
        from ._submit import ensure_registered, task_name

        qualname = getattr(fn, "__qualname__", "")
        if not inspect.isfunction(fn) or "<" in qualname:  # <lambda>, <locals>
            raise InvalidJob(f"fn: expected a function defined at a module's top level, "
                             f"got {fn!r}")
        ensure_registered(self, task_name(fn), fn, durable=True, top_level=True)
        return fn

    def get(self, name: str) -> TaskSpec:
        """The spec registered as ``name``; raises :class:`UnknownTask`."""
        try:
            return self._tasks[name]
        except (KeyError, TypeError):
            hint = ""
            if callable(name):  # a Celery habit: the function itself
                hint = ("; a task is named by its name (a str), and submit() runs a "
                        "function as a job")
            raise UnknownTask(f"task: no handler registered as {name!r}{hint}") from None

    def handler_task(self, fn: object) -> tuple[str, bool] | None:
        """The task whose handler is ``fn`` (a function registered with :meth:`task`,
        which takes the job): its name, and ``True`` when it is in this registry,
        ``False`` when in another one alive; ``None`` if in none.  What ``submit``
        checks: such a function is enqueued by name, not submitted."""
        key = handler_key(fn)
        name = _HANDLERS[self].get(key)
        if name is not None:
            return name, True
        for other, handlers in list(_HANDLERS.items()):
            if other is not self and (name := handlers.get(key)) is not None:
                return name, False
        return None

    def __repr__(self) -> str:
        names = sorted(self._tasks)
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        return f"<TaskRegistry of {len(names)} task{'' if len(names) == 1 else 's'}: {shown}>"

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __iter__(self) -> Iterator[str]:
        return iter(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)


def handler_key(fn: object) -> object:
    """What identifies a handler: the object itself (by ``id``, so any callable, hashable
    or not), a bound method by its object and function (each ``obj.method`` is a new
    bound method)."""
    if isinstance(fn, types.MethodType):
        return (id(fn.__self__), id(fn.__func__))
    return id(fn)


def _check_periodic(name: str, schedule: object, every: object, tz: object) -> None:
    """``schedule``/``every``/``tz`` of a periodic task, or a ``ValueError`` naming one."""
    if schedule is None and every is None:
        if tz is not None:
            raise ValueError(f"task {name!r}: tz: only with schedule=")
        return
    from ._periodic import check_periodic

    check_periodic(name, schedule, every, tz)


def _check_signature(fn: Callable[..., Any], task_name: str) -> None:
    """A handler is called as ``handler(job)``: refuse, at registration, one that cannot
    be (``def h()``, ``def h(a, b)``, a required keyword-only argument), rather than fail
    every job of the task with a ``TypeError`` at run time.

    Extra parameters with defaults, ``*args`` and ``**kwargs`` are fine.  A callable whose
    signature Python cannot read (some built-ins) is let through.
    """
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(None)
    except TypeError as exc:
        shown = getattr(fn, "__qualname__", None) or repr(fn)
        what = ("it takes no positional argument" if str(exc) == "too many positional arguments"
                else str(exc))
        raise TypeError(
            f"task {task_name!r}: handler {shown}{signature} must take exactly one "
            f"positional argument, the job (it is called as handler(job)): {what}"
        ) from None
