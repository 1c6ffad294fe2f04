"""The ASGI application: `create_app(settings)`; the lifespan owns engine, broker and clients."""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from atlas_gql import __version__, metrics
from atlas_gql.config import MetricsAccess, Settings, get_settings
from atlas_gql.db.engine import create_engine, create_sessionmaker
from atlas_gql.db.runtime import resolve_database_target
from atlas_gql.db.utils import check_db_connection
from atlas_gql.edge import (
    BodyTimeoutMiddleware,
    ClientAddresses,
    ClientAddressMiddleware,
    JsonCORSMiddleware,
)
from atlas_gql.graph.ide import graphiql_static_route
from atlas_gql.graph.limits import BodySizeLimitMiddleware
from atlas_gql.graph.schema import build_schema
from atlas_gql.graph.services import start_services, stop_services
from atlas_gql.graph.views import ALLOW, AtlasGraphQL, error_response
from atlas_gql.logformat import configure_logging
from atlas_gql.observability import RequestObservationMiddleware, metrics_endpoint
from atlas_gql.runtime import Runtime
from atlas_gql.tracing import require_tracing, start_tracing

logger = logging.getLogger(__name__)

READINESS_TIMEOUT_SECONDS = 2.0
GRAPHQL_PATH = "/graphql"


class AtlasApp(Starlette):
    """The Starlette app, whose GraphQL WebSocket bypasses the HTTP middleware chain.

    A WebSocket to /graphql lives as long as its client likes (an idle subscription: hours),
    and every middleware it passes keeps a coroutine frame for that long: Starlette's error and
    exception middlewares, routing, and each of ours (issue 14 part 5, memory per idle
    subscription). What those middlewares do for a WebSocket is done here, in one frame: the
    real client behind trusted proxies (`ClientAddresses`), the open-connections gauge. The
    others do nothing for a WebSocket (body size, body pace, CORS, request ids and access
    lines are HTTP's; an exception ends the socket as it did through them: uvicorn closes it
    with 1011). The Origin check and the handshake are the view's (Strawberry), as before.
    Every other scope and path takes the chain."""

    graphql_websocket: Callable[[WebSocket], Awaitable[Any]]
    client_addresses: ClientAddresses

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == GRAPHQL_PATH:
            scope["app"] = self
            self.client_addresses.rewrite(scope)
            metrics.WEBSOCKETS.inc()
            try:
                await self.graphql_websocket(WebSocket(scope, receive, send))
            finally:
                metrics.WEBSOCKETS.dec()
            return
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings | None = None,
    *,
    engine: AsyncEngine | None = None,
    sessionmaker: async_sessionmaker[AsyncSession] | None = None,
) -> Starlette:
    """Build the app. Pass `engine` (and a `sessionmaker`, e.g. one bound to a test
    transaction) to share them; otherwise the lifespan creates its own engine."""
    settings = settings or get_settings()
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        own_engine = engine is None
        active_engine = engine or create_engine(
            resolve_database_target(settings),
            pool_size=settings.atlas_db_pool_size,
            max_overflow=settings.atlas_db_max_overflow,
            pool_timeout=settings.atlas_db_pool_timeout,
            ping_after_idle=settings.atlas_db_ping_after_idle,
        )
        metrics.instrument_engine(active_engine)
        # Before the services start, so the clients they make (OpenAI, Redis) are traced.
        stop_tracing = (
            start_tracing(settings, engine=active_engine) if settings.tracing_enabled else None
        )
        runtime = Runtime(
            settings=settings,
            engine=active_engine,
            sessionmaker=sessionmaker or create_sessionmaker(active_engine),
        )
        state["runtime"] = runtime
        # The domains' long-lived parts: the AI domain's event broker, OpenAI client, reply
        # orchestrator and stale-reply sweep; the login limiter.
        services = await start_services(runtime)
        state["services"] = services
        graphql_app.services = services
        freeze_after_startup()
        try:
            yield
        finally:
            await stop_services(services)
            await runtime.drain()
            await runtime.close()
            if own_engine:
                await active_engine.dispose()
            metrics.mark_worker_stopped()
            if stop_tracing is not None:
                stop_tracing()

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "version": __version__})

    async def readyz(request: Request) -> JSONResponse:
        runtime: Runtime = state["runtime"]
        if await check_db_connection(runtime.engine, timeout=READINESS_TIMEOUT_SECONDS):
            return JSONResponse({"status": "ready", "database": "ok"})
        return JSONResponse({"status": "unavailable", "database": "unreachable"}, status_code=503)

    if settings.tracing_enabled:
        require_tracing()
    schema = build_schema(settings)
    state["schema"] = schema
    # The services are attached by the lifespan; the view exists earlier so routes can mount it.
    graphql_app = AtlasGraphQL(schema, settings=settings)
    state["graphql"] = graphql_app

    app = AtlasApp(
        debug=False,
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            *(
                [Route("/metrics", metrics_endpoint(settings), methods=["GET"])]
                if settings.atlas_metrics is not MetricsAccess.OFF
                else []
            ),
            *([graphiql_static_route()] if settings.graphiql_enabled else []),
            Route(GRAPHQL_PATH, graphql_app, methods=["GET", "POST"]),
            # AtlasApp serves this WebSocket before the chain; the route stays for one that
            # reaches the router another way (the app mounted under a prefix).
            WebSocketRoute(GRAPHQL_PATH, graphql_app),
        ],
        middleware=[
            # Outermost: everything below sees the real client address and a bounded body read.
            Middleware(ClientAddressMiddleware, trusted_proxies=settings.atlas_trusted_proxies),
            # Request ids, the access line, WebSocket counts: around everything that answers.
            Middleware(RequestObservationMiddleware),
            Middleware(BodyTimeoutMiddleware, timeout=settings.atlas_body_timeout),
            Middleware(
                JsonCORSMiddleware,
                allow_origins=settings.atlas_cors_origins,
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=[
                    "Authorization",
                    "Content-Type",
                    "Apollo-Require-Preflight",
                    "X-Apollo-Operation-Name",
                    "GraphQL-Preflight",
                ],
                max_age=600,
            ),
            Middleware(
                BodySizeLimitMiddleware,
                max_body_bytes=settings.atlas_max_body_bytes,
                max_upload_bytes=settings.atlas_max_upload_bytes,
            ),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
    app.graphql_websocket = graphql_app.websocket_session
    app.client_addresses = ClientAddresses(trusted_proxies=settings.atlas_trusted_proxies)
    app.state.atlas = state
    return app


async def http_error(request: Request, error: Exception) -> Response:
    """The router's refusals (unknown path, wrong method) as JSON with a code, like every
    other 4xx of the API."""
    assert isinstance(error, HTTPException)
    headers = dict(error.headers or {})
    if error.status_code == 405:
        if request.url.path == "/graphql":
            headers.update(ALLOW)  # Starlette lists HEAD, which the endpoint refuses
        allowed = headers.get("Allow", "")
        message = f"{request.method} is not allowed on {request.url.path}; use {allowed}."
    elif error.status_code == 404:
        message = f"Nothing at {request.url.path}; the GraphQL endpoint is /graphql."
    else:
        message = error.detail
    return error_response(error.status_code, message, headers=headers)


def app_factory() -> Starlette:
    """For `uvicorn --factory atlas_gql.app:app_factory` (what `atlas-gql serve` runs)."""
    settings = get_settings()
    configure_logging(settings)
    app = create_app(settings)
    tune_garbage_collector()
    return app


# Allocations (net of frees) between collections of the youngest generation, and collections
# of each generation between collections of the next (gc.set_threshold). See
# `tune_garbage_collector`.
GC_THRESHOLDS = (50_000, 20, 100)
_gc_tuned = False


def tune_garbage_collector() -> None:
    """A served process allocates many short-lived objects per request (ORM rows, GraphQL
    results). Moving what start-up created out of the collector's sight (gc.freeze) and
    collecting the youngest generation less often than CPython's default (700) cut the nested
    projects read by ~15-20% (bench/projects_nested.py); memory stays bounded, as every
    generation is still collected.

    A collection stops the event loop while it runs (issue 14: 20-50 ms for the youngest
    generation every ~2 s under 100 subscribers). A lower first threshold (5,000 or 10,000)
    makes those pauses shorter but more frequent and adds costly second-generation ones: the
    streaming bench's delta p99 did not improve (docs/ai.md), so it stays. What the lifespan
    builds (services, pools, clients) is frozen too, once started (`freeze_after_startup`)."""
    global _gc_tuned
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    _gc_tuned = True


def freeze_after_startup() -> None:
    """In a process tuned by `tune_garbage_collector` (a served one), once the lifespan has
    started: out of the collector's sight too, so no collection scans it again."""
    if _gc_tuned:
        gc.collect()
        gc.freeze()
