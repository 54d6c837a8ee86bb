"""What ``trioqueue monitor`` shows, apart from the connection: samples and rates, the
messages it reads checked, the view's state and its layout (see :mod:`._monitor`)."""

from __future__ import annotations

import json
import math
import time
import unicodedata
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import attrs

from ._job import Job

COUNTERS = ("enqueued", "started", "completed", "failed", "retried", "cancelled", "rejected")
"""The server's totals since it started (``GET /metrics``)."""
RATES = ("enqueued", "completed", "failed", "retried")
"""The counters shown as rates."""
STALE_DEFAULT = 10.0
"""Seconds without a message after which the connection counts as lost, until the
server's ``history`` message tells its metrics interval."""
FAILURES_KEPT = 50
LABEL_WIDTH = 10
ELLIPSIS = "\u2026"


class ProtocolError(Exception):
    """The server sent a message this monitor cannot read (names the field)."""


def stale_after(interval: float | None) -> float:
    """Seconds of silence after which a connection counts as lost: ten metrics
    intervals, at least one second."""
    return STALE_DEFAULT if interval is None else max(1.0, 10.0 * interval)


# ---------------------------------------------------------------------------- samples


@attrs.frozen
class Sample:
    """The server's counters at one moment (``at``: seconds since the epoch, the
    server's clock), and its busy worker-seconds when the sample is a full snapshot."""

    at: float
    counters: Mapping[str, int]
    busy_seconds: float | None = None
    workers: int | None = None


@attrs.frozen
class Rates:
    """Per-second rates over the last ``span`` seconds; ``utilization`` (0..1) over the
    last ``utilization_span`` seconds, or None with fewer than two full snapshots."""

    span: float
    per_second: Mapping[str, float]
    utilization: float | None = None
    utilization_span: float | None = None


def _base(samples: Sequence[Sample], window: float) -> Sample:
    """The newest sample at least ``window`` before the last one, else the oldest."""
    newest = samples[-1]
    found = samples[0]
    for sample in samples:
        if sample.at <= newest.at - window:
            found = sample
        else:
            break
    return found


def compute_rates(samples: Sequence[Sample], window: float) -> Rates | None:
    """Rates between the newest sample and the one ``window`` seconds before it (or the
    oldest there is); None with fewer than two samples."""
    if len(samples) < 2:
        return None
    newest = samples[-1]
    base = _base(samples, window)
    span = newest.at - base.at
    if span <= 0:
        return None
    per_second = {name: max(0, newest.counters[name] - base.counters[name]) / span
                  for name in RATES}
    full = [s for s in samples if s.busy_seconds is not None]
    utilization = utilization_span = None
    if len(full) >= 2:
        last, first = full[-1], _base(full, window)
        elapsed = last.at - first.at
        if (elapsed > 0 and last.workers and last.busy_seconds is not None
                and first.busy_seconds is not None):
            busy = last.busy_seconds - first.busy_seconds
            utilization = min(1.0, max(0.0, busy / (elapsed * last.workers)))
            utilization_span = elapsed
    return Rates(span, per_second, utilization, utilization_span)


# ---------------------------------------------------------------------------- messages


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _count(data: Mapping[str, Any], name: str, where: str) -> int:
    value = data.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError(f"{where}.{name}: expected a count, got {_short(value)}")
    return value


def _optional_number(data: Mapping[str, Any], name: str, where: str) -> float | None:
    value = data.get(name)
    return None if value is None else _number(data, name, where)


def _number(data: Mapping[str, Any], name: str, where: str) -> float:
    value = data.get(name)
    if (not isinstance(value, (int, float)) or isinstance(value, bool)
            or not math.isfinite(value) or value < 0):
        raise ProtocolError(f"{where}.{name}: expected a number >= 0, got {_short(value)}")
    return float(value)


def _object(data: Mapping[str, Any], name: str, where: str) -> dict[str, Any]:
    value = data.get(name)
    if not isinstance(value, dict):
        raise ProtocolError(f"{where}.{name}: expected an object, got {_short(value)}")
    return value


def decode(message: str | bytes) -> dict[str, Any]:
    """One websocket message as a JSON object with a string ``type``."""
    if not isinstance(message, str):
        raise ProtocolError("expected a text message, got a binary one")
    try:
        data = json.loads(message)
    except ValueError:
        raise ProtocolError(f"expected JSON, got {_short(message)}") from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ProtocolError(f"expected an object with a 'type', got {_short(message)}")
    return data


