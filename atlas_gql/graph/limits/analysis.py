"""Depth, aliases and cost of every operation of a document, in one pass.

Each fragment is analysed once and its result reused wherever it is spread, so a chain of
fragments that each spread the next one twice costs as many steps as it has fragments (the
depth-, alias- and cost-limiters this replaces walked every path: exponential).

Depth and aliases depend on the document only. Cost depends on variables too: a page size may
come from one, and `@skip`/`@include` may drop a subtree. So the pass builds a cost
*expression* per operation, folded to a number wherever no variable is involved, and
`price()` evaluates it with the operation's coerced variable values (defaults applied), each
shared sub-expression (a fragment) once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from graphql import (
    BooleanValueNode,
    DirectiveNode,
    DocumentNode,
    FieldNode,
    FragmentSpreadNode,
    GraphQLField,
    GraphQLInterfaceType,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    NullValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableNode,
    get_named_type,
)
from graphql.utilities import type_from_ast

from atlas_gql.db.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from atlas_gql.graph.limits.structure import fragments_of

PAGE_ARGUMENTS = ("first", "last")
# Selection sets nested deeper than this, counting fragment spreads and inline fragments,
# are refused before anything else recurses through them. Realistic documents nest < 30.
MAX_NESTING = 64
# Costs saturate here: a fragment bomb is priced "more than the limit", not as a 300-digit number.
COST_CEILING = 10**12


class NestedTooDeeply(Exception):
    """Selection sets nest deeper than MAX_NESTING, through fragments."""


@dataclass(frozen=True, slots=True)
class _Sum:
    constant: int
    terms: tuple[Cost, ...]


@dataclass(frozen=True, slots=True)
class _Page:
    """`1 + size * inner` for a field whose page size is (partly) a variable."""

    sizes: tuple[int | str, ...]  # literal sizes and variable names
    inner: Cost


@dataclass(frozen=True, slots=True)
class _Condition:
    """`inner` when the variables of `@include(if:)` / `@skip(if:)` keep it, else 0."""

    include_if: tuple[tuple[str, bool], ...]  # (variable, value that keeps the subtree)
    inner: Cost


Cost = int | _Sum | _Page | _Condition


@dataclass(frozen=True, slots=True)
class OperationAnalysis:
    node: OperationDefinitionNode
    depth: int
    aliases: int
    cost: Cost

    @property
    def name(self) -> str | None:
        return self.node.name.value if self.node.name else None

    @property
    def label(self) -> str:
        return self.name or "anonymous"


@dataclass(slots=True)
class DocumentAnalysis:
    operations: list[OperationAnalysis] = field(default_factory=list)

    def operation(self, name: str | None) -> OperationAnalysis | None:
        """The operation a request runs: the named one, else the only one."""
        if name is None:
            return self.operations[0] if len(self.operations) == 1 else None
        return next((op for op in self.operations if op.name == name), None)


@dataclass(frozen=True, slots=True)
class _Shape:
    depth: int
    aliases: int
    cost: Cost


_EMPTY = _Shape(0, 0, 0)


def analyse(schema: GraphQLSchema, document: DocumentNode) -> DocumentAnalysis:
    """Depth, aliases and cost expression of every operation; raises NestedTooDeeply."""
    return _Analyser(schema, document).run()


class _Analyser:
    def __init__(self, schema: GraphQLSchema, document: DocumentNode) -> None:
        self.schema = schema
        self.document = document
        self.fragments = fragments_of(document)
        self.fragment_shapes: dict[str, _Shape] = {}
        self.in_progress: set[str] = set()
        self.nesting = 0

    def run(self) -> DocumentAnalysis:
        analysis = DocumentAnalysis()
        for definition in self.document.definitions:
            if isinstance(definition, OperationDefinitionNode):
                root = self.schema.get_root_type(definition.operation)
                shape = self.selection_set(root, definition.selection_set)
                analysis.operations.append(
                    OperationAnalysis(definition, shape.depth, shape.aliases, shape.cost)
                )
        return analysis

    def selection_set(
        self, parent: GraphQLNamedType | None, selection_set: SelectionSetNode
    ) -> _Shape:
        self.nesting += 1
        if self.nesting > MAX_NESTING:
            raise NestedTooDeeply
        try:
            return self._selections(parent, selection_set)
        finally:
            self.nesting -= 1

    def _selections(
        self, parent: GraphQLNamedType | None, selection_set: SelectionSetNode
    ) -> _Shape:
        depth = aliases = constant = 0
        terms: list[Cost] = []
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                shape = self._field(parent, selection)
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                narrowed = type_from_ast(self.schema, condition) if condition else parent
                shape = self.selection_set(narrowed, selection.selection_set)
            elif isinstance(selection, FragmentSpreadNode):
                shape = self._fragment(selection.name.value)
            else:  # pragma: no cover - no other selection kinds exist
                continue
            depth = max(depth, shape.depth)
            aliases += shape.aliases
            cost = _conditional(selection.directives, shape.cost)
            if isinstance(cost, int):
                constant += cost
            else:
                terms.append(cost)
        return _Shape(depth, aliases, _sum(constant, terms))

    def _field(self, parent: GraphQLNamedType | None, node: FieldNode) -> _Shape:
        definition: GraphQLField | None = None
        if isinstance(parent, (GraphQLObjectType, GraphQLInterfaceType)):
            definition = parent.fields.get(node.name.value)
        inner = _EMPTY
        if node.selection_set is not None:
            child = get_named_type(definition.type) if definition is not None else None
            inner = self.selection_set(child, node.selection_set)
        # As Strawberry's depth limiter: introspection fields do not count towards depth.
        depth = 0
        if node.selection_set is not None and not node.name.value.startswith("__"):
            depth = 1 + inner.depth
        aliases = inner.aliases + (1 if node.alias is not None else 0)
        return _Shape(depth, aliases, _field_cost(node, definition, inner.cost))

    def _fragment(self, name: str) -> _Shape:
        shape = self.fragment_shapes.get(name)
        if shape is not None:
            return shape
        fragment = self.fragments.get(name)
        if fragment is None or name in self.in_progress:
            return _EMPTY  # unknown or cyclic: validation refuses the document
        self.in_progress.add(name)
        try:
            target = type_from_ast(self.schema, fragment.type_condition)
            shape = self.selection_set(target, fragment.selection_set)
        finally:
            self.in_progress.discard(name)
        self.fragment_shapes[name] = shape
        return shape


def _field_cost(node: FieldNode, definition: GraphQLField | None, inner: Cost) -> Cost:
    """1 for the field; a field that reads a page multiplies the cost of what it selects
    by the page size (the default page when `first`/`last` is left out or null)."""
    takes_page = definition is not None and any(name in definition.args for name in PAGE_ARGUMENTS)
    sizes: list[int | str] = []
    for argument in node.arguments or ():
        if argument.name.value not in PAGE_ARGUMENTS:
            continue
        value = argument.value
        if isinstance(value, IntValueNode):
            sizes.append(_clamp(int(value.value)))
        elif isinstance(value, VariableNode):
            sizes.append(value.name.value)
        elif isinstance(value, NullValueNode) or takes_page:
            sizes.append(DEFAULT_PAGE_SIZE)
    if not sizes:
        if not takes_page:
            return _plus_one(inner)
        sizes.append(DEFAULT_PAGE_SIZE)
    literal = max((size for size in sizes if isinstance(size, int)), default=None)
    variables = tuple(dict.fromkeys(size for size in sizes if isinstance(size, str)))
    if not variables and literal is not None and isinstance(inner, int):
        return _saturate(1 + literal * inner)
    return _Page(variables + ((literal,) if literal is not None else ()), inner)


def _conditional(directives: tuple[DirectiveNode, ...] | None, cost: Cost) -> Cost:
    """The cost of a selection under its `@skip`/`@include` directives."""
    include_if: list[tuple[str, bool]] = []
    for directive in directives or ():
        name = directive.name.value
        if name not in ("skip", "include"):
            continue
        keep_when = name == "include"
        for argument in directive.arguments or ():
            if argument.name.value != "if":
                continue
            value = argument.value
            if isinstance(value, BooleanValueNode):
                if value.value != keep_when:
                    return 0
            elif isinstance(value, VariableNode):
                include_if.append((value.name.value, keep_when))
    if not include_if or cost == 0:
        return cost
    return _Condition(tuple(include_if), cost)


def _sum(constant: int, terms: list[Cost]) -> Cost:
    if not terms:
        return _saturate(constant)
    return _Sum(constant, tuple(terms))


def _plus_one(inner: Cost) -> Cost:
    if isinstance(inner, int):
        return _saturate(1 + inner)
    if isinstance(inner, _Sum):
        return _Sum(inner.constant + 1, inner.terms)
    return _Sum(1, (inner,))


def _clamp(size: int) -> int:
    return min(max(size, 0), MAX_PAGE_SIZE)


def _saturate(value: int) -> int:
    return min(value, COST_CEILING)


def price(cost: Cost, variables: Mapping[str, Any]) -> int:
    """The cost with these coerced variable values; each shared sub-expression once."""
    if isinstance(cost, int):
        return cost
    memo: dict[int, int] = {}

    def evaluate(expression: Cost) -> int:
        if isinstance(expression, int):
            return expression
        key = id(expression)
        known = memo.get(key)
        if known is not None:
            return known
        if isinstance(expression, _Sum):
            value = expression.constant + sum(evaluate(term) for term in expression.terms)
        elif isinstance(expression, _Page):
            size = max(_page_size(size, variables) for size in expression.sizes)
            value = 1 + size * evaluate(expression.inner)
        elif all(variables.get(name) is keep for name, keep in expression.include_if):
            value = evaluate(expression.inner)
        else:
            value = 0
        value = memo[key] = _saturate(value)
        return value

    return evaluate(cost)


def _page_size(size: int | str, variables: Mapping[str, Any]) -> int:
    if isinstance(size, int):
        return size
    value = variables.get(size)
    if isinstance(value, int) and not isinstance(value, bool):
        return _clamp(value)
    return DEFAULT_PAGE_SIZE
