"""The schema, assembled from the domains' pieces."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

import strawberry
from graphql import GraphQLError
from strawberry.schema.schema import DEFAULT_ALLOWED_OPERATION_TYPES
from strawberry.schema_directive import StrawberrySchemaDirective
from strawberry.tools import merge_types
from strawberry.types import ExecutionResult
from strawberry.types.graphql import OperationType

from atlas_gql.ai import branches_graph, transfer_graph
from atlas_gql.ai import graph as ai_graph
from atlas_gql.ai import types as ai_types
from atlas_gql.auth import graph as auth_graph
from atlas_gql.auth import keys_graph
from atlas_gql.config import Settings
from atlas_gql.graph.context import Info
from atlas_gql.graph.errors import ErrorMappingExtension
from atlas_gql.graph.execution import AtlasExecutor
from atlas_gql.graph.limits import DocumentGuard, DocumentLimits, limit_extensions
from atlas_gql.graph.relay import Node, resolve_node
from atlas_gql.logs import graph as logs_graph
from atlas_gql.projects import graph as projects_graph


@strawberry.type
class NodeQuery:
    @strawberry.field(
        description="Any object by its global ID; null when it does not exist "
        "or the viewer may not see it."
    )
    async def node(
        self,
        info: Info,
        id: Annotated[
            strawberry.ID,
            strawberry.argument(
                description="A global ID of any type (as every object's `id` answers); a "
                "malformed one is BAD_USER_INPUT."
            ),
        ],
    ) -> Node | None:
        return await resolve_node(info.context, str(id))  # type: ignore[no-any-return]


QUERY_PIECES: tuple[type, ...] = (
    NodeQuery,
    auth_graph.Query,
    keys_graph.Query,
    logs_graph.Query,
    projects_graph.Query,
    ai_graph.Query,
    transfer_graph.Query,
)
MUTATION_PIECES: tuple[type, ...] = (
    auth_graph.Mutation,
    keys_graph.Mutation,
    projects_graph.Mutation,
    ai_graph.Mutation,
    branches_graph.Mutation,
    transfer_graph.Mutation,
)
SUBSCRIPTION_PIECES: tuple[type, ...] = (ai_graph.Subscription,)
# Types no field names (implementations of an interface a field returns).
EXTRA_TYPES: tuple[type, ...] = ai_types.EVENT_TYPES


def _merged(name: str, pieces: tuple[type, ...]) -> Any:
    return merge_types(name, pieces) if pieces else None


class AtlasSchema(strawberry.Schema):
    # Parses, checks and caches this schema's documents (graph/limits).
    document_guard: DocumentGuard

    async def execute(
        self,
        query: str | None,
        variable_values: dict[str, Any] | None = None,
        context_value: Any | None = None,
        root_value: Any | None = None,
        operation_name: str | None = None,
        allowed_operation_types: Iterable[OperationType] | None = None,
        operation_extensions: dict[str, Any] | None = None,
    ) -> ExecutionResult:
        """One result per operation: a subscription needs a stream (graphql-transport-ws), so
        here it is refused (InvalidOperationTypeError, a 400 over HTTP) instead of failing
        inside its resolver."""
        allowed = set(allowed_operation_types or DEFAULT_ALLOWED_OPERATION_TYPES)
        allowed.discard(OperationType.SUBSCRIPTION)
        return await super().execute(
            query,
            variable_values,
            context_value,
            root_value,
            operation_name,
            allowed,
            operation_extensions,
        )

    def process_errors(self, errors: list[GraphQLError], execution_context: Any = None) -> None:
        """Strawberry would log every error with its raw message; ErrorMappingExtension logs
        the unexpected ones, redacted, and client errors need no log line."""


def build_schema(settings: Settings | None = None) -> AtlasSchema:
    """The executable schema; `settings` sets the limits (defaults when None)."""
    settings = settings or Settings.model_construct()
    guard = DocumentGuard(DocumentLimits.from_settings(settings))
    tracing: list[Any] = []
    if settings.tracing_enabled:
        from atlas_gql.graph.tracing import OperationTracingExtension

        # First, so its span encloses the operation boundary (the commit, after-commit work).
        tracing.append(OperationTracingExtension)
    schema = AtlasSchema(
        query=_merged("Query", QUERY_PIECES),
        mutation=_merged("Mutation", MUTATION_PIECES),
        subscription=_merged("Subscription", SUBSCRIPTION_PIECES),
        types=EXTRA_TYPES,
        extensions=[*tracing, ErrorMappingExtension, *limit_extensions(guard)],
        execution_context_class=AtlasExecutor,
    )
    schema.document_guard = guard
    _describe_directive_arguments(schema)
    return schema


def _describe_directive_arguments(schema: AtlasSchema) -> None:
    """Strawberry drops the descriptions of a schema directive's fields when it makes them
    arguments (`@hasPermission(permission:)`); copy them over, for introspection and the SDL
    alike (its printer reuses these objects)."""
    for directive in schema._schema.directives:
        definition = directive.extensions.get("strawberry-definition")
        if not isinstance(definition, StrawberrySchemaDirective):
            continue
        for field in definition.fields:
            argument = directive.args.get(schema.config.name_converter.get_graphql_name(field))
            if argument is not None and argument.description is None:
                argument.description = field.description


def export_sdl() -> str:
    """The SDL clients code against (schema/schema.graphql)."""
    from strawberry.printer import print_schema

    return print_schema(build_schema()) + "\n"
