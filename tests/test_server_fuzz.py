"""Fuzz the running server from its own ``/openapi.json`` with schemathesis.

Every generated request (valid and invalid bodies, odd ids, odd query values) must get an
answer that the document describes: no 5xx, a documented status code, a documented
content type, and a body that matches the schema.  Bounded: a fixed number of examples
per operation and mode, derandomized so CI runs the same cases every time.

(Driven through Hypothesis directly rather than ``schemathesis.pytest``, whose lazy
fixture loader reads a pytest attribute that pytest 9 removed.)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from tests.test_server import Server, running_server

MAX_EXAMPLES = int(os.environ.get("TRIOQUEUE_FUZZ_EXAMPLES", "25"))


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[Server]:
    # Small capacity so that 429 is reachable; a short shutdown so the module ends fast.
    with running_server("--capacity", "50", "--shutdown-timeout", "1") as srv:
        yield srv


@pytest.fixture(scope="module")
def operations(fuzz_server: Server) -> dict[str, Any]:
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")
    found = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        found[f"{operation.method.upper()} {operation.path}"] = operation
    return found


# (schemathesis leaves out the document's own path, GET /openapi.json.)
OPERATIONS = [
    "POST /jobs", "GET /jobs", "GET /jobs/{id}", "POST /jobs/{id}/cancel",
    "POST /jobs/{id}/retry", "POST /jobs/retry", "GET /tasks", "GET /metrics", "GET /healthz",
    "GET /readyz", "POST /jobs/batch",
]
WITH_INVALID_INPUTS = ["POST /jobs", "GET /jobs", "POST /jobs/retry", "GET /metrics",
                       "POST /jobs/batch"]
"""Operations that have a body or a constrained parameter to get wrong."""


def test_the_document_lists_every_operation(operations: dict[str, Any]) -> None:
    assert sorted(operations) == sorted(OPERATIONS)


@pytest.mark.parametrize(
    ("name", "mode"),
    [(name, GenerationMode.POSITIVE) for name in OPERATIONS]
    + [(name, GenerationMode.NEGATIVE) for name in WITH_INVALID_INPUTS],
)
def test_every_answer_matches_the_document(
    operations: dict[str, Any], name: str, mode: GenerationMode
) -> None:
    operation = operations[name]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        case.call_and_validate()

    check()
