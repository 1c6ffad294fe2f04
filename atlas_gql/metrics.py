"""Prometheus series of ATLAS, and what one request did (its id, operation, SQL statements).

Kernel: every layer may count here, nothing here knows a domain. The series live in
prometheus-client's default registry; under `atlas-gql serve --workers N` (N > 1) `serve` sets
PROMETHEUS_MULTIPROC_DIR before the workers start, so every series is kept in files shared by
the workers and `GET /metrics` on any worker answers for all of them (docs/observability.md).
Gauges are therefore declared with a multiprocess mode ("livesum": the live workers' sum).

Label values are bounded: operation names and model names pass through `BoundedLabel`, which
keeps the first `limit` distinct values and answers `other` after that, so a client that sends
random operation names cannot grow the process's memory or the scrape."""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
ANONYMOUS = "anonymous"
OTHER = "other"
OK = "OK"

# Names as GraphQL spells them; anything else (and anything longer) is not a label value.
_NAME = re.compile(r"^[_A-Za-z][_0-9A-Za-z]{0,63}$")
_MODEL = re.compile(r"^[-_.:/0-9A-Za-z]{1,100}$")
# A request id a client or a proxy may choose: short, printable, no spaces or quotes.
_REQUEST_ID = re.compile(r"^[-_.:/+=0-9A-Za-z]{8,64}$")


class BoundedLabel:
    """The first `limit` distinct accepted values are label values; later ones are `other`."""

    def __init__(self, limit: int, pattern: re.Pattern[str], *, missing: str) -> None:
        self.limit = limit
        self.pattern = pattern
        self.missing = missing
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str | None) -> str:
        if not value:
            return self.missing
        if not isinstance(value, str):
            return OTHER
        if value in self._seen:
            return value
        if not self.pattern.match(value):
            return OTHER
        with self._lock:
            if len(self._seen) >= self.limit:
                return OTHER
            self._seen.add(value)
        return value


operation_label = BoundedLabel(200, _NAME, missing=ANONYMOUS)
model_label = BoundedLabel(50, _MODEL, missing="unknown")

# `*_created` timestamps double the scrape and say nothing a restart count does not.
disable_created_metrics()  # type: ignore[no-untyped-call]

# --- series ------------------------------------------------------------------------------------

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
UPSTREAM_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
STATEMENT_BUCKETS = (0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89)

REQUESTS = Counter(
    "atlas_graphql_requests",
    "GraphQL operations, by operation type and outcome (OK or the first error's code).",
    ["operation_type", "outcome"],
)
REQUEST_LATENCY = Histogram(
    "atlas_graphql_request_duration_seconds",
    "Time from the start of an operation to its result, by operation type and name (named "
    "operations only; unnamed ones are `anonymous`, names past the first 200 `other`).",
    ["operation_type", "operation_name"],
    buckets=LATENCY_BUCKETS,
)
SQL_STATEMENTS = Histogram(
    "atlas_sql_statements_per_request",
    "SQL statements one HTTP request or WebSocket operation sent to PostgreSQL.",
    ["operation_type"],
    buckets=STATEMENT_BUCKETS,
)
DB_POOL_IN_USE = Gauge(
    "atlas_db_pool_connections_in_use",
    "Database connections checked out of the pool.",
    multiprocess_mode="livesum",
)
WEBSOCKETS = Gauge(
    "atlas_websocket_connections",
    "Open WebSocket connections.",
    multiprocess_mode="livesum",
)
SUBSCRIPTIONS = Gauge(
    "atlas_subscriptions_active",
    "Subscriptions being served (threadEvents streams).",
    multiprocess_mode="livesum",
)
REPLIES_IN_FLIGHT = Gauge(
    "atlas_replies_in_flight",
    "Assistant replies this server is streaming from the model provider.",
    multiprocess_mode="livesum",
)
DELTAS_PUBLISHED = Counter("atlas_deltas_published", "MessageDelta events published to the broker.")
DELTAS_DELIVERED = Counter(
    "atlas_deltas_delivered", "MessageDelta events sent to subscribers (one per subscriber)."
)
UPSTREAM_LATENCY = Histogram(
    "atlas_upstream_reply_duration_seconds",
    "Duration of a reply's upstream stream, from the request to its end, by API and outcome.",
    ["api", "outcome"],
    buckets=UPSTREAM_BUCKETS,
)
UPSTREAM_ERRORS = Counter(
    "atlas_upstream_errors",
    "Model provider failures, by HTTP status (`none`: no status, e.g. a timeout or a cut).",
    ["status"],
)
TOKENS = Counter(
    "atlas_ai_tokens", "Tokens of finished replies, by model and kind.", ["model", "kind"]
)
COST = Counter("atlas_ai_cost_usd", "Cost of finished replies in US dollars, by model.", ["model"])
RATE_LIMIT_REFUSALS = Counter(
    "atlas_rate_limit_refusals", "Operations refused with RATE_LIMITED.", ["operation_type"]
)
BUDGET_REFUSALS = Counter(
    "atlas_budget_refusals", "Operations refused with QUOTA_EXCEEDED (token budgets)."
)


