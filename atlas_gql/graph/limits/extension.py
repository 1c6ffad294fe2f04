"""The document guard: every operation's document goes through it before execution.

1. Size: at most ATLAS_MAX_DOCUMENT_BYTES (UTF-8, comments and whitespace included).
2. Parse (graphql-core's parser, a faster lexer for long runs), bounded by ATLAS_MAX_TOKENS
   (comments count) and graphql-core's nesting limit.
3. A linear count of fields, fragments, spreads, directives, variables and operations
   against `StructureCaps`.
4. One analysis pass: depth, aliases (both static) and the cost expression of each operation.
5. String literals: none may hold what PostgreSQL cannot store (`inputs.py`). Validation:
   graphql-core's rules, its field-merging rule behind a linear check, field suggestions
   ("Did you mean ...") hidden when introspection is off.
6. Per request: every string of the variable values checked like the literals (`inputs.py`),
   then the cost priced with the coerced variable values, defaults included.

Steps 1-5 depend on the document text only; their outcome is cached (bounded in bytes) for
requests that carry a validly signed access token, documents up to 32 KiB. Anonymous requests
read the cache but never add to it, so they cannot churn it or grow it; whatever they send
costs them parse and validation, which the limits above bound."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    GraphQLError,
    GraphQLSchema,
    NameNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    specified_rules,
    validate,
)
from graphql.execution.values import get_variable_values
from graphql.validation import (
    ASTValidationRule,
    NoSchemaIntrospectionCustomRule,
    OverlappingFieldsCanBeMergedRule,
)
from graphql.validation.validate import ValidationAbortedError
from strawberry.extensions import SchemaExtension
from strawberry.schema.validation_rules.maybe_null import MaybeNullValidationRule
from strawberry.schema.validation_rules.one_of import OneOfInputValidationRule

from atlas_gql.auth.tokens import bearer_token, decode_access_token
from atlas_gql.config import Settings, settings_group
from atlas_gql.errors import AtlasError
from atlas_gql.graph.limits.analysis import (
    DocumentAnalysis,
    NestedTooDeeply,
    OperationAnalysis,
    analyse,
    price,
)
from atlas_gql.graph.limits.cache import BytesBoundedLRU
from atlas_gql.graph.limits.inputs import literal_string_errors, variable_string_errors
from atlas_gql.graph.limits.lexer import parse_document
from atlas_gql.graph.limits.overlap import OverlappingFieldsRule, too_complex_error
from atlas_gql.graph.limits.structure import STRUCTURE_CAPS, StructureCaps, count_document

QUERY_TOO_COMPLEX = "QUERY_TOO_COMPLEX"
PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
# Approximate memory of a parsed document: the source text, the values its tokens copy out
# of it (comments and strings: up to the source again), and per token its node, location
# and place in the token list.
AST_BYTES_PER_TOKEN = 512
MAX_VALIDATION_ERRORS = 50
# Documents longer than this are never cached: real clients' documents are a few KiB, and
# caching a padded one would only pin its padding (bench/document_memory.py).
MAX_CACHED_DOCUMENT_BYTES = 32 * 1024


@dataclass(frozen=True, slots=True)
class DocumentLimits:
    """The limits of one configuration."""

    max_document_bytes: int
    max_tokens: int
    max_depth: int
    max_aliases: int
    max_cost: int
    introspection: bool
    cache_bytes: int
    caps: StructureCaps = STRUCTURE_CAPS

    @classmethod
    def from_settings(cls, settings: Settings) -> DocumentLimits:
        return settings_group(
            cls,
            settings,
            prefix="atlas_",
            introspection="introspection_enabled",
            cache_bytes="atlas_document_cache_bytes",
            caps=None,
        )


@dataclass(slots=True)
class PreparedDocument:
    """A parsed document and what steps 3-5 found: `errors` empty when it may run."""

    document: DocumentNode
    errors: list[GraphQLError]
    analysis: DocumentAnalysis | None


def refusal(message: str, code: str, **extensions: Any) -> GraphQLError:
    return GraphQLError(message, extensions={"code": code, **extensions})


def utf8_length(text: str) -> int:
    """Bytes of `text` in UTF-8 (lone surrogates, which JSON can carry, as 3 bytes)."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