def metrics_sample(at: float, metrics: Mapping[str, Any]) -> tuple[Sample, dict[str, Any]]:
    """A ``metrics`` event's snapshot, checked: the sample and the values to show."""
    where = "metrics"
    counters = {name: _count(metrics, name, where) for name in COUNTERS}
    workers = _count(metrics, "workers", where)
    shown: dict[str, Any] = dict(counters)
    for name in ("scheduled", "processing", "busy_workers"):
        shown[name] = _count(metrics, name, where)
    shown["workers"] = workers
    queued = _object(metrics, "queued", where)
    shown["queued"] = {str(p)[:20]: _count(queued, p, f"{where}.queued") for p in queued}
    for name in ("wait_p50", "wait_p99", "run_p50", "run_p99"):
        shown[name] = _optional_number(metrics, name, where)
    uptime = _number(metrics, "uptime", where)
    utilization = _number(metrics, "utilization", where)
    shown["uptime"] = uptime
    # utilization = busy worker-seconds / (uptime * workers): the busy time since start,
    # whose delta over a window is the utilization now.
    busy = utilization * uptime * workers
    return Sample(at, counters, busy, workers), shown


def history_samples(data: Mapping[str, Any]) -> tuple[float, list[Sample]]:
    """A ``history`` message: the server's metrics interval and its samples, oldest
    first (samples missing a counter are skipped)."""
    interval = _number(data, "interval", "history")
    raw = data.get("samples")
    if not isinstance(raw, list):
        raise ProtocolError(f"history.samples: expected a list, got {_short(raw)}")
    samples = []
    for i, item in enumerate(raw):
        where = f"history.samples[{i}]"
        if not isinstance(item, dict):
            raise ProtocolError(f"{where}: expected an object, got {_short(item)}")
        if any(item.get(name) is None for name in COUNTERS):
            continue
        at = _number(item, "at", where)
        samples.append(Sample(at, {name: _count(item, name, where) for name in COUNTERS}))
    return interval, samples


def printable(value: Any) -> str:
    """Text from the network for one terminal line: control characters escaped."""
    text = "-" if value is None else str(value)
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


# ---------------------------------------------------------------------------- the view


@attrs.define
class Connection:
    """The state of the connection to the server (times on Trio's clock, except the
    ``*_wall`` ones: seconds since the epoch)."""

    state: Literal["connecting", "connected", "disconnected"] = "connecting"
    reason: str | None = None
    """Why the last connection ended or the last attempt failed."""
    retry_at: float | None = None
    """When the next attempt starts (while disconnected)."""
    ever_connected: bool = False
    down_since: float | None = None
    back_wall: float | None = None
    """When the connection came back after the last drop."""
    outage: float | None = None
    """How long the last drop lasted."""


