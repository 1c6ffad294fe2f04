"""The GraphQL endpoint: Strawberry's ASGI view with ATLAS's context, content negotiation
(GraphQL over HTTP), WebSocket authentication and the offline GraphiQL page."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http import GraphQLHTTPResponse
from strawberry.http.typevars import Context as ContextT
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.types import ExecutionResult
from strawberry.types.unset import UNSET, UnsetType

from atlas_gql.config import Settings
from atlas_gql.errors import AtlasError
from atlas_gql.graph.context import Context
from atlas_gql.graph.ide import render_graphiql_html
from atlas_gql.graph.services import Services

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


def _missing_preflight_response() -> Response:
    error = {
        "message": "Multipart requests must carry a non-empty Apollo-Require-Preflight, "
        "GraphQL-Preflight or X-Apollo-Operation-Name header (CSRF protection).",
        "extensions": {"code": "BAD_REQUEST"},
    }
    return Response(json.dumps({"errors": [error]}), status_code=400, media_type="application/json")


class AtlasGraphQL(GraphQL[Context, None]):
    def __init__(self, schema: Any, *, settings: Settings) -> None:
        super().__init__(
            schema,
            graphql_ide="graphiql",
            allow_queries_via_get=True,
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL,),
            multipart_uploads_enabled=True,
            keep_alive=True,
            keep_alive_interval=15,
            allowed_origins=settings.atlas_cors_origins,
        )
        # Set by the app's lifespan once the services have started.
        self.services: Services | None = None
        self._graphiql_html = render_graphiql_html()

    @property
    def graphql_ide_html(self) -> str:
        return self._graphiql_html

    async def get_context(self, request: Request | WebSocket, response: Any) -> Context:
        if self.services is None:
            raise RuntimeError("the application has not started (lifespan not run)")
        context = Context(services=self.services, request=request, response=response)
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
        result: UnsetType = UNSET
        return result

    async def process_result(
        self, request: Request, result: ExecutionResult
    ) -> GraphQLHTTPResponse:
        data: GraphQLHTTPResponse = {"data": result.data}
        if result.errors:
            data["errors"] = [error.formatted for error in result.errors]
        if result.extensions:
            data["extensions"] = result.extensions
        return data

    async def run(self, request: Any, context: Any = UNSET, root_value: Any = UNSET) -> Any:
        if isinstance(request, Request) and _multipart_without_preflight(request):
            return _missing_preflight_response()
        response = await super().run(request, context, root_value)
        if not isinstance(request, Request) or not isinstance(response, Response):
            return response
        if (
            response.media_type != "application/json"
            and response.headers.get("content-type", "").split(";")[0] != "application/json"
        ):
            return response
        if not accepts_graphql_response_json(request.headers.get("accept", "")):
            return response
        return self._as_graphql_response_json(request, response)

    def _as_graphql_response_json(self, request: Request, response: Response) -> Response:
        """Per GraphQL over HTTP: a request that failed before execution answers 4xx with no
        `data`; everything else 200."""
        context = getattr(request.state, "atlas_context", None)
        body = response.body
        status = response.status_code
        if isinstance(context, Context) and context.pre_execution_failed and status == 200:
            status = 400
            payload = json.loads(bytes(body))
            if isinstance(payload, dict):
                payload.pop("data", None)
                body = json.dumps(payload).encode()
        headers = {
            key: value
            for key, value in response.headers.items()
            if key.lower() not in {"content-length", "content-type"}
        }
        return Response(body, status_code=status, headers=headers, media_type=GRAPHQL_RESPONSE_JSON)
