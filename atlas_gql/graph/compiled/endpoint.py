"""The compiled read path in the HTTP request (docs/architecture.md, "Compiled reads").

For a signed-in GraphQL-over-HTTP request whose document the guard accepts (limits and
validation, as on the resolver path) and whose operation is a query the compiler can build,
`CompiledEndpoint.answer` runs the plan's one prepared statement on a pooled asyncpg
connection and returns the response body: `{"data":` + PostgreSQL's JSON text + `}`, never
decoded in Python. It answers None for everything else, and the view hands the request to
Strawberry (the resolver path), which then answers exactly as without this path.

The request takes none of Strawberry's per-request machinery (context, extensions, executor)
on this path; the session check is folded into the statement, so a request is one statement.
Every choice is logged at debug level and counted in `Runtime.compiled_stats`."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from graphql import GraphQLError, GraphQLSchema, OperationDefinitionNode
from sqlalchemy.util import greenlet_spawn
from starlette.requests import Request

from atlas_gql import metrics
from atlas_gql.auth.apikeys import is_api_key
from atlas_gql.auth.tokens import AccessClaims, bearer_token, decode_access_token
from atlas_gql.config import Settings
from atlas_gql.errors import AtlasError
from atlas_gql.graph.compiled.errors import NotCompilable
from atlas_gql.graph.compiled.plans import Answer, CompiledReads, coerce_variables
from atlas_gql.graph.limits.body import JsonTooComplex, decode_request_json
from atlas_gql.graph.limits.extension import (
    MAX_CACHED_DOCUMENT_BYTES,
    DocumentGuard,
    utf8_length,
)
from atlas_gql.runtime import Runtime

logger = logging.getLogger(__name__)

# Why a request took the resolver path, by kind (the counter's labels; a fixed set, so no
# client text ever becomes a label).
NOT_ELIGIBLE = "not eligible"  # not a JSON request, anonymous, a large or refused document
NOT_A_QUERY = "not a query"  # a mutation or a subscription
NOT_COMPILED = "not compiled"  # a field the catalogue does not build
REFUSED = "refused"  # an error the resolver path reports: arguments, session, permission
DRIVER_ERROR = "driver error"  # the statement failed (the resolver path retries afresh)


# What `CompiledReads.operation` says of a document's mutation or subscription.
NOT_READS = ("a mutation", "a subscription")


def _not_compilable_kind(refusal: NotCompilable) -> str:
    if refusal.reason in (*NOT_READS, "no such operation"):
        return NOT_A_QUERY
    if refusal.reason.endswith("(BAD_USER_INPUT)"):
        return REFUSED
    return NOT_COMPILED


class CompiledEndpoint:
    """The compiled path of one app: its plan cache, the document guard it shares with the
    resolver path, and the runtime's connection pool and counters."""

    def __init__(self, *, schema: GraphQLSchema, guard: DocumentGuard, settings: Settings) -> None:
        self.schema = schema
        self.guard = guard
        self.settings = settings
        self.reads = CompiledReads(schema)

    async def answer(self, request: Request, runtime: Runtime) -> bytes | None:
        """The response body of a request served by one statement, or None: the resolver path
        answers (the reason is logged and counted)."""
        stats = runtime.compiled_stats
        outcome = await self._try(request, runtime)
        if isinstance(outcome, bytes):
            stats.count_compiled()
            logger.debug("compiled read: one statement")
            return outcome
        kind, reason = outcome
        stats.count_fallback(kind)
        logger.debug("compiled read: resolver path (%s: %s)", kind, reason)
        return None

    async def _try(self, request: Request, runtime: Runtime) -> bytes | tuple[str, str]:
        params = await _graphql_params(request)
        if params is None:
            return NOT_ELIGIBLE, "not a GraphQL JSON request"
        query, variables, operation_name = params
        # A document the guard holds is looked up and its operation found once, here.
        known = self.guard.cached(query)
        operation: OperationDefinitionNode | NotCompilable | None = None
        if known is not None and not known.errors:
            operation = self.reads.operation(known.document, operation_name)
            if isinstance(operation, NotCompilable) and operation.reason in NOT_READS:
                # A mutation (sendMessage) or a subscription whose document the guard knows:
                # nothing below could make it a read, so no token is decoded and no variable
                # walked for it here (the resolver path does both).
                return NOT_A_QUERY, operation.reason
        if _api_key_request(request):
            # Personal API keys take the resolver path (docs/api-keys.md): their check, their
            # scopes and their last-use stamp live there; the statement checks sessions only.
            return NOT_ELIGIBLE, "an API key"
        claims = self._claims(request)
        if claims is None:
            # Anonymous requests read almost nothing, and their documents stay out of the
            # guard's cache: analysing them twice would double what they may cost.
            return NOT_ELIGIBLE, "no valid access token"
        if utf8_length(query) > MAX_CACHED_DOCUMENT_BYTES:
            return NOT_ELIGIBLE, "a document too large to cache"
        prepared = (
            known
            if known is not None
            else self.guard.prepare(self.schema, query, cacheable=lambda: True)
        )
        if isinstance(prepared, GraphQLError) or prepared.errors:
            return REFUSED, "the document guard refused the document"
        if self.guard.request_errors(self.schema, prepared, operation_name, variables):
            # (unstorable strings among them: graph/limits/inputs.py)
            return REFUSED, "the guard refused the variables or the cost"
        document = prepared.document
        if operation is None:
            operation = self.reads.operation(document, operation_name)
        if isinstance(operation, NotCompilable):
            return _not_compilable_kind(operation), operation.reason
        coerced = coerce_variables(self.schema, operation, variables)
        if coerced is None:
            return REFUSED, "variables do not coerce"
        plan = self.reads.plan(
            document, text=query, operation_name=operation_name, variables=coerced
        )
        if isinstance(plan, NotCompilable):
            return _not_compilable_kind(plan), plan.reason
        try:
            async with _driver_connection(runtime) as driver:
                answer = await self.reads.execute(
                    plan, connection=driver, variables=coerced, claims=claims
                )
        except Exception as error:
            # A value asyncpg refuses (NUL in a literal), a dropped connection, a cancelled
            # statement: the resolver path answers with its own session and error mapping.
            return DRIVER_ERROR, type(error).__name__
        if not isinstance(answer, Answer):
            return REFUSED, answer.reason
        _observe(operation.name.value if operation.name else None, claims)
        return b'{"data":' + answer.data.encode() + b"}"

    def _claims(self, request: Request) -> AccessClaims | None:
        try:
            token = bearer_token(request.headers.get("authorization"))
            if token is None:
                return None
            return decode_access_token(token, settings=self.settings)
        except AtlasError:
            return None  # the resolver path answers UNAUTHENTICATED