class DocumentGuard:
    """Parses, checks and validates documents for one schema, with the bounded cache."""

    def __init__(self, limits: DocumentLimits) -> None:
        self.limits = limits
        self.cache: BytesBoundedLRU[str, PreparedDocument] | None = (
            BytesBoundedLRU(limits.cache_bytes) if limits.cache_bytes > 0 else None
        )
        rules: list[type[ASTValidationRule]] = [
            OverlappingFieldsRule if rule is OverlappingFieldsCanBeMergedRule else rule
            for rule in specified_rules
        ]
        rules += [MaybeNullValidationRule, OneOfInputValidationRule]
        if not limits.introspection:
            rules.append(NoSchemaIntrospectionCustomRule)
        self.rules = tuple(rules)

    def prepare(
        self, schema: GraphQLSchema, query: str, *, cacheable: Callable[[], bool]
    ) -> PreparedDocument | GraphQLError:
        """The checked document for `query`, or the error that refuses it before parsing
        completes. `cacheable()` is asked (once, on a miss) whether the result may be kept."""
        size = utf8_length(query)
        if size > self.limits.max_document_bytes:
            return refusal(
                f"The document is {size} bytes; the limit is {self.limits.max_document_bytes}.",
                PAYLOAD_TOO_LARGE,
                maxDocumentBytes=self.limits.max_document_bytes,
            )
        cache = self.cache
        if cache is not None:
            cached = cache.get(query)
            if cached is not None:
                return cached
        try:
            document = parse_document(query, max_tokens=self.limits.max_tokens)
        except GraphQLError as error:
            if "Parsing aborted" in error.message:  # too many tokens, nested too deeply
                error.extensions = {**(error.extensions or {}), "code": QUERY_TOO_COMPLEX}
            return error
        prepared = self._check(schema, document)
        if cache is not None and size <= MAX_CACHED_DOCUMENT_BYTES and cacheable():
            tokens = getattr(document, "token_count", 0)
            cache.put(query, prepared, 2 * size + AST_BYTES_PER_TOKEN * tokens)
        return prepared

    def cached(self, query: str) -> PreparedDocument | None:
        """The checked document for `query` when the cache holds it (nothing is parsed)."""
        return self.cache.get(query) if self.cache is not None else None

    def _check(self, schema: GraphQLSchema, document: DocumentNode) -> PreparedDocument:
        limits = self.limits
        exceeded = limits.caps.first_exceeded(count_document(document))
        if exceeded is not None:
            kind, count, cap = exceeded
            error = refusal(
                f"The document has {count} {kind}; the limit is {cap}.",
                QUERY_TOO_COMPLEX,
                limit=kind,
                count=count,
                max=cap,
            )
            return PreparedDocument(document, [error], None)
        try:
            analysis = analyse(schema, document)
        except NestedTooDeeply:
            error = refusal(
                "The document nests selections (through fragments) too deeply.",
                QUERY_TOO_COMPLEX,
            )
            return PreparedDocument(document, [error], None)
        errors = [
            error for operation in analysis.operations for error in self._static_errors(operation)
        ] or literal_string_errors(document)
        if not errors:
            errors = validate(
                schema,
                document,
                self.rules,
                max_errors=MAX_VALIDATION_ERRORS,
                hide_suggestions=not limits.introspection,
            )
            errors = [_coded(error) for error in errors]
        return PreparedDocument(document, errors, analysis)

    def _static_errors(self, operation: OperationAnalysis) -> Iterator[GraphQLError]:
        limits = self.limits
        if operation.depth > limits.max_depth:
            yield refusal(
                f"'{operation.label}' exceeds maximum operation depth of {limits.max_depth}",
                QUERY_TOO_COMPLEX,
                depth=operation.depth,
                maxDepth=limits.max_depth,
            )
        if operation.aliases > limits.max_aliases:
            yield refusal(
                f"'{operation.label}' uses {operation.aliases} aliases (counting each fragment "
                f"spread); the limit is {limits.max_aliases}.",
                QUERY_TOO_COMPLEX,
                aliases=operation.aliases,
                maxAliases=limits.max_aliases,
            )
        if isinstance(operation.cost, int) and operation.cost > limits.max_cost:
            yield self._cost_error(operation.cost)

    def _cost_error(self, cost: int) -> GraphQLError:
        return refusal(
            f"Query cost {cost} exceeds the limit of {self.limits.max_cost}; "
            "request fewer items per page or fewer nested lists.",
            QUERY_TOO_COMPLEX,
            cost=cost,
            maxCost=self.limits.max_cost,
        )

    def request_errors(
        self,
        schema: GraphQLSchema,
        prepared: PreparedDocument,
        operation_name: str | None,
        variables: Any,
    ) -> list[GraphQLError]:
        """What refuses this request of a valid document: its variables or its cost."""
        unstorable = variable_string_errors(variables)
        if unstorable:
            return unstorable
        analysis = prepared.analysis
        operation = analysis.operation(operation_name) if analysis is not None else None
        if operation is None:
            return []  # execution reports the missing or ambiguous operation
        node = operation.node
        static = isinstance(operation.cost, int)
        hide_suggestions = not self.limits.introspection
        if static and not (hide_suggestions and node.variable_definitions):
            return []  # the static cost was checked with the document
        if variables is not None and not isinstance(variables, dict):
            return [refusal("Variables must be a JSON object.", "BAD_USER_INPUT")]
        coerced = get_variable_values(
            schema,
            node.variable_definitions or (),
            variables or {},
            max_errors=MAX_VALIDATION_ERRORS,
            hide_suggestions=hide_suggestions,
        )
        if isinstance(coerced, list):
            return [_coded(error, "BAD_USER_INPUT") for error in coerced]
        cost = price(operation.cost, coerced.coerced)
        return [self._cost_error(cost)] if cost > self.limits.max_cost else []


