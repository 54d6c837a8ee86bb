"""Callables as jobs: what :meth:`JobQueue.submit` enqueues and the handler that runs it.

A submitted function becomes a task named ``"module.qualname"``, registered in the
queue's registry (for this process) the first time it is submitted.  Its handler calls
``fn(*args)``; it never passes the :class:`Job`.

- Memory mode: any callable and any args.  The job's payload is a :class:`Call`: a dict
  ``{"args": [repr, ...]}`` (what HTTP, events and listings show) that also holds the
  callable and the real args, so the record itself carries them (a retry runs the same
  call; nothing outlives the job).
- With a store (or Redis) the job must be runnable by another process or after a
  restart: ``fn`` a module-level function (found as ``module.qualname`` among the
  modules this process has imported, and the same object) and the args JSON.  The
  payload is ``{"args": [...]}``, and the handler runs the function this process
  registered under that name, never one imported by a name read from the store.

Such a task may be enqueued by name (HTTP, the CLI) with that payload; the intake refuses
any other (:func:`check_call_payload`), and ``submit`` refuses a handler that takes the
job, whichever registry it is registered in.
"""

from __future__ import annotations

import functools
import inspect
import reprlib
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ._exceptions import InvalidJob
from ._job import MAX_DEPTH, Job, check_json

if TYPE_CHECKING:  # _registry imports this module (TaskRegistry.submittable)
    from ._registry import TaskRegistry, TaskSpec

_MARK = "__trioqueue_submitted__"
"""Set on the handlers this module registers: their :class:`_Target`."""


class _Target:
    """What a submitted function's handler runs for a stored call (a memory-mode job
    carries its own call): ``fn``, and whether it is a module-level function, which a
    stored call can name (``runs_stored``)."""

    __slots__ = ("fn", "runs_stored")

    def __init__(self, fn: Callable[..., Any], runs_stored: bool) -> None:
        self.fn = fn
        self.runs_stored = runs_stored


class Call(dict[str, Any]):
    """A memory-mode payload: ``{"args": [repr(arg), ...]}`` as data, plus the call."""

    __slots__ = ("args", "fn")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        super().__init__(args=[_repr(a) for a in args])
        self.fn = fn
        self.args = args


def _repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception as exc:  # a broken __repr__ must not stop the job
        return f"<{type(value).__name__} (repr failed: {type(exc).__name__})>"


def is_async(fn: Callable[..., Any]) -> bool:
    """Whether calling ``fn`` gives an awaitable to await on the loop."""
    target: Any = fn
    while isinstance(target, functools.partial):
        target = target.func
    if inspect.iscoroutinefunction(target):
        return True
    call = getattr(type(target), "__call__", None)  # noqa: B004 - an instance's method
    return not inspect.isfunction(target) and not inspect.ismethod(target) and (
        call is not None and inspect.iscoroutinefunction(call)
    )


def task_name(fn: Callable[..., Any]) -> str:
    """``"module.qualname"`` (partials and objects: their function's or type's)."""
    target: Any = fn
    while isinstance(target, functools.partial):
        target = target.func
    module = getattr(target, "__module__", None) or type(target).__module__
    qualname = getattr(target, "__qualname__", None) or type(target).__qualname__
    return f"{module}.{qualname}"


def check_module_level(fn: Callable[..., Any]) -> str:
    """The task name of a function another process could run (module-level, found as
    ``module.qualname`` and the same object); else raise :class:`InvalidJob`."""
    module_name = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    what = f"{fn!r}"
    if not (inspect.isfunction(fn) or inspect.isbuiltin(fn)) or not isinstance(
            module_name, str) or not isinstance(qualname, str):
        raise InvalidJob(
            f"fn: with a store a job must be runnable after a restart, so fn must be a "
            f"module-level function, got {what} (a lambda, partial, bound method or "
            f"other callable can only be submitted in memory mode)"
        )
    found: Any = sys.modules.get(module_name)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if found is not fn:
        raise InvalidJob(
            f"fn: with a store a job must be runnable after a restart, so fn must be a "
            f"module-level function found as {module_name}.{qualname}, got {what}"
        )
    return f"{module_name}.{qualname}"


def durable_args(args: Sequence[Any]) -> list[Any]:
    """The args as stored: each must be JSON (``args[i]: ...`` names the one that is
    not), nested at most two levels less than a payload (it is one's ``{"args": [...]}``)."""
    for i, arg in enumerate(args):
        check_json(f"args[{i}]", arg, MAX_DEPTH - 2)
    return list(args)


