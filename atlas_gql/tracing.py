"""OpenTelemetry tracing (the `otel` extra: `pip install atlas-gql[otel]`), on with
ATLAS_TRACING, by default when OTEL_EXPORTER_OTLP_ENDPOINT is set.

What is traced: each GraphQL operation (graph/tracing.py, a SERVER span, the parent of all its
work), SQL statements (SQLAlchemy instrumentation, statements without values; those sent on
the driver's connection below the engine, db/driver.py, get the same span), the upstream
calls of the OpenAI SDK (aiohttp client instrumentation for the default transport; httpx's for
code on httpx) and Redis commands. Spans go over OTLP/HTTP to OTEL_EXPORTER_OTLP_ENDPOINT; with
ATLAS_TRACING=true and no endpoint, to whatever tracer provider the process already has (one
set up by `opentelemetry-instrument`, or a test's)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from atlas_gql import __version__
from atlas_gql.config import Settings
from atlas_gql.db import driver

logger = logging.getLogger(__name__)


class TracingUnavailable(RuntimeError):
    """ATLAS_TRACING is on but the `otel` extra is not installed."""


def require_tracing() -> None:
    """Fail early, naming the extra, when tracing is on but OpenTelemetry is not installed."""
    try:
        import opentelemetry.sdk.trace  # noqa: F401
        import strawberry.extensions.tracing.opentelemetry  # noqa: F401
    except ImportError as error:
        raise TracingUnavailable(
            "ATLAS_TRACING needs the otel extra: pip install 'atlas-gql[otel]'"
        ) from error


def start_tracing(settings: Settings, *, engine: AsyncEngine) -> Callable[[], None]:
    """Set up the exporter (when an endpoint is set) and the instrumentations; returns what
    undoes the instrumentations (the app's lifespan calls it at shutdown)."""
    try:
        from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
        from opentelemetry.instrumentation.redis import RedisInstrumentor
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
    except ImportError as error:
        raise TracingUnavailable(
            "ATLAS_TRACING needs the otel extra: pip install 'atlas-gql[otel]'"
        ) from error

    if settings.otel_exporter_otlp_endpoint is not None:
        _export_over_otlp(settings.otel_exporter_otlp_endpoint)

    instrumentors: list[Any] = [
        AioHttpClientInstrumentor(),
        HTTPXClientInstrumentor(),
        RedisInstrumentor(),
    ]
    for instrumentor in instrumentors:
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument()
    sql = SQLAlchemyInstrumentor()
    # Its declared range ends before SQLAlchemy 2.1, whose engine events it uses unchanged
    # (tests/ai/test_tracing.py checks the SQL spans).
    sql.instrument(engine=engine.sync_engine, skip_dep_check=True)
    # Statements sent below the engine (db/driver.py) get the same kind of span.
    driver.trace_statements(_driver_spans())

    def stop() -> None:
        driver.trace_statements(None)
        for instrumentor in (*instrumentors, sql):
            with contextlib.suppress(Exception):
                instrumentor.uninstrument()

    return stop


def _driver_spans() -> Callable[[str], contextlib.AbstractContextManager[Any]]:
    """What makes a CLIENT span for a statement sent on the driver's connection, named and
    attributed as the SQLAlchemy instrumentation names a statement's (the statement without
    its values); its tracer is made once, not per statement."""
    from opentelemetry import trace as otel_trace

    tracer = otel_trace.get_tracer("atlas_gql.db.driver", __version__)

    def span(sql: str) -> contextlib.AbstractContextManager[Any]:
        return tracer.start_as_current_span(
            sql.split(maxsplit=1)[0] if sql.strip() else "postgresql",
            kind=otel_trace.SpanKind.CLIENT,
            attributes={"db.system": "postgresql", "db.statement": sql},
        )

    return span


def _export_over_otlp(endpoint: str) -> None:
    from opentelemetry import trace as otel_trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if isinstance(otel_trace.get_tracer_provider(), TracerProvider):
        return  # set up already (an earlier app of this process, or opentelemetry-instrument)
    # OpenTelemetry's own variables (OTEL_EXPORTER_OTLP_*) are honoured by the exporter; the
    # endpoint may also come from .env, which the exporter does not read.
    traces_endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or (
        endpoint.rstrip("/") + "/v1/traces"
    )
    provider = TracerProvider(
        resource=Resource.create(
            {
                "service.name": os.environ.get("OTEL_SERVICE_NAME", "atlas-gql"),
                "service.version": __version__,
            }
        )
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_endpoint)))
    otel_trace.set_tracer_provider(provider)
    logger.info("exporting traces to %s", traces_endpoint)
