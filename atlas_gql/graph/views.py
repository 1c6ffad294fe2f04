"""The GraphQL endpoint: Strawberry's ASGI view with ATLAS's context, content negotiation
(GraphQL over HTTP), subscriptions over HTTP (multipart for Apollo, graphql-sse; see
`graph/streams.py`), WebSocket authentication and limits, and the offline GraphiQL page.

Whatever a client sends is answered with a GraphQL-shaped JSON error and a code: a body
that is not JSON or not an object, JSON nested too deeply, a subscription asking for a
transport that is not served (406), GET without a query when GraphiQL is off. The WebSocket
transport is `graph/websocket.py` (a message that is too large, not JSON, or not a
graphql-transport-ws message closes the socket with 1009 or 4400)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from functools import partial
from typing import Any

from cross_web import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http import GraphQLHTTPResponse
from strawberry.http.typevars import Context as ContextT
from strawberry.schema.exceptions import InvalidOperationTypeError
from strawberry.subscriptions import (
    GRAPHQL_SSE_PROTOCOL,
    GRAPHQL_TRANSPORT_WS_PROTOCOL,
    MULTIPART_SUBSCRIPTION_PROTOCOL,
)
from strawberry.types import ExecutionResult, SubscriptionExecutionResult
from strawberry.types.graphql import OperationType
from strawberry.types.unset import UNSET, UnsetType

from atlas_gql import metrics
from atlas_gql.config import Settings
from atlas_gql.errors import AtlasError
from atlas_gql.graph.compiled.endpoint import CompiledEndpoint
from atlas_gql.graph.context import Context
from atlas_gql.graph.fanout import SharedFrames
from atlas_gql.graph.ide import render_graphiql_html
from atlas_gql.graph.limits.body import JsonTooComplex, decode_request_json
from atlas_gql.graph.services import Services
from atlas_gql.graph.streams import StreamPump, StreamResponse, StreamSlots, stream_owner
from atlas_gql.graph.websocket import (
    AtlasTransportWSHandler,
    AtlasWebSocketAdapter,
    DocumentTexts,
)

GRAPHQL_RESPONSE_JSON = "application/graphql-response+json"


def accepts_graphql_response_json(accept: str) -> bool:
    """True when the client prefers (or only takes) application/graphql-response+json."""
    for part in accept.split(","):
        media_type, *params = (item.strip() for item in part.split(";"))
        if media_type.lower() == GRAPHQL_RESPONSE_JSON:
            return not any(param.replace(" ", "") == "q=0" for param in params)
        if media_type.lower() in {"application/json", "*/*", "application/*"}:
            return False
    return False


# A multipart request is a "simple" CORS request a browser sends cross-site without asking:
# uploads must carry one of these non-empty headers, which forces a CORS preflight (CSRF).
PREFLIGHT_HEADERS = ("apollo-require-preflight", "graphql-preflight", "x-apollo-operation-name")


def _multipart_without_preflight(request: Request) -> bool:
    content_type = request.headers.get("content-type", "").lower()
    if request.method != "POST" or not content_type.startswith("multipart/form-data"):
        return False
    return not any(request.headers.get(name, "").strip() for name in PREFLIGHT_HEADERS)


# The methods of the GraphQL endpoint (a 405 says so; HEAD is not one of them).
ALLOW = {"Allow": "GET, POST"}

# The code of a refusal by its HTTP status; any other 4xx is a malformed request.
STATUS_CODES = {404: "NOT_FOUND", 413: "PAYLOAD_TOO_LARGE", 429: "RATE_LIMITED"}


def error_response(
    status: int,
    message: str,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """A request refused before GraphQL runs: JSON with the GraphQL errors shape."""
    if code is None:
        code = STATUS_CODES.get(status, "BAD_REQUEST")
    error = {"message": message, "extensions": {"code": code}}
    body = json.dumps({"errors": [error]})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _missing_preflight_response() -> Response:
    return error_response(
        400,
        "Multipart requests must carry a non-empty Apollo-Require-Preflight, "
        "GraphQL-Preflight or X-Apollo-Operation-Name header (CSRF protection).",
    )


SUBSCRIPTION_TRANSPORTS = (
    "over HTTP with `Accept: text/event-stream` (graphql-sse, distinct connections) or "
    '`Accept: multipart/mixed;subscriptionSpec="1.0"` (Apollo Client), or over the '
    "WebSocket at /graphql (graphql-transport-ws)"
)


def _http_error(error: HTTPException, *, streams_served: bool) -> tuple[int, str]:
    """The status and message of a request Strawberry refused."""
    cause = error.__cause__
    if (
        isinstance(cause, InvalidOperationTypeError)
        and cause.operation_type is OperationType.SUBSCRIPTION
    ):
        # A subscription's events cannot be one JSON answer: the client must ask for a stream.
        if streams_served:
            return 406, f"A subscription streams its events: subscribe {SUBSCRIPTION_TRANSPORTS}."
        return 406, (
            "Subscriptions over HTTP are off on this server (ATLAS_MAX_HTTP_STREAMS=0): "
            "subscribe over the WebSocket at /graphql (graphql-transport-ws)."
        )
    return error.status_code, error.reason


def _asks_for_stream(request: Request) -> bool:
    """Whether the client accepts an event stream (SSE, multipart): its answer is Strawberry's
    (a query over graphql-sse is one `next` event), never the compiled path's JSON."""
    accept = request.headers.get("accept", "").lower()
    return "text/event-stream" in accept or "multipart/mixed" in accept