def _coded(error: GraphQLError, default: str | None = None) -> GraphQLError:
    """graphql-core's "Validation aborted." (recursion or budget) says nothing to a client."""
    if isinstance(error, ValidationAbortedError) and error.message == "Validation aborted.":
        return too_complex_error()
    if default is not None and not (error.extensions or {}).get("code"):
        error.extensions = {**(error.extensions or {}), "code": default}
    return error


def _placeholder(context: Any) -> DocumentNode:
    """A document that stands in for one that was refused before it parsed: Strawberry
    looks up the operation type between parsing and validation, and the refusal is then
    reported by validation like any other."""
    allowed = {operation.value for operation in context.allowed_operations}
    kind = "query" if "query" in allowed or not allowed else sorted(allowed)[0]
    name = context.operation_name
    selection = FieldNode(name=NameNode(value="__typename"), arguments=(), directives=())
    operation = OperationDefinitionNode(
        operation=OperationType(kind),
        name=NameNode(value=name) if isinstance(name, str) else None,
        variable_definitions=(),
        directives=(),
        selection_set=SelectionSetNode(selections=(selection,)),
    )
    return DocumentNode(definitions=(operation,))


def _requested_operation_name(context: Any) -> str | None:
    """The operationName the client sent. Strawberry's `operation_name` falls back to the
    document's first operation, which would run it where the spec requires an error."""
    name = getattr(context, "_provided_operation_name", None)
    return name if isinstance(name, str) else None


def _several_operations(prepared: PreparedDocument) -> bool:
    definitions = prepared.document.definitions
    return sum(isinstance(node, OperationDefinitionNode) for node in definitions) > 1


def _signed_in(context: Any) -> bool:
    """Whether the request carries an access token with a valid signature (checked without
    the database; the session itself is checked when the operation runs)."""
    authorization = getattr(context, "authorization", None)
    settings = getattr(context, "settings", None)
    if not isinstance(authorization, str) or not isinstance(settings, Settings):
        return False
    try:
        token = bearer_token(authorization)
        return token is not None and decode_access_token(token, settings=settings) is not None
    except AtlasError:
        return False


class DocumentLimitsExtension(SchemaExtension):
    """Runs the guard for one operation (see the module docstring)."""

    def __init__(self, *, guard: DocumentGuard) -> None:
        self.guard = guard
        self.prepared: PreparedDocument | None = None
        self.refused: GraphQLError | None = None

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        query = context.query
        if isinstance(query, str) and query and context.graphql_document is None:
            outcome = self.guard.prepare(
                context.schema._schema, query, cacheable=partial(_signed_in, context.context)
            )
            if isinstance(outcome, GraphQLError):
                self.refused = outcome
                context.graphql_document = _placeholder(context)
            elif _requested_operation_name(context) is None and _several_operations(outcome):
                self.refused = refusal(
                    "The document holds several operations: name the one to run in "
                    "`operationName`.",
                    "BAD_REQUEST",
                )
                context.graphql_document = _placeholder(context)
            else:
                self.prepared = outcome
                context.graphql_document = outcome.document
        elif query is not None and not isinstance(query, str):
            self.refused = refusal("The query must be a string.", "BAD_REQUEST")
            context.graphql_document = _placeholder(context)
        yield

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        if self.refused is not None:
            context.pre_execution_errors = [self.refused]
        elif self.prepared is not None:
            errors = self.prepared.errors or self.guard.request_errors(
                context.schema._schema,
                self.prepared,
                context.operation_name,
                context.variables,
            )
            context.pre_execution_errors = list(errors)
        yield


def limit_extensions(guard: DocumentGuard) -> list[Callable[[], SchemaExtension]]:
    """Factories (a fresh extension per operation) sharing one guard and its cache."""
    return [partial(DocumentLimitsExtension, guard=guard)]
