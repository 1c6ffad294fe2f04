"""Compiled plans, cached per (document text, operation name, shape of the variables), and
their execution: one prepared statement on an asyncpg connection, whose `data` column is the
response's `data` object as JSON text (handed on without decoding)."""

from __future__ import annotations

import enum
import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from graphql import (
    DocumentNode,
    GraphQLSchema,
    OperationDefinitionNode,
    OperationType,
    get_operation_ast,
)
from graphql.execution.values import get_variable_values
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect

from atlas_gql.auth.tokens import AccessClaims
from atlas_gql.errors import AtlasError
from atlas_gql.graph.compiled.catalogue import CATALOGUE
from atlas_gql.graph.compiled.compiler import (
    VIEWER_SESSION_PARAM,
    VIEWER_USER_PARAM,
    Compiler,
    fragments_of,
)
from atlas_gql.graph.compiled.errors import NotCompilable
from atlas_gql.graph.compiled.values import operation_shapes, plain

logger = logging.getLogger(__name__)

ArgumentSource = Callable[[Mapping[str, Any], AccessClaims | None], Any]


class Connection(Protocol):
    """What a plan needs of an asyncpg connection (its statement cache prepares the SQL
    once per connection)."""

    async def fetchrow(self, query: str, *args: Any) -> Any: ...


@dataclass(frozen=True)
class Plan:
    """One compiled statement and how to bind it for a request."""

    sql: str
    sources: tuple[ArgumentSource, ...]
    checks: tuple[Callable[[Mapping[str, Any]], None], ...]
    requires_viewer: bool

    def arguments(self, variables: Mapping[str, Any], claims: AccessClaims | None) -> list[Any]:
        """The statement's parameters; an AtlasError when a value is not acceptable (the
        resolver path then answers with that error)."""
        for check in self.checks:
            check(variables)
        return [source(variables, claims) for source in self.sources]


@dataclass(frozen=True)
class Answer:
    """The response's `data` object, as JSON text from PostgreSQL."""

    data: str


@dataclass(frozen=True)
class Fallback:
    """The resolver path must answer this request, for `reason`."""

    reason: str


def _viewer_user(variables: Mapping[str, Any], claims: AccessClaims | None) -> Any:
    return claims.user_id if claims is not None else None


def _viewer_session(variables: Mapping[str, Any], claims: AccessClaims | None) -> Any:
    return claims.session_id if claims is not None else None


def _from_variables(source: Callable[[Mapping[str, Any]], Any]) -> ArgumentSource:
    return lambda variables, claims: source(variables)


def _constant(value: Any) -> ArgumentSource:
    value = plain(value) if isinstance(value, enum.Enum) else value
    return lambda variables, claims: value


_DIALECT = asyncpg_dialect()  # type: ignore[no-untyped-call]


def compile_plan(
    schema: GraphQLSchema,
    document: DocumentNode,
    operation: OperationDefinitionNode,
    shapes: Mapping[str, Hashable],
) -> Plan:
    compiler = Compiler(
        schema=schema,
        catalogue=CATALOGUE,
        operation=operation,
        fragments=fragments_of(document.definitions),
        shapes=shapes,
    )
    built = compiler.compile()
    compiled = built.statement.compile(
        dialect=_DIALECT, compile_kwargs={"render_postcompile": True}
    )
    values = compiled.construct_params()
    sources: list[ArgumentSource] = []
    for name in compiled.positiontup or ():
        if name == VIEWER_USER_PARAM:
            sources.append(_viewer_user)
        elif name == VIEWER_SESSION_PARAM:
            sources.append(_viewer_session)
        elif name in built.sources:
            sources.append(_from_variables(built.sources[name]))
        else:  # a constant of a rule (a role name, an enum value, ...)
            sources.append(_constant(values[name]))
    # A value the statement does not read (a page size when only totalCount is selected)
    # is still checked, as the resolver path checks every argument.
    used = set(compiled.positiontup or ())
    unread = [source for name, source in built.sources.items() if name not in used]
    return Plan(
        sql=compiled.string,
        sources=tuple(sources),
        checks=(*built.checks, *(_as_check(source) for source in unread)),
        requires_viewer=built.requires_viewer,
    )


