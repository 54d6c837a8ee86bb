"""The Redis state layer: key layout, Lua scripts, and typed operations over the client.

One queue's state lives in Redis under ``tq:{<queue>}:``; every process opened on the same
URL and queue name shares it.  :func:`connect` opens the client (our pipelined
connection for the scripts, coredis for blocking calls);
:class:`RedisState` runs the scripts.  docs/redis-design.md describes both.
"""

from ._client import (
    MAX_BLOCK,
    RedisClient,
    RedisNotSent,
    RedisRefused,
    RedisUnavailable,
    at_open,
    connect,
)
from ._state import (
    MAX_BATCH,
    MAX_CLAIM,
    RECORD_FIELDS,
    Admission,
    Admitted,
    CorruptRecord,
    Counts,
    EventBatch,
    EventReader,
    FinishClaim,
    NewJob,
    NodeInfo,
    Outcome,
    Promoted,
    Reaped,
    RedisState,
    Renewal,
    StoredJob,
    StreamEvent,
    canonical_digest,
    check_name,
    stored_job,
)

__all__ = [
    "MAX_BATCH",
    "MAX_BLOCK",
    "MAX_CLAIM",
    "RECORD_FIELDS",
    "Admission",
    "Admitted",
    "CorruptRecord",
    "Counts",
    "EventBatch",
    "EventReader",
    "FinishClaim",
    "NewJob",
    "NodeInfo",
    "Outcome",
    "Promoted",
    "Reaped",
    "RedisClient",
    "RedisNotSent",
    "RedisRefused",
    "RedisState",
    "RedisUnavailable",
    "Renewal",
    "StoredJob",
    "StreamEvent",
    "at_open",
    "canonical_digest",
    "check_name",
    "connect",
    "stored_job",
]