class MonitorView:
    """What the monitor knows: metrics snapshots, recent failures, the connection.

    Feed it with :meth:`receive` (a decoded message), :meth:`connected` and
    :meth:`disconnected`; :func:`render` draws it.
    """

    def __init__(self, url: str, window: float = 5.0) -> None:
        self.url = printable(url)
        self.window = window
        self.samples: deque[Sample] = deque()
        self.metrics: dict[str, Any] = {}
        self.metrics_at: float | None = None
        """When the server took ``metrics`` (seconds since the epoch)."""
        self.failures: deque[tuple[float, str, str]] = deque(maxlen=FAILURES_KEPT)
        """(at, what failed, the error), newest first."""
        self.lagged = 0
        self.interval: float | None = None
        """The server's metrics interval (from its ``history`` message)."""
        self.conn = Connection()

    # -------------------------------------------------------------- feeding

    def receive(self, data: Mapping[str, Any]) -> None:
        """One decoded message; raise :class:`ProtocolError` for a malformed one."""
        kind = data["type"]
        if kind == "metrics":
            at = _number(data, "at", "metrics event")
            sample, shown = metrics_sample(at, _object(data, "metrics", "metrics event"))
            self.metrics, self.metrics_at = shown, at
            self._add(sample)
        elif kind == "history":
            self.interval, samples = history_samples(data)
            for sample in samples:
                self._add(sample)
        elif kind in ("failed", "retrying"):
            at = _number(data, "at", kind)
            about = (f"{kind} {printable(data.get('task'))} {printable(data.get('job_id'))} "
                     f"attempt {printable(data.get('attempt'))}")
            self.failures.appendleft((at, about, printable(data.get("error"))))
        elif kind == "lagged":
            self.lagged += _count(data, "dropped", "lagged")
        # Other types (a newer server's) are not shown.

    def seed_failures(self, jobs: Sequence[Job]) -> None:
        """Jobs that ended FAILED before the monitor connected (newest first, as
        ``GET /jobs?status=failed`` lists them), shown while no failure came by the
        stream."""
        if self.failures:
            return
        for job in reversed(jobs[:FAILURES_KEPT]):
            at = job.created_at if job.finished_at is None else job.finished_at
            about = (f"failed {printable(job.task)} {printable(job.id)} "
                     f"attempt {printable(job.attempts)}")
            self.failures.appendleft((at, about, printable(job.error)))

    def _add(self, sample: Sample) -> None:
        samples = self.samples
        if samples:
            last = samples[-1]
            if sample.at <= last.at:
                return  # not newer (a history sample the first snapshot already covers)
            if any(sample.counters[n] < last.counters[n] for n in COUNTERS):
                samples.clear()  # counters went back: another server answers now
        samples.append(sample)
        # Keep one sample at or before the window's start, and everything after it.
        while len(samples) > 2 and samples[1].at <= sample.at - self.window:
            samples.popleft()

    def connected(self, now: float, wall: float) -> None:
        """The server answered (the connection's first message arrived)."""
        conn = self.conn
        if conn.ever_connected and conn.down_since is not None:
            conn.outage = now - conn.down_since
            conn.back_wall = wall
        conn.state, conn.reason, conn.retry_at = "connected", None, None
        conn.ever_connected = True
        conn.down_since = None

    def connecting(self) -> None:
        """A connection attempt starts: its ``history`` refills the samples."""
        self.samples.clear()

    def disconnected(self, reason: str, retry_at: float, now: float) -> None:
        """The connection ended (or an attempt failed); the next one starts at
        ``retry_at``."""
        conn = self.conn
        if conn.state == "connected" or conn.down_since is None:
            conn.down_since = now
        conn.state, conn.reason, conn.retry_at = "disconnected", reason, retry_at

    def rates(self) -> Rates | None:
        if self.conn.state != "connected":
            return None
        return compute_rates(self.samples, self.window)


# ---------------------------------------------------------------------------- layout


def cells(text: str) -> int:
    """Terminal columns ``text`` takes: wide (East Asian) characters two, combining
    marks none."""
    total = 0
    for c in text:
        if unicodedata.combining(c):
            continue
        total += 2 if unicodedata.east_asian_width(c) in ("W", "F") else 1
    return total


def fit(text: str, width: int | None) -> str:
    """``text`` cut to ``width`` columns, the cut marked with an ellipsis."""
    if width is None or cells(text) <= width:
        return text
    if width < 1:
        return ""
    out, used = [], 0
    for c in text:
        w = cells(c)
        if used + w > width - 1:
            break
        out.append(c)
        used += w
    return "".join(out).rstrip() + ELLIPSIS


