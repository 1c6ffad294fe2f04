"""The operation boundary, and the one place errors become GraphQL errors: project exceptions
get their `extensions.code`; anything else is masked, logged to ErrorLog, and given a
requestId."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from graphql import GraphQLError
from pydantic import ValidationError
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from strawberry.exceptions import MissingQueryError
from strawberry.extensions import SchemaExtension
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.types.graphql import OperationType

from atlas_gql import metrics
from atlas_gql.db.inputs import camel_case
from atlas_gql.db.utils import map_db_error
from atlas_gql.errors import AtlasError, BadInput, BadRequest, BrokerUnavailable, ErrorCode
from atlas_gql.graph.context import Context
from atlas_gql.logformat import write_access_line
from atlas_gql.logs.audit import ErrorLogPolicy, describe_exception, record_error, scrub_text
from atlas_gql.logs.models import ErrorSource

logger = logging.getLogger(__name__)

MASKED_MESSAGE = "Internal server error."


def _with_extensions(error: GraphQLError, message: str, extensions: dict[str, Any]) -> GraphQLError:
    return GraphQLError(
        message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=None,
        extensions=extensions,
    )


def as_graphql_error(error: AtlasError) -> GraphQLError:
    """A project error as a GraphQL error with its code, for code that raises outside the
    per-operation mapping (a subscription's event stream)."""
    return GraphQLError(error.message, extensions={**error.extensions, "code": error.code.value})


def classify(error: GraphQLError) -> AtlasError | None:
    """The project error behind a GraphQL error (driver errors mapped), if it is one."""
    original = error.original_error
    if isinstance(original, AtlasError):
        return original
    if isinstance(original, ValidationError):
        return _bad_input(original)
    if isinstance(
        original, (CannotGetOperationTypeError, InvalidOperationTypeError, MissingQueryError)
    ):
        # Strawberry's request errors on a stream (HTTP raises them before, as a 4xx).
        return BadRequest(error.message)
    if isinstance(original, RedisError):
        # Redis (the event broker, shared rate limits) is not the database.
        return BrokerUnavailable()
    if isinstance(original, (DBAPIError, OSError, TimeoutError, PoolTimeoutError)):
        return map_db_error(original)
    return None


def _bad_input(error: ValidationError) -> BadInput:
    """A service input object that refused a value: the first problem, naming its field."""
    first = error.errors()[0]
    field = ".".join(camel_case(str(part)) for part in first["loc"]) or None
    return BadInput(f"`{field}`: {first['msg']}." if field else first["msg"], field=field)


class ErrorMappingExtension(SchemaExtension):
    """The operation boundary. It gives the operation fresh state (session, actor, loaders,
    request id); when the operation ends, after every field has settled, it commits a
    mutation's session once (each failed mutation field was already rolled back to its
    savepoint, see `graph/execution.py`) or closes a query's without committing; then it maps
    the errors. A commit that fails turns every field of the mutation null, with the error.
    Results streamed over a WebSocket are mapped one by one, before they are sent."""

    def __init__(self, *, execution_context: Any = None) -> None:
        super().__init__(execution_context=execution_context)
        self._streamed = False
        # The first error code of the operation's results: its outcome (metrics, access line).
        self._outcome: str | None = None

    async def on_operation(self) -> AsyncIterator[None]:
        context = self.execution_context.context
        # An HTTP request has its record (and id) from the edge; a WebSocket operation gets
        # its own, and its own access line.
        record = metrics.current_request()
        own_record = record is None
        if record is None:
            record = metrics.RequestRecord(request_id=metrics.new_request_id())
        record_token = metrics.begin_record(record) if own_record else None
        started = time.perf_counter()
        token = context.begin_operation(record.request_id) if isinstance(context, Context) else None
        try:
            if isinstance(context, Context):
                context.operation_name = self.execution_context.operation_name
            try:
                yield
            except BaseException:
                if isinstance(context, Context):
                    await context.close_db()
                raise
            if isinstance(context, Context):
                await self._end_session(context)
            if not self._streamed:
                await self._map_result(self.execution_context.result, context)
        finally:
            self._observe(record, context, time.perf_counter() - started, access_line=own_record)
            if token is not None:
                with contextlib.suppress(ValueError):  # reset from another task's context
                    context.end_operation(token)
            if record_token is not None:
                with contextlib.suppress(ValueError):
                    metrics.end_record(record_token)

    def _observe(
        self, record: metrics.RequestRecord, context: Any, duration: float, *, access_line: bool
    ) -> None:
        """Count the operation and describe it on its request's record."""
        try:
            operation_type = self.execution_context.operation_type.value
        except Exception:  # the document did not parse: no operation to speak of
            operation_type = "none"
        name = self.execution_context.operation_name
        viewer = context.resolved_viewer if isinstance(context, Context) else None
        record.finish_operation(
            operation_type=operation_type,
            # (a client may send any JSON as operationName; the request is refused later)
            operation_name=name if isinstance(name, str) else None,
            outcome=self._outcome or metrics.OK,
            viewer_id=str(viewer.user_id) if viewer is not None else None,
            duration=duration,
        )
        if access_line:
            metrics.SQL_STATEMENTS.labels(operation_type).observe(record.sql_statements)
            write_access_line(record, transport="websocket")

    def on_execute(self) -> Iterator[None]:
        """A query reads one snapshot: its fields agree with each other (a thread's
        `lastEventSequence` with its `messages`, a connection's `totalCount` with its edges)."""
        context = self.execution_context.context
        if (
            isinstance(context, Context)
            and self.execution_context.operation_type is OperationType.QUERY
        ):
            context.read_one_snapshot()
        yield

    async def _end_session(self, context: Context) -> None:
        """Commit a mutation that ran; anything else rolls back (queries only read)."""
        result: Any = self.execution_context.result
        data = getattr(result, "data", None)
        if (
            self._streamed
            or not isinstance(data, dict)
            or self.execution_context.operation_type is not OperationType.MUTATION
        ):
            await context.close_db()
            return
        try:
            await context.commit_db()
        except Exception as error:
            # Nothing of the operation is stored: no field may say otherwise.
            result.data = dict.fromkeys(data)
            result.errors = [*(result.errors or []), GraphQLError(str(error), original_error=error)]

    async def on_stream_result(self, result: Any) -> AsyncIterator[None]:
        self._streamed = True
        context = self.execution_context.context
        if getattr(result, "errors", None) and isinstance(context, Context):
            await context.close_db()
        await self._map_result(result, context)
        yield

    async def _map_result(self, result: Any, context: Any) -> None:
        errors = getattr(result, "errors", None)
        if result is None or not errors:
            return
        result.errors = [await self._map(error, context) for error in errors]
        if self._outcome is None:
            self._outcome = str((result.errors[0].extensions or {}).get("code", "ERROR"))
        # Errors with no path come from before execution (parse, validation, variable
        # coercion, limits): the request itself was not acceptable.
        if (
            isinstance(context, Context)
            and getattr(result, "data", None) is None
            and all(error.path is None for error in errors)
        ):
            context.pre_execution_failed = True

    async def _map(self, error: GraphQLError, context: Any) -> GraphQLError:
        atlas_error = classify(error)
        if atlas_error is not None:
            extensions = {**(error.extensions or {}), **atlas_error.extensions}
            extensions["code"] = atlas_error.code.value
            return _with_extensions(error, atlas_error.message, extensions)
        if error.path is None and (
            error.original_error is None or isinstance(error.original_error, GraphQLError)
        ):
            # Before execution: parse and validation errors (no original error), and variable
            # values that failed coercion. The message is the client's to read.
            extensions = dict(error.extensions or {})
            code = "GRAPHQL_VALIDATION_FAILED" if error.original_error is None else "BAD_USER_INPUT"
            extensions.setdefault("code", code)
            return _with_extensions(error, error.message, extensions)
        return await self._mask(error, context)

    async def _mask(self, error: GraphQLError, context: Any) -> GraphQLError:
        request_id = context.request_id if isinstance(context, Context) else "unknown"
        original = error.original_error
        assert original is not None
        # The process log gets the same redacted text as the ErrorLog row, never raw secrets.
        error_type, _message, stack = describe_exception(original)
        logger.error("unexpected error %s: %s\n%s", request_id, error_type, scrub_text(stack))
        if isinstance(context, Context):
            viewer = context.resolved_viewer
            await record_error(
                sessionmaker=context.runtime.sessionmaker,
                request_id=request_id,
                source=ErrorSource.DATABASE
                if isinstance(original, DBAPIError)
                else ErrorSource.GRAPHQL,
                error=original,
                operation_name=self.execution_context.operation_name,
                path=".".join(str(part) for part in error.path or ()),
                user_id=getattr(viewer, "user_id", None),
                policy=ErrorLogPolicy.from_settings(context.runtime.settings),
            )
        return _with_extensions(
            error,
            MASKED_MESSAGE,
            {"code": ErrorCode.INTERNAL_SERVER_ERROR.value, "requestId": request_id},
        )
