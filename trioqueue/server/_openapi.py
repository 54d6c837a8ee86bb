"""The OpenAPI 3 document of the HTTP API, served at ``GET /openapi.json``.

Written by hand next to the routes it describes; ``tests/test_server_fuzz.py`` fuzzes the
running server from this document and checks every answer against it.
"""

from __future__ import annotations

from typing import Any

from .. import __version__
from .._events import EVENT_TYPES
from ._http import MAX_BATCH, MAX_DELAY, MAX_RETRIES

_ANY: dict[str, Any] = {"nullable": True, "description": "any JSON value"}
_TIME: dict[str, Any] = {"type": "string", "format": "date-time", "nullable": True}
_PRIORITY: dict[str, Any] = {"type": "string", "enum": ["high", "medium", "low"]}
_STATUS: dict[str, Any] = {
    "type": "string",
    "enum": ["queued", "scheduled", "processing", "completed", "failed", "cancelled"],
}
_ID: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": 128,
    "pattern": "^[A-Za-z0-9][A-Za-z0-9_.:@-]*$",
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
    "Job": {
        "type": "object",
        "required": [
            "id", "task", "payload", "priority", "status", "attempts", "max_retries",
            "created_at", "scheduled_for", "started_at", "finished_at", "result", "error",
        ],
        "properties": {
            "id": {"type": "string"},
            "task": {"type": "string"},
            "payload": _ANY,
            "priority": _PRIORITY,
            "status": _STATUS,
            "attempts": {"type": "integer", "minimum": 0},
            "max_retries": {"type": "integer", "minimum": 0},
            "timeout": {"type": "number", "nullable": True},
            "created_at": {"type": "string", "format": "date-time"},
            "scheduled_for": _TIME,
            "started_at": _TIME,
            "finished_at": _TIME,
            "result": _ANY,
            "error": {"type": "string", "nullable": True},
            "traceback": {"type": "string", "nullable": True},
        },
    },
    "NewJob": {
        "type": "object",
        "required": ["task"],
        "additionalProperties": False,
        "properties": {
            "task": {"type": "string", "minLength": 1,
                     "description": "a task registered on the server"},
            "payload": _ANY,
            "priority": {**_PRIORITY, "nullable": True,
                         "description": "default: the task's priority"},
            "id": {**_ID, "nullable": True,
                   "description": "makes the request idempotent; default: a new uuid4 hex"},
            "max_retries": {"type": "integer", "minimum": 0, "maximum": MAX_RETRIES,
                            "nullable": True},
            "timeout": {"type": "number", "exclusiveMinimum": True, "minimum": 0,
                        "nullable": True, "description": "seconds one attempt may run"},
            "delay": {"type": "number", "minimum": 0, "maximum": MAX_DELAY, "nullable": True,
                      "description": "seconds before the job becomes ready"},
        },
    },
    "JobList": {
        "type": "object",
        "required": ["jobs", "next"],
        "properties": {
            "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}},
            "next": {"type": "string", "nullable": True,
                     "description": "the `before` of the next page; null on the last page"},
        },
    },
    "Metrics": {
        "type": "object",
        "required": [
            "enqueued", "started", "completed", "failed", "retried", "cancelled", "rejected",
            "queued", "scheduled", "processing", "workers", "busy_workers", "utilization",
            "wait_p50", "wait_p99", "run_p50", "run_p99",
        ],
        "properties": {
            **{name: {"type": "integer", "minimum": 0} for name in (
                "enqueued", "started", "completed", "failed", "retried", "cancelled",
                "rejected", "scheduled", "processing", "workers", "busy_workers", "dropped",
                "run_count",
            )},
            "queued": {
                "type": "object",
                "required": ["high", "medium", "low"],
                "properties": {p: {"type": "integer", "minimum": 0}
                               for p in ("high", "medium", "low")},
            },
            "utilization": {"type": "number", "minimum": 0, "maximum": 1},
            **{name: {"type": "number", "nullable": True} for name in (
                "wait_p50", "wait_p99", "run_p50", "run_p99",
            )},
            "uptime": {"type": "number"},
            "run_sum": {"type": "number", "minimum": 0,
                        "description": "seconds handlers ran in the attempts that ended"},
            "busy_seconds": {"type": "number", "minimum": 0,
                             "description": "worker-seconds busy since the queue opened"},
            "by_priority": {"type": "object",
                            "description": "the counters and percentiles of each priority"},
            "node": {"type": "string", "description": "Redis: the id of this node"},
            "nodes": {"type": "object", "description": "Redis: the live nodes' workers",
                      "additionalProperties": {
                          "type": "object", "properties": {
                              "workers": {"type": "integer", "minimum": 0},
                              "busy_workers": {"type": "integer", "minimum": 0}}}},
        },
    },
    "BulkRetry": {
        "type": "object",
        "required": ["status"],
        "additionalProperties": False,
        "properties": {
            "status": {"type": "string", "enum": ["failed", "cancelled"],
                       "description": "retry every job in this status"},
            "task": {"type": "string", "minLength": 1, "nullable": True,
                     "description": "only the jobs of this task"},
        },
    },
    "NewJobs": {
        "type": "object",
        "required": ["jobs"],
        "additionalProperties": False,
        "properties": {
            "jobs": {"type": "array", "maxItems": MAX_BATCH,
                     "items": {"$ref": "#/components/schemas/NewJob"},
                     "description": "job bodies as for POST /jobs, of any tasks"},
        },
    },
    "NewJobsAnswer": {
        "type": "object",
        "required": ["jobs", "created"],
        "properties": {
            "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}},
            "created": {"type": "array", "items": {"type": "boolean"},
                        "description": "per job, in order: whether this request made it "
                                       "(false: its id held that job already)"},
        },
    },
    "Retried": {
        "type": "object",
        "required": ["retried"],
        "properties": {"retried": {"type": "integer", "minimum": 0}},
    },
    "Task": {
        "type": "object",
        "required": ["name", "priority", "max_retries", "timeout", "schedule", "every",
                     "concurrency"],
        "properties": {
            "name": {"type": "string"},
            "priority": _PRIORITY,
            "max_retries": {"type": "integer", "minimum": 0},
            "timeout": {"type": "number", "nullable": True},
            "schedule": {"type": "string", "nullable": True},
            "tz": {"type": "string", "nullable": True},
            "every": {"type": "number", "nullable": True},
            "concurrency": {"type": "integer", "minimum": 1, "nullable": True},
            "next_run": {"type": "string", "format": "date-time", "nullable": True},
        },
    },
    "TaskList": {
        "type": "object",
        "required": ["tasks"],
        "properties": {"tasks": {"type": "array", "items": {"$ref": "#/components/schemas/Task"}}},
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "shutting_down", "unavailable"]},
            "reason": {"type": "string",
                       "description": "readyz, unavailable: why (to a caller with the token)"},
        },
    },
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(description: str, schema: str, headers: dict[str, Any] | None = None
          ) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": _ref(schema)}},
    }
    if headers:
        response["headers"] = headers
    return response