# --- what one request did ----------------------------------------------------------------------


def new_request_id() -> str:
    return uuid.uuid4().hex


def accept_request_id(value: str | None) -> str:
    """The X-Request-ID a client or proxy sent when it is sane (8-64 safe characters), else a
    new one: it reaches logs, headers and ErrorLog rows, so nothing else may pass."""
    if value and _REQUEST_ID.match(value):
        return value
    return new_request_id()


@dataclass
class RequestRecord:
    """One HTTP request (or one WebSocket operation): filled as it runs, logged when it ends."""

    request_id: str
    started: float = field(default_factory=time.perf_counter)
    operation_type: str | None = None
    operation_name: str | None = None
    outcome: str | None = None
    viewer_id: str | None = None
    sql_statements: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def finish_operation(
        self,
        *,
        operation_type: str,
        operation_name: str | None,
        outcome: str,
        viewer_id: str | None,
        duration: float,
    ) -> None:
        """Describe the request's GraphQL operation on the record and count it: the one
        place both read paths (executor and compiled statement) report what ran."""
        self.operation_type = operation_type
        self.operation_name = operation_name
        self.outcome = outcome
        self.viewer_id = viewer_id
        observe_operation(
            operation_type=operation_type,
            operation_name=operation_name,
            outcome=outcome,
            duration=duration,
        )


_current_request: ContextVar[RequestRecord | None] = ContextVar("atlas_request", default=None)


def current_request() -> RequestRecord | None:
    return _current_request.get()


def begin_record(record: RequestRecord) -> Token[RequestRecord | None]:
    return _current_request.set(record)


def end_record(token: Token[RequestRecord | None]) -> None:
    _current_request.reset(token)


@contextmanager
def recording(record: RequestRecord) -> Iterator[RequestRecord]:
    """Make `record` the current request's for the block (and the tasks it starts)."""
    token = _current_request.set(record)
    try:
        yield record
    finally:
        _current_request.reset(token)


def observe_operation(
    *,
    operation_type: str,
    operation_name: str | None,
    outcome: str,
    duration: float,
) -> None:
    """Count one finished GraphQL operation."""
    REQUESTS.labels(operation_type, outcome).inc()
    REQUEST_LATENCY.labels(operation_type, operation_label(operation_name)).observe(duration)
    if outcome == "RATE_LIMITED":
        RATE_LIMIT_REFUSALS.labels(operation_type).inc()
    elif outcome == "QUOTA_EXCEEDED":
        BUDGET_REFUSALS.inc()


def observe_usage(*, model: str, input_tokens: int, output_tokens: int, cost_usd: float) -> None:
    """Count a finished reply's tokens and cost."""
    label = model_label(model)
    TOKENS.labels(label, "input").inc(input_tokens)
    TOKENS.labels(label, "output").inc(output_tokens)
    COST.labels(label).inc(cost_usd)


def observe_upstream(
    *, api: str, duration: float, failed: bool, http_status: int | None = None
) -> None:
    """Count one upstream reply stream, and its failure."""
    UPSTREAM_LATENCY.labels(api, "error" if failed else "ok").observe(duration)
    if failed:
        UPSTREAM_ERRORS.labels(str(http_status) if http_status else "none").inc()


# --- the database engine -----------------------------------------------------------------------


def instrument_engine(engine: AsyncEngine) -> None:
    """Count statements per request and pooled connections in use (idempotent)."""
    sync_engine = engine.sync_engine
    if event.contains(sync_engine, "before_cursor_execute", _count_statement):
        return
    event.listen(sync_engine, "before_cursor_execute", _count_statement)
    event.listen(sync_engine.pool, "checkout", _checked_out)
    event.listen(sync_engine.pool, "checkin", _checked_in)


def count_driver_statement() -> None:
    """Count a statement sent on the driver's connection, below the engine's hook
    (`db.driver`), on the current request's record."""
    _count_statement()


def _count_statement(*_: Any) -> None:
    # SQLAlchemy's async bridge runs this in a greenlet sharing the caller's context.
    record = _current_request.get()
    if record is not None:
        record.sql_statements += 1


def _checked_out(*_: Any) -> None:
    DB_POOL_IN_USE.inc()


def _checked_in(*_: Any) -> None:
    DB_POOL_IN_USE.dec()


# --- exposition --------------------------------------------------------------------------------


def multiprocess_enabled() -> bool:
    return bool(os.environ.get(MULTIPROCESS_ENV))


def exposition() -> tuple[bytes, str]:
    """The Prometheus text of every series (of every worker in multiprocess mode)."""
    if multiprocess_enabled():
        registry = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def mark_worker_stopped() -> None:
    """A worker that stops takes its live gauges out of the shared sums."""
    if multiprocess_enabled():
        prometheus_multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