def ensure_registered(registry: TaskRegistry, name: str, fn: Callable[..., Any],
                      durable: bool, *, top_level: bool = False) -> None:
    """Register the handler that runs submitted calls under ``name`` (once);
    ``top_level``: ``fn`` is known to be a module-level function (``submittable``, whose
    decorator runs before the module has the name, so ``check_module_level`` would fail)."""
    if name in registry:
        spec = registry.get(name)
        marked = getattr(spec.handler, _MARK, None)
        if marked is None:
            raise TypeError(
                f"submit: a task named {name!r} is registered already and is not "
                f"{fn!r}; rename one of them"
            )
        if spec.sync == is_async(fn):
            raise TypeError(
                f"submit: {name!r} was submitted before as "
                f"{'a plain' if spec.sync else 'an async'} function, now as "
                f"{'an async' if spec.sync else 'a plain'} one"
            )
        if durable and marked.fn is not fn:
            if marked.runs_stored:  # (a module attribute rebound since, say)
                raise InvalidJob(
                    f"fn: {name!r} was submitted in this process before as "
                    f"{marked.fn!r}, not {fn!r}: a task name runs one function"
                )
            # A memory queue registered the name for a partial, a lambda, ...: its jobs
            # carry their own calls, so from now on the name's stored calls run ``fn``.
            marked.fn, marked.runs_stored = fn, True
        return
    try:
        if not top_level:
            check_module_level(fn)  # (a memory queue may register a partial, a lambda, ...)
        runs_stored = True
    except InvalidJob:
        runs_stored = False
    target = _Target(fn, runs_stored)
    if is_async(fn):

        async def run_async(job: Job) -> Any:
            call_fn, args = _call_of(job, name, target)
            return await call_fn(*args)

        handler: Callable[[Job], Any] = run_async
        sync = False
    else:

        def run_sync(job: Job) -> Any:
            call_fn, args = _call_of(job, name, target)
            return call_fn(*args)

        handler = run_sync
        sync = True
    setattr(handler, _MARK, target)
    handler.__qualname__ = handler.__name__ = name
    registry.register(handler, name=name, sync=sync)


def _call_of(job: Job, name: str, target: _Target
             ) -> tuple[Callable[..., Any], Sequence[Any]]:
    """The call a job makes: a memory-mode job carries it; a stored one (a store's or
    Redis') has its args as JSON, for ``target.fn``, whichever kind of queue registered
    the name first (one registry may serve a memory queue and then a stored one)."""
    payload = job.payload
    if isinstance(payload, Call):
        return payload.fn, payload.args
    if is_call_payload(payload):
        if not target.runs_stored:
            raise never_runs(
                f"job {job.id}: {name} was submitted to a memory queue as {target.fn!r}, "
                f"which cannot run a stored call; submit the module-level function itself"
            )
        return target.fn, payload["args"]
    # (enqueue refuses such a payload: this one was stored before it did)
    raise never_runs(f"job {job.id}: {_bad_payload(name, payload)}")


NEVER_RUNS = "__trioqueue_never_runs__"
"""Set on the ``TypeError`` of a job no attempt can run (:func:`never_runs`)."""


def never_runs(message: str) -> TypeError:
    """The ``TypeError`` of a call no retry can make run: the job fails at once, its
    retries not spent (the workers look for :data:`NEVER_RUNS` on a plain ``TypeError``)."""
    exc = TypeError(message)
    setattr(exc, NEVER_RUNS, True)
    return exc


def is_call_task(spec: TaskSpec) -> bool:
    """Whether ``spec`` is a submitted function's task (its handler calls ``fn(*args)``
    with the payload's args), not a handler that takes the job."""
    return getattr(spec.handler, _MARK, None) is not None


def is_call_payload(payload: Any) -> bool:
    """The payload of a submitted call: ``{"args": [...]}`` and no other key (a memory
    queue's :class:`Call` is one too)."""
    return (isinstance(payload, dict) and len(payload) == 1
            and isinstance(payload.get("args"), list))


def check_call_payload(task: str, payload: Any) -> None:
    """Refuse, at enqueue, a payload a submitted function's task can never run
    (:class:`InvalidJob` naming ``payload``, HTTP 400): every attempt would fail."""
    if not is_call_payload(payload):
        raise InvalidJob(f"payload: {_bad_payload(task, payload)}")


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 80


def _bad_payload(task: str, payload: Any) -> str:
    return (f"{task} is a submitted function's task, run as fn(*args): its payload must "
            f'be {{"args": [...]}} (the positional arguments, and no other key), got '
            f"{_SHORT.repr(payload)}")


def call_job(registry: TaskRegistry, durable: bool, fn: Callable[..., Any],
             args: tuple[Any, ...]) -> tuple[str, Any]:
    """The task name and payload of a submitted call ``fn(*args)``, registering its
    handler in ``registry``; ``durable``: the queue keeps jobs beyond this process (a
    store or Redis), so ``fn`` must be a module-level function and ``args`` JSON."""
    if not callable(fn):
        raise TypeError(f"submit: fn must be callable, got {fn!r}")
    registered = registry.handler_task(fn)
    if registered is not None:
        name, here = registered
        if here:
            raise TypeError(
                f"submit: {fn!r} is registered as the task {name!r}, a handler that "
                f"takes the job; enqueue it by name instead: enqueue({name!r}, payload)"
            )
        raise TypeError(
            f"submit: {fn!r} is registered as the task {name!r} in another registry "
            f"(not this queue's), a handler that takes the job; enqueue it by name in a "
            f"queue opened with that registry instead: enqueue({name!r}, payload)"
        )
    if durable:
        name = check_module_level(fn)
        payload: Any = {"args": durable_args(args)}
    else:
        name = task_name(fn)
        payload = Call(fn, args)
    ensure_registered(registry, name, fn, durable)
    return name, payload
