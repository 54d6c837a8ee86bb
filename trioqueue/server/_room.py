"""What the app asks of the lean server's response budget (``_budget.ResponseBudget``),
through the request behind a scope (``scope["extensions"]["trioqueue.response"]``): how
long a ``GET /jobs`` page may be, and whether a POST's large answer has room before the
POST acts.  Under another server there is no such request, and no budget."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._http import HTTPError, Scope
from ._json import SHORT_PAGE, dumps
from ._wire import LARGE_RESPONSE


def response_of(scope: Scope) -> Any:
    """The lean server's request (``HttpRequest``) behind ``scope``, or None under
    another server: what was sent (``.status``) and the room for a large answer
    (``.response_room()``)."""
    return (scope.get("extensions") or {}).get("trioqueue.response")


def _response_room(scope: Scope) -> int | None:
    """Bytes a large answer could have now in the lean server's response budget; None
    when it could have any (or under another server)."""
    response = response_of(scope)
    room: int | None = None if response is None else response.response_room()
    return room


def page_bytes(scope: Scope) -> int | None:
    """Bytes of job JSON a ``GET /jobs`` page may carry, if fewer than the page's own
    bound (:data:`._json.LIST_MAX_BYTES`): what the lean server's response budget has
    room for now, and at least :data:`SHORT_PAGE` (a page under 64 KiB is never
    refused).  Without this, a crowd asking for large pages while the budget is full
    made the server build each one whole only to refuse it (an 8 MiB page a request,
    for a 503)."""
    room = _response_room(scope)
    return None if room is None else max(SHORT_PAGE, room - 4096)  # (head, wrapper)


JOB_FIELDS_BYTES = 512
"""What a job's JSON adds to its payload in an answer (its id, times and other fields),
at most: the estimate :func:`room_for_answer` is given."""


GROWTH = 6
"""How many times its bytes a JSON value may take once the server writes it back, at
most: as ASCII (two bytes of UTF-8 become the six of ``\\u00e9``, four become twelve) and
with numbers as Python writes them (``1e15`` becomes ``1000000000000000.0``)."""


def answer_bytes(body: bytes, payloads: Sequence[Any]) -> int:
    """About the bytes of the answer to a POST of ``body`` that makes jobs of
    ``payloads``, for :func:`room_for_answer`: the payloads as the server writes them and
    :data:`JOB_FIELDS_BYTES` a job.  They are written out only when the answer could be
    large; a body of fewer than :data:`LARGE_RESPONSE` / :data:`GROWTH` bytes cannot have
    one.  (The body's own length is no bound: a body of 40 KB of accented letters has an
    answer of 120 KB.)"""
    fields = JOB_FIELDS_BYTES * len(payloads)
    if len(body) * GROWTH + fields < LARGE_RESPONSE:
        return len(body) + fields
    return fields + sum(len(dumps(payload)) for payload in payloads)


def room_for_answer(scope: Scope, size: int) -> None:
    """Refuse with 503 (before anything is done) a request whose answer of about ``size``
    bytes would be large while the lean server's response budget has no room for it:
    once its jobs are made, the answer goes out whatever the budget (a 503 then would
    tell the client nothing was done, and its retry would make them twice)."""
    if size < LARGE_RESPONSE:
        return
    room = _response_room(scope)
    if room is not None and size > room:
        raise HTTPError(
            503, f"server busy: no room for a {size}-byte answer among the responses "
                 "waiting for their clients to read them; nothing was done, retry later",
            ((b"retry-after", b"1"),))