def flow(label: str, items: Sequence[str], width: int | None,
         indent: int = LABEL_WIDTH, sep: str = "  ") -> list[str]:
    """``label`` then ``items`` ``sep`` apart, as many per line as fit in ``width``; the
    rest on following lines under the first item.  An item is never split: one too long
    for a line of its own is cut with an ellipsis."""
    if width is not None:
        indent = min(indent, max(0, width // 4))
    head = (fit(label, max(0, indent - 1)).ljust(indent) if indent else "") if label else ""
    pad = " " * len(head)
    lines: list[str] = []
    line, used = head, False
    for item in items:
        joined = line + (sep if used else "") + item
        if width is None or cells(joined) <= width:
            line, used = joined, True
            continue
        if used:
            lines.append(line)
            line = pad
        line, used = fit(line + item, width), True
    lines.append(line)
    return [fit(x.rstrip(), width) for x in lines]


def _rate(value: float) -> str:
    return f"{value:,.0f}/s" if value >= 100 else f"{value:.1f}/s"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1:
        return f"{value:.2f} s"
    return f"{1000 * value:.1f} ms"


def _span(seconds: float) -> str:
    return f"last {seconds:.1f} s" if seconds < 1.95 else f"last {seconds:.0f} s"


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_in(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 1 else f"{math.ceil(seconds - 1e-9)} s"


def format_clock(wall: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall))


def status_items(view: MonitorView, now: float) -> list[str]:
    """The connection's state, as items for :func:`flow`."""
    conn = view.conn
    if conn.state == "connected":
        items = ["connected"]
        if conn.back_wall is not None and conn.outage is not None:
            items.append(f"(reconnected {format_clock(conn.back_wall)} after {conn.outage:.1f} s)")
        return items
    if conn.state == "connecting":
        return [f"connecting{ELLIPSIS}"]
    first = "disconnected:" if conn.ever_connected else "cannot connect:"
    items = [f"{first} {conn.reason};"]
    if conn.retry_at is not None and conn.retry_at > now:
        items.append(f"reconnecting in {format_in(conn.retry_at - now)}")
    else:
        items.append(f"reconnecting{ELLIPSIS}")
    return items


def render(view: MonitorView, width: int | None, height: int | None = None,
           now: float = 0.0) -> list[str]:
    """The monitor's frame: lines no wider than ``width`` columns and at most ``height``
    of them (None: no limit).  ``now`` is Trio's clock (for "reconnecting in N s")."""
    m = view.metrics
    rows: list[str] = []
    title = ["trioqueue monitor", view.url]
    if m and view.conn.state == "connected":
        title.append(f"up {_duration(m['uptime'])}")
    elif m and view.metrics_at is not None:
        title.append(f"figures as of {format_clock(view.metrics_at)}")
    rows += flow("", title, width)
    rows += flow("", " ".join(status_items(view, now)).split(" "), width, sep=" ")
    rates = view.rates()
    if rates is not None:
        rate_items = [_span(rates.span)] + [f"{name} {_rate(rates.per_second[name])}"
                                            for name in RATES]
    elif view.conn.state == "connected":
        rate_items = [f"measuring{ELLIPSIS}"]
    else:
        rate_items = ["- (not connected)"]
    rows += flow("rates", rate_items, width)
    if m:
        workers = [f"{m['busy_workers']}/{m['workers']} busy now"]
        if rates is not None and rates.utilization is not None:
            assert rates.utilization_span is not None
            workers.append(f"utilization {100 * rates.utilization:.0f}% "
                           f"{_span(rates.utilization_span)}")
        else:
            workers.append("utilization -")
        rows += flow("workers", workers, width)
        queued = [f"{p} {n:,}" for p, n in m["queued"].items()]
        rows += flow("queued", [*queued, f"scheduled {m['scheduled']:,}",
                                f"processing {m['processing']:,}"], width)
        rows += flow("latency", [f"wait p50 {_seconds(m['wait_p50'])}",
                                 f"p99 {_seconds(m['wait_p99'])}",
                                 f"run p50 {_seconds(m['run_p50'])}",
                                 f"p99 {_seconds(m['run_p99'])}"], width)
        rows += flow("totals", [f"{name} {m[name]:,}" for name in COUNTERS
                                if name != "started"], width)
    if view.lagged:
        rows += flow("lagged", [f"{view.lagged:,} event{'' if view.lagged == 1 else 's'} "
                                "dropped",
                                "(this monitor fell behind)"], width)
    room = None if height is None else height - len(rows) - 1
    if room is not None and room < 0:
        return rows[:height]
    if not view.failures:
        rows.append(fit("recent failures: none", width))
        return rows
    # One line per failure where it fits whole, else the error on a line of its own.
    lines: list[str] = []
    shown = 0
    for at, about, error in view.failures:
        whole = f"  {format_clock(at)} {about}: {error}"
        entry = [whole] if width is None or cells(whole) <= width else [
            fit(f"  {format_clock(at)} {about}", width), fit(f"    {error}", width)]
        if room is not None and len(lines) + len(entry) > room:
            break
        lines += entry
        shown += 1
    more = len(view.failures) - shown
    header = "recent failures, newest first:" + (f" ({more} more)" if more else "")
    rows.append(fit(header, width))
    return rows + lines


def plain_line(view: MonitorView) -> str:
    """One log line for output that is not a terminal."""
    m = view.metrics
    parts = []
    rates = view.rates()
    if rates is not None:
        parts.append(_span(rates.span) + ": " + " ".join(
            f"{name} {_rate(rates.per_second[name])}" for name in RATES))
    if m:
        busy = f"busy {m['busy_workers']}/{m['workers']}"
        if rates is not None and rates.utilization is not None:
            busy += f" utilization {100 * rates.utilization:.0f}%"
        parts.append(busy)
        parts.append(f"queued {sum(m['queued'].values()):,} processing {m['processing']:,}")
        parts.append(" ".join(f"{name} {m[name]:,}" for name in ("completed", "failed")))
    return f"{format_clock(time.time())} " + " | ".join(parts or [f"measuring{ELLIPSIS}"])
