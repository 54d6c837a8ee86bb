"""The internal parts that trioqueue's own tests exercise one at a time.

A program needs none of this: everything it uses is in :mod:`trioqueue`,
:mod:`trioqueue.client` and :mod:`trioqueue.server`.  Tests of pure logic (the fair
picker, the state table, the HTTP parser's limits, the monitor's layout) and of one
backend's internals (the SQLite store, the Redis state layer) import those parts from
here, so that no test reaches into a private module, and what they rely on is listed in
one place.  Nothing here is a stable API: it changes with the code it names.
"""

from . import _engine as engine
from ._cli_client import clean as clean
from ._cli_client import client_options as client_options
from ._cli_client import table as table
from ._cli_options import KNOWN_ENV as KNOWN_ENV
from ._cli_options import metrics_allowed_hosts as metrics_allowed_hosts
from ._cli_options import metrics_options as metrics_options
from ._created import enqueue_created as enqueue_created
from ._created import repeated as repeated
from ._fairness import FairPicker as FairPicker
from ._gil import lowered_switch_interval as lowered_switch_interval
from ._gil import run_in_thread as run_in_thread
from ._ids import GENERATED_SHAPE_SQL as GENERATED_SHAPE_SQL
from ._ids import IdGenerator as IdGenerator
from ._ids import generated_shape as generated_shape
from ._job import MAX_DEPTH as MAX_DEPTH
from ._job import TERMINAL as TERMINAL
from ._job import check_json as check_json
from ._job import nests_deeper as nests_deeper
from ._job import rfc3339 as rfc3339
from ._local import reads as reads
from ._local import snapshot as snapshot
from ._local.backend import LocalBackend as LocalBackend
from ._local.snapshot import Persistence as Persistence
from ._metrics import escape_help as escape_help
from ._metrics import label_set as label_set
from ._monitor import backoff as backoff
from ._monitor import describe as describe
from ._monitor import monitor as monitor
from ._monitor import refusal as refusal
from ._monitor_view import COUNTERS as COUNTERS
from ._monitor_view import ELLIPSIS as ELLIPSIS
from ._monitor_view import MonitorView as MonitorView
from ._monitor_view import ProtocolError as ProtocolError
from ._monitor_view import cells as cells
from ._monitor_view import compute_rates as compute_rates
from ._monitor_view import decode as decode
from ._monitor_view import fit as fit
from ._monitor_view import flow as flow
from ._monitor_view import render as render
from ._monitor_view import stale_after as stale_after
from ._node_http import NodeMetricsApp as NodeMetricsApp
from ._periodic import STOP_GRACE as STOP_GRACE
from ._periodic import last_due as last_due
from ._periodic import next_due as next_due
from ._periodic import run_id as run_id
from ._record import JobRecord as JobRecord
from ._redis import RECORD_FIELDS as RECORD_FIELDS
from ._redis import Admission as Admission
from ._redis import CorruptRecord as CorruptRecord
from ._redis import NewJob as NewJob
from ._redis import Outcome as Outcome
from ._redis import RedisClient as RedisClient
from ._redis import RedisNotSent as RedisNotSent
from ._redis import RedisRefused as RedisRefused
from ._redis import RedisState as RedisState
from ._redis import RedisUnavailable as RedisUnavailable
from ._redis import StoredJob as StoredJob
from ._redis import at_open as at_open
from ._redis import backend as redis_backend
from ._redis import canonical_digest as canonical_digest
from ._redis import connect as connect
from ._redis import paths as redis_paths
from ._redis import stored_job as stored_job
from ._redis._client import Waiting as Waiting
from ._redis._client import lua_script as lua_script
from ._redis._holds import Holds as Holds
from ._redis._limits import DEFAULTS as REDIS_DEFAULT_LIMITS
from ._redis._limits import read_limits as read_limits
from ._redis._outage import REMIND as REMIND
from ._redis._outage import Outage as Outage
from ._redis._pipe import Connection as Connection
from ._redis._pipe import Endpoint as Endpoint
from ._redis._pipe import Lost as Lost
from ._redis._pipe import Pipe as Pipe
from ._redis._pipe import pack as pack
from ._redis._scripts import source as source
from ._redis._values import UNSTARTED_MAX as UNSTARTED_MAX
from ._redis._values import Reaped as Reaped
from ._redis._values import StreamEvent as StreamEvent
from ._state import MOVES as MOVES
from ._state import TRANSITIONS as TRANSITIONS
from ._state import EventKind as EventKind
from ._state import JobEvent as JobEvent
from ._state import admitted as admitted
from ._state import allowed as allowed
from ._state import edge as edge
from ._state import move as move
from ._state import transition as transition
from ._store import sqlite as sqlite_store
from ._store.sqlite import SqliteStore as SqliteStore
from .client import _verify as client_verify
from .server import _app as app
from .server import _budget as budget
from .server import _h1 as h1
from .server import _json as json_out
from .server import _lean as lean
from .server import _room as room
from .server import _wire as wire
from .server._dashboard import CSP as CSP
from .server._dashboard import HISTORY_FIELDS as HISTORY_FIELDS
from .server._dashboard import MetricsHistory as MetricsHistory
from .server._hosts import HostCheck as HostCheck
from .server._hosts import allowed_host as allowed_host
from .server._hosts import host_name as host_name
from .server._hosts import origin_form as origin_form
from .server._http import ROUTES as ROUTES
from .server._http import HTTPError as HTTPError
from .server._http import JobRequest as JobRequest
from .server._http import ListQuery as ListQuery
from .server._http import check_content_type as check_content_type
from .server._http import header_dict as header_dict
from .server._http import parse_event_filter as parse_event_filter
from .server._http import parse_job_request as parse_job_request
from .server._http import parse_list_query as parse_list_query
from .server._http import route as route
from .server._http import wants_prometheus as wants_prometheus
from .server._json import EventEncoder as EventEncoder
from .server._lean import serve_lean as serve_lean

