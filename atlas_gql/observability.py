"""The HTTP edge of observability: a request id and an access line for every HTTP request,
the WebSocket connection gauge, and `GET /metrics` behind ATLAS_METRICS.

The request id is the client's (or the load balancer's) X-Request-ID when it is sane, else a
new one; it is the operation's id too (ErrorLog rows, `extensions.requestId`), and it goes back
as the X-Request-ID response header. The GraphQL layer fills in the operation's type, name,
outcome and viewer (graph/errors.py, at the operation boundary); SQL statements are counted
by the engine's event hook (atlas_gql.metrics)."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from ipaddress import ip_address

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from atlas_gql import metrics
from atlas_gql.config import MetricsAccess, Settings
from atlas_gql.logformat import write_access_line

# Probes a load balancer sends every few seconds: their lines are DEBUG, not INFO.
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

# A GraphQL request refused before GraphQL ran (body not JSON, too large, ...): its outcome.
_STATUS_CODES = {413: "PAYLOAD_TOO_LARGE", 408: "BAD_REQUEST", 431: "BAD_REQUEST"}


def _outcome_of_status(status: int) -> str:
    if status in _STATUS_CODES:
        return _STATUS_CODES[status]
    if status >= 500:
        return "INTERNAL_SERVER_ERROR"
    return "BAD_REQUEST" if status >= 400 else metrics.OK


class RequestObservationMiddleware:
    """Per HTTP request: the request id (X-Request-ID in and out), the access line, the SQL
    statements histogram. Per WebSocket: the open-connections gauge (each operation on it is
    observed by the operation boundary); the GraphQL WebSocket does not pass here, the app's
    entry counts it (`app.AtlasApp`)."""

    def __init__(self, app: ASGIApp, *, graphql_path: str = "/graphql") -> None:
        self.app = app
        self.graphql_path = graphql_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            with metrics.WEBSOCKETS.track_inprogress():
                await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = metrics.accept_request_id(Headers(scope=scope).get("x-request-id"))
        record = metrics.RequestRecord(request_id=request_id)
        status = 500
        sent = 0

        async def observed_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        with metrics.recording(record):
            try:
                await self.app(scope, receive, observed_send)
            finally:
                self._finish(scope, record, status, sent)

    def _finish(self, scope: Scope, record: metrics.RequestRecord, status: int, sent: int) -> None:
        path: str = scope.get("path", "")
        if record.operation_type is not None:
            metrics.SQL_STATEMENTS.labels(record.operation_type).observe(record.sql_statements)
        elif path == self.graphql_path:
            # Refused before GraphQL ran: still a request, with the code its body carries.
            record.outcome = _outcome_of_status(status)
            metrics.REQUESTS.labels("none", record.outcome).inc()
        client = scope.get("client")
        write_access_line(
            record,
            level=logging.DEBUG if path in QUIET_PATHS else logging.INFO,
            transport="http",
            method=scope.get("method"),
            path=path,  # never the query string: GET /graphql may carry variables
            status=status,
            bytes=sent,
            client=client[0] if client else None,
        )


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def _refusal(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    """A refused scrape, as JSON with a code like every 4xx of the API."""
    body = json.dumps({"errors": [{"message": message, "extensions": {"code": code}}]})
    return Response(body, status, headers=headers, media_type="application/json")


def metrics_endpoint(settings: Settings) -> Callable[[Request], Awaitable[Response]]:
    """`GET /metrics`: Prometheus text, for loopback clients or the bearer of the token."""
    token = (settings.atlas_metrics_token or "").encode()

    async def endpoint(request: Request) -> Response:
        if settings.atlas_metrics is MetricsAccess.LOOPBACK:
            if not _is_loopback(request.client.host if request.client else None):
                return _refusal(403, "FORBIDDEN", "Metrics are served to loopback clients only.")
        elif settings.atlas_metrics is MetricsAccess.TOKEN:
            scheme, _, presented = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                presented.strip().encode(), token
            ):
                return _refusal(
                    401,
                    "UNAUTHENTICATED",
                    "Metrics need the bearer token (ATLAS_METRICS_TOKEN).",
                    headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
                )
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    return endpoint