def _error(description: str) -> dict[str, Any]:
    return _json(description, "Error")


_AUTH = {
    "401": _error("a token is set and the request has no or the wrong bearer token"),
    "403": _error("a browser's cross-site request (Sec-Fetch-Site: cross-site on a POST, "
                  "or an Origin header from another host)"),
}
_BAD_HOST = "a Host header the server does not answer to (see --allowed-hosts)"


def _with_host_check(document: dict[str, Any]) -> dict[str, Any]:
    """Every operation but the probes may answer 400 for its Host."""
    for path, item in document["paths"].items():
        if path in ("/healthz", "/readyz"):
            continue
        for operation in item.values():
            responses = operation["responses"]
            known = responses.get("400")
            text = _BAD_HOST if known is None else f"{known['description']}; or {_BAD_HOST}"
            responses["400"] = _error(text)
    return document
_JOB_ID_PARAM = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"},
                                "description": "seconds to wait before trying again"}}


def openapi_document() -> dict[str, Any]:
    """The document as a JSON-ready dict."""
    return _with_host_check({
        "openapi": "3.0.3",
        "info": {
            "title": "trioqueue",
            "version": __version__,
            "description": (
                "The HTTP API of `trioqueue serve`. Bodies are JSON; errors are "
                '`{"error": "<message>"}`; times are RFC 3339 strings in UTC or null. '
                "Events stream over the websocket `/events` (not an OpenAPI operation): "
                "one JSON event per text message; query `types` (comma-separated, of "
                f"{', '.join(sorted(EVENT_TYPES))}), `job_id` (comma-separated), "
                "`snapshot=true` (a metrics event first) and `token`. A bad filter, token, "
                "Host or Origin closes the stream with code 1008 and a reason."
            ),
        },
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],
        "paths": {
            "/jobs": {
                "post": {
                    "operationId": "createJob",
                    "summary": "Enqueue a job",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("NewJob")}},
                    },
                    "responses": {
                        "202": _json("the job, new", "Job"),
                        "200": _json("the job that already has this id, task and payload",
                                     "Job"),
                        "400": _error("bad JSON, a bad field, or a content type other "
                                      "than application/json"),
                        "404": _error("no task registered under this name"),
                        "409": _error("a job with this id exists with another task or "
                                      "payload"),
                        "413": _error("the body is over the limit (default 1 MiB)"),
                        "429": {**_error("the priority's queue is full; nothing was "
                                         "enqueued"), "headers": _RETRY_AFTER},
                        "503": _error("the server is shutting down"),
                        **_AUTH,
                    },
                },
                "get": {
                    "operationId": "listJobs",
                    "summary": "Jobs, newest first",
                    "parameters": [
                        {"name": "status", "in": "query", "required": False,
                         "schema": _STATUS},
                        {"name": "task", "in": "query", "required": False,
                         "description": "only this task's jobs",
                         "schema": {"type": "string", "minLength": 1}},
                        {"name": "limit", "in": "query", "required": False,
                         "description": "default 100; values above 1000 count as 1000",
                         "schema": {"type": "integer", "minimum": 1}},
                        {"name": "before", "in": "query", "required": False,
                         "description": "only jobs created before this job id (ids sort by "
                                        "creation time): the `next` of the previous page",
                         "schema": _ID},
                    ],
                    "responses": {
                        "200": _json("the jobs, and where the next page starts", "JobList"),
                        "400": _error("a bad status, limit or before, or a query parameter "
                                      "other than these"),
                        **_AUTH,
                    },
                },
            },
            "/jobs/retry": {
                "post": {
                    "operationId": "retryJobs",
                    "summary": "Queue every failed (or cancelled) job again, with fresh "
                               "attempts",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("BulkRetry")}},
                    },
                    "responses": {
                        "202": _json("how many jobs were queued again", "Retried"),
                        "400": _error("bad JSON or a bad field"),
                        "404": _error("`task` names no registered task"),
                        "413": _error("the body is over the limit"),
                        "429": {**_error("a priority's queue filled; the jobs retried until "
                                         "then stay retried (the message says how many), "
                                         "send it again for the rest"),
                                "headers": _RETRY_AFTER},
                        "503": _error("the server is shutting down"),
                        **_AUTH,
                    },
                },
            },
            "/jobs/batch": {
                "post": {
                    "operationId": "createJobs",
                    "summary": "Enqueue a batch of jobs, all or nothing",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("NewJobs")}},
                    },
                    "responses": {
                        "202": _json("the jobs in the order given (a job whose id, task "
                                     "and payload exist already: that job, "
                                     "created false)", "NewJobsAnswer"),
                        "400": _error("bad JSON, a bad field (named as jobs[3].priority), "
                                      "more than 1000 jobs, or more jobs of a priority than "
                                      "the queue's capacity"),
                        "404": _error("a job's task is not registered (named as "
                                      "jobs[3].task)"),
                        "409": _error("a job's id exists with another task or payload"),
                        "413": _error("the body is over the limit (default 1 MiB)"),
                        "429": {**_error("the batch does not fit whole (room is checked per "
                                         "priority); nothing was enqueued"),
                                "headers": _RETRY_AFTER},
                        "503": _error("the server is shutting down"),
                        **_AUTH,
                    },
                },
            },
            "/jobs/{id}": {
                "get": {
                    "operationId": "getJob",
                    "summary": "One job",
                    "parameters": [_JOB_ID_PARAM],
                    "responses": {
                        "200": _json("the job", "Job"),
                        "404": _error("no job has this id"),
                        **_AUTH,
                    },
                },
            },
            "/jobs/{id}/cancel": {
                "post": {
                    "operationId": "cancelJob",
                    "summary": "Cancel a queued, scheduled or running job",
                    "parameters": [_JOB_ID_PARAM],
                    "responses": {
                        "200": _json("the job, cancelled (or finished, if it finished "
                                     "before it could be interrupted)", "Job"),
                        "404": _error("no job has this id"),
                        "409": _error("the job already finished"),
                        "503": _error("the server shut down while the job was running"),
                        **_AUTH,
                    },
                },
            },
            "/jobs/{id}/retry": {
                "post": {
                    "operationId": "retryJob",
                    "summary": "Queue a failed or cancelled job again, with fresh attempts",
                    "parameters": [_JOB_ID_PARAM],
                    "responses": {
                        "202": _json("the job, queued again", "Job"),
                        "404": _error("no job has this id, or this server has no handler "
                                      "for its task"),
                        "409": _error("the job is not failed or cancelled"),
                        "429": {**_error("the priority's queue is full"),
                                "headers": _RETRY_AFTER},
                        "503": _error("the server is shutting down"),
                        **_AUTH,
                    },
                },
            },
            "/tasks": {
                "get": {
                    "operationId": "listTasks",
                    "summary": "The registered tasks and the defaults a job of each gets",
                    "responses": {
                        "200": _json("the tasks, by name", "TaskList"),
                        **_AUTH,
                    },
                },
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Counters, gauges and latency percentiles",
                    "parameters": [
                        {"name": "format", "in": "query", "required": False,
                         "description": "default json, or prometheus text when the Accept "
                                        "header asks for text/plain",
                         "schema": {"type": "string", "enum": ["json", "prometheus"]}},
                    ],
                    "responses": {
                        "200": {
                            "description": "the metrics",
                            "content": {
                                "application/json": {"schema": _ref("Metrics")},
                                "text/plain": {"schema": {"type": "string"}},
                            },
                        },
                        "400": _error("a bad format"),
                        **_AUTH,
                    },
                },
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "Liveness; 503 once shutdown began (never needs a token)",
                    "security": [],
                    "responses": {
                        "200": _json("serving", "Health"),
                        "503": _json("shutting down", "Health"),
                    },
                },
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "Readiness: 503 while the queue takes no new jobs (its store "
                               "fails to write, Redis does not answer, shutdown began); "
                               "never needs a token",
                    "security": [],
                    "responses": {
                        "200": _json("taking jobs", "Health"),
                        "503": _json("not taking jobs now", "Health"),
                    },
                },
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {
                        "200": {"description": "the OpenAPI document",
                                "content": {"application/json": {"schema": {
                                    "type": "object"}}}},
                        **_AUTH,
                    },
                },
            },
        },
    })