def _api_key_request(request: Request) -> bool:
    try:
        token = bearer_token(request.headers.get("authorization"))
    except AtlasError:
        return False
    return token is not None and is_api_key(token)


@contextlib.asynccontextmanager
async def _driver_connection(runtime: Runtime) -> AsyncIterator[Any]:
    """The asyncpg connection the statement runs on, outside any transaction: straight from
    the engine's pool (no BEGIN, no ROLLBACK: one round trip); through a session when the
    app's sessions are bound elsewhere (tests bind them to a transaction they roll back, whose
    rows only that connection sees)."""
    if runtime.sessionmaker.kw.get("bind") is not runtime.engine:
        async with runtime.sessionmaker() as session:
            connection = await session.connection()
            yield (await connection.get_raw_connection()).driver_connection
        return
    pooled = await runtime.engine.raw_connection()
    driver = pooled.driver_connection
    try:
        yield driver
    except BaseException:
        if driver is None or driver.is_closed():
            await greenlet_spawn(pooled.invalidate)
        raise
    finally:
        await greenlet_spawn(pooled.close)


async def _graphql_params(
    request: Request,
) -> tuple[str, dict[str, Any] | None, str | None] | None:
    """query, variables, operationName of a JSON POST or a GET; None for anything else
    (multipart, malformed: the resolver path answers those)."""
    if request.method == "POST":
        content_type = request.headers.get("content-type", "").lower()
        if not content_type.startswith("application/json"):
            return None
        try:
            params = decode_request_json(await request.body())
        except (ValueError, JsonTooComplex):
            return None
        if not isinstance(params, dict):
            return None
        variables = params.get("variables")
    elif request.method == "GET":
        params = dict(request.query_params)
        raw = params.get("variables")
        try:
            variables = None if raw is None else decode_request_json(raw)
        except (ValueError, JsonTooComplex):
            return None
    else:
        return None
    query, operation_name = params.get("query"), params.get("operationName")
    if (
        not isinstance(query, str)
        or not isinstance(variables, dict | None)
        or not isinstance(operation_name, str | None)
        or params.get("extensions")
    ):
        return None
    return query, variables, operation_name


def _observe(operation_name: str | None, claims: AccessClaims) -> None:
    """Describe a compiled answer on its request's record, as the executor's extension does
    for the resolver path: a query, answered OK, in one statement (sent on the driver
    connection, below the engine's statement hook)."""
    record = metrics.current_request()
    if record is None:
        return
    record.sql_statements += 1
    record.finish_operation(
        operation_type="query",
        operation_name=operation_name,
        outcome=metrics.OK,
        viewer_id=str(claims.user_id),
        duration=record.elapsed(),
    )