def _wants_graphiql(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return (
        request.method == "GET"
        and request.query_params.get("query") is None
        and ("text/html" in accept or "*/*" in accept)
    )


# What a WebSocket's operations read of its handshake's headers (graph/context.py): the
# token when connection_init carries none, the user agent of the actor.
WEBSOCKET_HEADERS_KEPT = frozenset({b"authorization", b"user-agent"})

# Refusals of the request's size, complexity or form (several operations without an
# operationName), not document errors: a 4xx whatever the client accepts.
_REFUSAL_STATUS = {"PAYLOAD_TOO_LARGE": 413, "QUERY_TOO_COMPLEX": 400, "BAD_REQUEST": 400}


class AtlasGraphQL(GraphQL[Context, None]):
    websocket_adapter_class = AtlasWebSocketAdapter
    graphql_transport_ws_handler_class = AtlasTransportWSHandler

    def __init__(self, schema: Any, *, settings: Settings) -> None:
        self.streams_served = settings.atlas_max_http_streams > 0
        stream_protocols = (
            (MULTIPART_SUBSCRIPTION_PROTOCOL, GRAPHQL_SSE_PROTOCOL) if self.streams_served else ()
        )
        super().__init__(
            schema,
            graphql_ide="graphiql" if settings.graphiql_enabled else None,
            allow_queries_via_get=True,
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL, *stream_protocols),
            multipart_uploads_enabled=True,
            keep_alive=True,
            keep_alive_interval=15,
            allowed_origins=settings.atlas_cors_origins,
        )
        # Set by the app's lifespan once the services have started.
        self.services: Services | None = None
        self.max_message_bytes = settings.atlas_max_body_bytes
        self.settings = settings
        # Renderings of subscription events shared by their subscribers (graph/fanout.py).
        self.frames = SharedFrames()
        # The document texts of WebSocket subscribers, one copy each (graph/websocket.py).
        self.document_texts = DocumentTexts()
        self.stream_slots = StreamSlots(
            total=settings.atlas_max_http_streams,
            per_user=settings.atlas_max_http_streams_per_user,
        )
        self._graphiql_html = render_graphiql_html()
        # Queries the compiler builds are answered by one SQL statement, before Strawberry.
        self.compiled: CompiledEndpoint | None = (
            CompiledEndpoint(schema=schema._schema, guard=schema.document_guard, settings=settings)
            if settings.atlas_compiled_reads
            else None
        )

    def decode_json(self, data: str | bytes) -> object:
        """Request bodies (and GET's variables): JSON objects, shape bounded, else 400."""
        try:
            value = decode_request_json(data)
        except JsonTooComplex as error:
            raise HTTPException(400, str(error)) from None
        except UnicodeDecodeError:
            raise HTTPException(400, "The request body is not JSON text (UTF-8).") from None
        if not isinstance(value, (dict, list)):
            raise HTTPException(400, "Expected a JSON object (a GraphQL request).")
        return value

    @property
    def graphql_ide_html(self) -> str:
        return self._graphiql_html

    async def get_context(self, request: Request | WebSocket, response: Any) -> Context:
        if self.services is None:
            raise RuntimeError("the application has not started (lifespan not run)")
        context = Context(services=self.services, request=request, response=response)
        if isinstance(request, Request):  # for `_negotiate`; a WebSocket keeps no State
            request.state.atlas_context = context
        return context

    async def on_ws_connect(self, context: ContextT) -> UnsetType | dict[str, object] | None:
        """Authenticate the socket from connection_init's `Authorization`; 4403 when bad."""
        assert isinstance(context, Context)
        try:
            await context.viewer()
        except AtlasError:
            raise ConnectionRejectionError({"message": "Invalid or expired token."}) from None
        finally:
            await context.close_db()
            # Each operation authenticates again: the handshake's viewer is not kept.
            context.forget_connection_state()
        result: UnsetType = UNSET
        return result

    async def execute_operation(
        self,
        request: Request,
        request_adapter: Any,
        request_data: Any,
        context: Context,
        root_value: None,
        sub_response: Response,
    ) -> Any:
        result = await super().execute_operation(
            request, request_adapter, request_data, context, root_value, sub_response
        )
        if isinstance(result, SubscriptionExecutionResult):
            return await self._open_stream(request, context, result)
        return result

    async def _open_stream(self, request: Request, context: Context, stream: Any) -> Any:
        """A stream's answer: its results (the response streams them), or the refusal that
        came before execution (answered as 4xx JSON). See `graph/streams.py`."""
        request.state.atlas_stream_requested = True
        owner = stream_owner(context.authorization, self.settings)
        refusal = self.stream_slots.acquire(owner)
        if refusal is not None:
            await stream.aclose()
            raise HTTPException(429, refusal)
        pump = StreamPump(stream, on_close=partial(self.stream_slots.release, owner))
        try:
            first = await pump.opening(context.execution_started())
        except BaseException:
            await pump.close()
            raise
        if first is not None:
            if context.pre_execution_failed:
                await pump.close()
                return first
            pump.unread(first)
        request.state.atlas_stream = pump
        return pump.results()

    async def create_streaming_response(
        self,
        request: Request | WebSocket,
        stream: Callable[[], AsyncIterator[str]],
        sub_response: Response,
        headers: Mapping[str, str],
    ) -> Response:
        pump: StreamPump | None = getattr(request.state, "atlas_stream", None)
        return StreamResponse(
            stream(),
            status_code=sub_response.status_code or 200,
            headers={
                **sub_response.headers,
                # Proxies must neither cache, transform nor buffer a stream of events.
                "Cache-Control": "no-cache, no-transform",
                "X-Accel-Buffering": "no",
                **headers,
            },
            on_close=pump.close if pump is not None else _nothing_to_close,
        )

    async def process_result(
        self, request: Request, result: ExecutionResult
    ) -> GraphQLHTTPResponse:
        data: GraphQLHTTPResponse = {"data": result.data}
        if result.errors:
            data["errors"] = [error.formatted for error in result.errors]
        extensions = dict(result.extensions or {})
        record = metrics.current_request()
        if record is not None and result.errors:
            # What a user quotes to support: the id of the request's log line and ErrorLog
            # rows (every response carries it as the X-Request-ID header too).
            extensions["requestId"] = record.request_id
        if extensions:
            data["extensions"] = extensions
        return data

    async def create_websocket_response(
        self, request: WebSocket, subprotocol: str | None
    ) -> WebSocket:
        response = await super().create_websocket_response(request, subprotocol)
        # Accepted: the Origin was checked, the subprotocol chosen. Of the handshake's headers
        # (a browser sends a dozen, cookies included) the connection's operations read only
        # these (`Context`); the others are not kept for the socket's life (memory per socket).
        headers: list[tuple[bytes, bytes]] = request.scope["headers"]
        headers[:] = [header for header in headers if header[0] in WEBSOCKET_HEADERS_KEPT]
        return response

    def websocket_session(self, websocket: WebSocket) -> Awaitable[Any]:
        """A WebSocket's whole session (origin check, handshake, graphql-transport-ws): what
        the app's entry awaits for it (`app.AtlasApp`). Strawberry's coroutine itself, with no
        frame of ours kept around it for the socket's life (memory per idle subscription)."""
        return super().run(websocket)

    async def run(self, request: Any, context: Any = UNSET, root_value: Any = UNSET) -> Any:
        if not isinstance(request, Request):
            return await super().run(request, context, root_value)
        if _multipart_without_preflight(request):
            return _missing_preflight_response()
        if self.graphql_ide is None and _wants_graphiql(request):
            return error_response(
                400,
                "GraphiQL is off on this server (ATLAS_GRAPHIQL). Send a GraphQL request: "
                "POST /graphql with a JSON body, or GET /graphql?query=...",
            )
        if (
            self.compiled is not None
            and self.services is not None
            and not _asks_for_stream(request)
        ):
            body = await self.compiled.answer(request, self.services.runtime)
            if body is not None:
                modern = accepts_graphql_response_json(request.headers.get("accept", ""))
                media_type = GRAPHQL_RESPONSE_JSON if modern else "application/json"
                return Response(body, media_type=media_type)
        try:
            response = await super().run(request, context, root_value)
        except HTTPException as error:
            status, message = _http_error(error, streams_served=self.streams_served)
            return error_response(status, message, headers=ALLOW if status == 405 else None)
        if not isinstance(response, Response):
            return response
        if (
            response.media_type != "application/json"
            and response.headers.get("content-type", "").split(";")[0] != "application/json"
        ):
            return response
        return self._negotiate(request, response)

    def _negotiate(self, request: Request, response: Response) -> Response:
        """Per GraphQL over HTTP: with application/graphql-response+json, a request that
        failed before execution answers 4xx with no `data`; legacy application/json clients
        get 200. Refusals for size, complexity or a malformed request are 413 / 400 for both,
        and so is any refusal of a request that asked for a stream (an event stream cannot
        carry it: graphql-sse and Apollo read a 4xx JSON body as the request's errors)."""
        modern = accepts_graphql_response_json(request.headers.get("accept", ""))
        streamed = getattr(request.state, "atlas_stream_requested", False)
        context = getattr(request.state, "atlas_context", None)
        body = response.body
        status = response.status_code
        if isinstance(context, Context) and context.pre_execution_failed and status == 200:
            payload = json.loads(bytes(body))
            codes = [
                (error.get("extensions") or {}).get("code")
                for error in (payload.get("errors") or [] if isinstance(payload, dict) else [])
            ]
            refusal = next((_REFUSAL_STATUS[c] for c in codes if c in _REFUSAL_STATUS), None)
            if refusal is not None or modern or streamed:
                status = refusal or 400
                if isinstance(payload, dict):
                    payload.pop("data", None)
                    body = json.dumps(payload).encode()
        if not modern and status == response.status_code:
            return response
        headers = {
            key: value
            for key, value in response.headers.items()
            if key.lower() not in {"content-length", "content-type"}
        }
        media_type = GRAPHQL_RESPONSE_JSON if modern else "application/json"
        return Response(body, status_code=status, headers=headers, media_type=media_type)


async def _nothing_to_close() -> None:
    return None