def _as_check(source: Callable[[Mapping[str, Any]], Any]) -> Callable[[Mapping[str, Any]], None]:
    def check(variables: Mapping[str, Any]) -> None:
        source(variables)

    return check


def coerce_variables(
    schema: GraphQLSchema, operation: OperationDefinitionNode, raw: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """The operation's variables coerced as the executor would; None when they do not
    coerce (the resolver path reports the errors)."""
    result = get_variable_values(schema, operation.variable_definitions or (), dict(raw or {}))
    if isinstance(result, list):
        return None
    return dict(result.coerced)


class CompiledReads:
    """Plans per document, operation and variable shape (a bounded LRU, the refusals
    included), and their execution."""

    def __init__(self, schema: GraphQLSchema, *, max_plans: int = 512) -> None:
        self.schema = schema
        self.max_plans = max_plans
        self._plans: OrderedDict[Hashable, Plan | NotCompilable] = OrderedDict()

    def operation(
        self, document: DocumentNode, operation_name: str | None
    ) -> OperationDefinitionNode | NotCompilable:
        operation = get_operation_ast(document, operation_name)
        if operation is None:
            return NotCompilable("no such operation")
        if operation.operation is not OperationType.QUERY:
            return NotCompilable(f"a {operation.operation.value}")
        return operation

    def plan(
        self,
        document: DocumentNode,
        *,
        text: str,
        operation_name: str | None,
        variables: Mapping[str, Any],
    ) -> Plan | NotCompilable:
        """The plan of a validated document for these (coerced) variables' shape."""
        operation = self.operation(document, operation_name)
        if isinstance(operation, NotCompilable):
            return operation
        shapes = operation_shapes(tuple(operation.variable_definitions or ()), variables)
        key = (text, operation_name, shapes)
        cached = self._plans.get(key)
        if cached is not None:
            self._plans.move_to_end(key)
            return cached
        try:
            cached = compile_plan(self.schema, document, operation, dict(shapes))
        except NotCompilable as refusal:
            cached = refusal
        logger.debug(
            "compiled read %s: %s",
            operation_name or "(anonymous)",
            "plan" if isinstance(cached, Plan) else f"not compilable ({cached.reason})",
        )
        self._plans[key] = cached
        if len(self._plans) > self.max_plans:
            self._plans.popitem(last=False)
        return cached

    async def execute(
        self,
        plan: Plan,
        *,
        connection: Connection,
        variables: Mapping[str, Any],
        claims: AccessClaims | None,
    ) -> Answer | Fallback:
        """Run a plan for a viewer (`claims` of a verified access token; None: anonymous).
        A driver error propagates: the caller falls back on a fresh session (the failed
        statement may have aborted the connection's transaction)."""
        if plan.requires_viewer and claims is None:
            return Fallback("signed-in viewer required (UNAUTHENTICATED)")
        try:
            arguments = plan.arguments(variables, claims)
        except AtlasError as error:
            return Fallback(f"argument refused: {error.message}")
        row = await connection.fetchrow(plan.sql, *arguments)
        if claims is not None and not row["live"]:
            return Fallback("session ended or user inactive (UNAUTHENTICATED)")
        if not row["allowed"]:
            return Fallback("a permission or existence check failed (FORBIDDEN / NOT_FOUND)")
        return Answer(row["data"])

    async def run(
        self,
        document: DocumentNode,
        *,
        text: str,
        operation_name: str | None,
        raw_variables: Mapping[str, Any] | None,
        connection: Connection,
        claims: AccessClaims | None,
    ) -> Answer | Fallback:
        """Plan and execute a validated document; Fallback when the resolver path must
        answer."""
        operation = self.operation(document, operation_name)
        if isinstance(operation, NotCompilable):
            return Fallback(operation.reason)
        variables = coerce_variables(self.schema, operation, raw_variables)
        if variables is None:
            return Fallback("variables do not coerce")
        plan = self.plan(document, text=text, operation_name=operation_name, variables=variables)
        if isinstance(plan, NotCompilable):
            return Fallback(plan.reason)
        return await self.execute(plan, connection=connection, variables=variables, claims=claims)
