"""Limits on every request: depth, aliases, tokens, query cost, body size, introspection."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from functools import cache, lru_cache, partial
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLField,
    GraphQLInterfaceType,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableNode,
    get_named_type,
    parse,
)
from graphql.language import IntValueNode
from graphql.validation import ASTValidationRule, NoSchemaIntrospectionCustomRule
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from strawberry.extensions import (
    AddValidationRules,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    QueryDepthLimiter,
    SchemaExtension,
    ValidationCache,
)

from atlas_gql.config import Settings
from atlas_gql.db.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE

PAGE_ARGUMENTS = ("first", "last")


class QueryCostLimiter(SchemaExtension):
    """Refuses operations whose estimated cost exceeds `max_cost` before they run.

    Each field costs 1; a field that takes `first`/`last` multiplies the cost of its selection
    by that page size (20, the default page, when the argument is left out), so
    `projects(first: 100) { members(first: 100) { ... } }` is priced as the 10,000 rows it may
    read."""

    def __init__(self, max_cost: int) -> None:
        self.max_cost = max_cost

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        document = context.graphql_document
        if document is not None and not context.pre_execution_errors:
            schema = context.schema._schema
            fragments = {
                node.name.value: node
                for node in document.definitions
                if isinstance(node, FragmentDefinitionNode)
            }
            estimator = _CostEstimator(schema, fragments, context.variables or {})
            for definition in document.definitions:
                if not isinstance(definition, OperationDefinitionNode):
                    continue
                if context.operation_name and (
                    definition.name is None or definition.name.value != context.operation_name
                ):
                    continue
                root = schema.get_root_type(definition.operation)
                cost = estimator.selection_cost(definition.selection_set, root, frozenset())
                if cost > self.max_cost:
                    context.pre_execution_errors = [
                        GraphQLError(
                            f"Query cost {cost} exceeds the limit of {self.max_cost}; "
                            "request fewer items per page or fewer nested lists.",
                            extensions={
                                "code": "QUERY_TOO_COMPLEX",
                                "cost": cost,
                                "maxCost": self.max_cost,
                            },
                        )
                    ]
                    break
        yield


class _CostEstimator:
    def __init__(
        self,
        schema: GraphQLSchema,
        fragments: dict[str, FragmentDefinitionNode],
        variables: dict[str, Any],
    ) -> None:
        self.schema = schema
        self.fragments = fragments
        self.variables = variables

    def page_size(self, field: FieldNode, definition: GraphQLField | None) -> int | None:
        """The page a field reads: its `first`/`last` value, the default page when it takes
        one but it is left out, None for a field that is not a list page."""
        for argument in field.arguments or ():
            if argument.name.value not in PAGE_ARGUMENTS:
                continue
            value = argument.value
            if isinstance(value, IntValueNode):
                return min(max(int(value.value), 0), MAX_PAGE_SIZE)
            if isinstance(value, VariableNode):
                raw = self.variables.get(value.name.value)
                if isinstance(raw, int):
                    return min(max(raw, 0), MAX_PAGE_SIZE)
            return DEFAULT_PAGE_SIZE
        if definition is not None and any(name in definition.args for name in PAGE_ARGUMENTS):
            return DEFAULT_PAGE_SIZE
        return None

    def selection_cost(
        self,
        selection_set: SelectionSetNode | None,
        parent: GraphQLNamedType | None,
        visiting: frozenset[str],
    ) -> int:
        if selection_set is None:
            return 0
        total = 0
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                definition = None
                if isinstance(parent, (GraphQLObjectType, GraphQLInterfaceType)):
                    definition = parent.fields.get(selection.name.value)
                child = get_named_type(definition.type) if definition is not None else None
                inner = self.selection_cost(selection.selection_set, child, visiting)
                size = self.page_size(selection, definition)
                total += 1 + (inner * size if size is not None else inner)
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                target = self.schema.get_type(condition.name.value) if condition else parent
                total += self.selection_cost(selection.selection_set, target, visiting)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = self.fragments.get(name)
                if fragment is not None and name not in visiting:
                    target = self.schema.get_type(fragment.type_condition.name.value)
                    total += self.selection_cost(fragment.selection_set, target, visiting | {name})
        return total


# Documents parsed and validated are cached (bounded LRU, shared by all requests): a client
# sends the same few documents over and over, and validation was a third of a small request.
DOCUMENT_CACHE_SIZE = 512


@cache
def _limit_rules(
    max_depth: int, max_aliases: int, introspection: bool
) -> tuple[type[ASTValidationRule], ...]:
    """The validation rules of the limits, made once per configuration: the validation cache
    is keyed by the rule classes, so they must be the same objects on every request."""
    rules: list[type[ASTValidationRule]] = [
        *QueryDepthLimiter(max_depth=max_depth).validation_rules,
        *MaxAliasesLimiter(max_alias_count=max_aliases).validation_rules,
    ]
    if not introspection:
        rules.append(NoSchemaIntrospectionCustomRule)
    return tuple(rules)


class CachedParse(SchemaExtension):
    """Strawberry's ParserCache, except that a document that fails to parse is left to
    Strawberry, which answers it as a GraphQL syntax error (ParserCache lets it escape)."""

    def __init__(self) -> None:
        self.parse = _cached_parse

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        if context.query is not None:
            with contextlib.suppress(GraphQLError):
                context.graphql_document = self.parse(context.query, **context.parse_options)
        yield


@lru_cache(maxsize=DOCUMENT_CACHE_SIZE)
def _cached_parse(query: str, **options: Any) -> DocumentNode:
    return parse(query, **options)


def limit_extensions(settings: Settings) -> list[Callable[[], SchemaExtension]]:
    """Factories (a fresh extension per operation) for every limit, and the document caches."""
    rules = _limit_rules(
        settings.atlas_max_depth, settings.atlas_max_aliases, settings.introspection_enabled
    )
    return [
        partial(MaxTokensLimiter, max_token_count=settings.atlas_max_tokens),
        CachedParse,
        partial(AddValidationRules, list(rules)),
        partial(ValidationCache, maxsize=DOCUMENT_CACHE_SIZE),
        # After the validation cache, which replaces the errors it finds.
        partial(QueryCostLimiter, max_cost=settings.atlas_max_cost),
    ]


class BodySizeLimitMiddleware:
    """Answers 413 when a request body exceeds its limit (declared or streamed)."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.lower(): value for key, value in scope.get("headers", [])}
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        limit = self.max_body_bytes
        if content_type.startswith("multipart/form-data"):
            limit = self.max_upload_bytes + self.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(send, limit)
            return
        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not response_started:
                await _too_large(send, limit)


class _BodyTooLarge(Exception):
    pass


async def _too_large(send: Send, limit: int) -> None:
    error = {
        "message": f"Request body exceeds {limit} bytes.",
        "extensions": {"code": "PAYLOAD_TOO_LARGE"},
    }
    body = json.dumps({"errors": [error]}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