__all__ = [
    "COUNTERS",
    "CSP",
    "ELLIPSIS",
    "GENERATED_SHAPE_SQL",
    "HISTORY_FIELDS",
    "KNOWN_ENV",
    "MAX_DEPTH",
    "MOVES",
    "RECORD_FIELDS",
    "REDIS_DEFAULT_LIMITS",
    "REMIND",
    "ROUTES",
    "STOP_GRACE",
    "TERMINAL",
    "TRANSITIONS",
    "UNSTARTED_MAX",
    "Admission",
    "Connection",
    "CorruptRecord",
    "Endpoint",
    "EventEncoder",
    "EventKind",
    "FairPicker",
    "HTTPError",
    "Holds",
    "HostCheck",
    "IdGenerator",
    "JobEvent",
    "JobRecord",
    "JobRequest",
    "ListQuery",
    "LocalBackend",
    "Lost",
    "MetricsHistory",
    "MonitorView",
    "NewJob",
    "NodeMetricsApp",
    "Outage",
    "Outcome",
    "Persistence",
    "Pipe",
    "ProtocolError",
    "Reaped",
    "RedisClient",
    "RedisNotSent",
    "RedisRefused",
    "RedisState",
    "RedisUnavailable",
    "SqliteStore",
    "StoredJob",
    "StreamEvent",
    "Waiting",
    "admitted",
    "allowed",
    "allowed_host",
    "app",
    "at_open",
    "backoff",
    "budget",
    "canonical_digest",
    "cells",
    "check_content_type",
    "check_json",
    "clean",
    "client_options",
    "client_verify",
    "compute_rates",
    "connect",
    "decode",
    "describe",
    "edge",
    "engine",
    "enqueue_created",
    "escape_help",
    "fit",
    "flow",
    "generated_shape",
    "h1",
    "header_dict",
    "host_name",
    "json_out",
    "label_set",
    "last_due",
    "lean",
    "lowered_switch_interval",
    "lua_script",
    "metrics_allowed_hosts",
    "metrics_options",
    "monitor",
    "move",
    "nests_deeper",
    "next_due",
    "origin_form",
    "pack",
    "parse_event_filter",
    "parse_job_request",
    "parse_list_query",
    "read_limits",
    "reads",
    "redis_backend",
    "redis_paths",
    "refusal",
    "render",
    "repeated",
    "rfc3339",
    "room",
    "route",
    "run_id",
    "run_in_thread",
    "serve_lean",
    "snapshot",
    "source",
    "sqlite_store",
    "stale_after",
    "stored_job",
    "table",
    "transition",
    "wants_prometheus",
    "wire",
]
