"""Field merging ("OverlappingFieldsCanBeMerged") without quadratic work.

The spec's rule compares every pair of fields that share a response name, then the merged
sub-selections of every such pair, recursively. graphql-core follows it, with caches and an
overall budget of 500,000 units that takes seconds to spend in Python: 250 copies of
`me { id }` took 0.9 s, a Relay-style document with a dozen fragments on one type 150 ms.

Equality of field names and arguments and compatibility of response shapes are equivalence
relations, so a group of fields agrees pairwise exactly when each agrees with the first; and
the pairwise merges of a group's sub-selections check, between them, the same pairs as one
merge of all of them. `FieldMergeCheck` walks the document that way (as in "Validating
GraphQL field merging in linear time", Xing's field-merging algorithm), memoising each
merged set, and proves that no conflict exists in time about linear in the document.

When it cannot prove it (a real conflict, or a construct it leaves to graphql-core), the
document falls back to graphql-core's rule for the exact error messages, with a budget cut
to what a few milliseconds buy. A document that exhausts either budget is refused as
QUERY_TOO_COMPLEX."""

from __future__ import annotations

import json
from collections.abc import Hashable
from dataclasses import dataclass
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
    GraphQLOutputType,
    GraphQLSchema,
    InlineFragmentNode,
    NamedTypeNode,
    OperationDefinitionNode,
    SelectionSetNode,
    get_named_type,
    is_leaf_type,
    is_list_type,
    is_non_null_type,
    is_object_type,
)
from graphql.utilities import type_from_ast
from graphql.validation import ValidationContext
from graphql.validation.rules.overlapping_fields_can_be_merged import (
    OverlappingFieldsCanBeMergedRule,
    get_value_structure,
)
from graphql.validation.validate import ValidationAbortedError

from atlas_gql.graph.limits.structure import fragments_of

# Units of work (a field collected, a field compared) the linear check may spend on one
# document; realistic documents use a few thousand.
MERGE_CHECK_BUDGET = 100_000
# graphql-core's units for the fallback (its default is 500,000, seconds of work in Python).
FALLBACK_BUDGET = 4_000

TOO_COMPLEX_MESSAGE = (
    "The document's fields and fragments overlap too much to be checked; "
    "send fewer copies of the same fields or fragments."
)


def too_complex_error() -> GraphQLError:
    return ValidationAbortedError(TOO_COMPLEX_MESSAGE, extensions={"code": "QUERY_TOO_COMPLEX"})


class _NotProven(Exception):
    """The check met a conflict or a construct it leaves to graphql-core."""


class _OverBudget(Exception):
    """The check spent its budget."""


@dataclass(slots=True)
class _Field:
    parent: GraphQLNamedType | None
    node: FieldNode
    definition: GraphQLField | None


_Entry = tuple[GraphQLNamedType | None, SelectionSetNode]


class _Collected:
    """A selection set's fields by response name (fragments flattened), whether any name
    is shared, and the selection sets of the fields written in it (the walk's next step)."""

    __slots__ = ("children", "groups", "shared_names")

    def __init__(self) -> None:
        self.groups: dict[str, list[_Field]] = {}
        self.children: list[_Entry] = []
        self.shared_names = False


class FieldMergeCheck:
    """Proves that every selection set of a document can merge its fields; `run()` is True
    when it could, False when graphql-core's rule must look, and raises `_OverBudget`."""

    def __init__(
        self, schema: GraphQLSchema, document: DocumentNode, budget: int = MERGE_CHECK_BUDGET
    ) -> None:
        self.schema = schema
        self.document = document
        self.budget = budget
        self.fragments = fragments_of(document)
        self._collected: dict[tuple[int, int], _Collected] = {}
        self._checked: set[Hashable] = set()
        self._argument_keys: dict[int, Hashable] = {}
        self._named_types: dict[int, GraphQLNamedType] = {}

    def run(self) -> bool:
        try:
            for definition in self.document.definitions:
                if isinstance(definition, OperationDefinitionNode):
                    root = self.schema.get_root_type(definition.operation)
                    self._walk(root, definition.selection_set)
                elif isinstance(definition, FragmentDefinitionNode):
                    if definition.variable_definitions:
                        raise _NotProven  # fragment arguments (experimental)
                    self._walk(self._type(definition.type_condition), definition.selection_set)
        except _NotProven:
            return False
        return True

    def _spend(self, units: int) -> None:
        self.budget -= units
        if self.budget < 0:
            raise _OverBudget

    def _type(self, type_node: NamedTypeNode) -> GraphQLNamedType | None:
        return type_from_ast(self.schema, type_node)

    def _walk(self, parent: GraphQLNamedType | None, selection_set: SelectionSetNode) -> None:
        """Check `selection_set` and every field's selection set below it (iteratively;
        fragment spreads are not followed: fragment definitions are walked themselves)."""
        stack: list[_Entry] = [(parent, selection_set)]
        while stack:
            entry = stack.pop()
            collected = self._collect(*entry)
            if collected.shared_names:
                self._check((entry,), exclusive=False)
            stack.extend(collected.children)

    def _child_type(self, field: _Field) -> GraphQLNamedType | None:
        """The named type of the field's value: the parent of its sub-selection."""
        definition = field.definition
        if definition is None:
            return None
        named = self._named_types.get(id(definition))
        if named is None:
            named = self._named_types[id(definition)] = get_named_type(definition.type)
        return named

    def _definition(self, parent: GraphQLNamedType | None, node: FieldNode) -> GraphQLField | None:
        if isinstance(parent, (GraphQLObjectType, GraphQLInterfaceType)):
            definition: GraphQLField | None = parent.fields.get(node.name.value)
            return definition
        return None

    def _collect(
        self, parent: GraphQLNamedType | None, selection_set: SelectionSetNode
    ) -> _Collected:
        """The fields of a selection set by response name, inline fragments and fragment
        spreads flattened (each fragment once)."""
        key = (id(parent), id(selection_set))
        cached = self._collected.get(key)
        if cached is not None:
            return cached
        collected = _Collected()
        groups, children = collected.groups, collected.children
        seen: set[str] = set()
        # (parent type, selection set, reached without crossing a fragment spread)
        stack: list[tuple[GraphQLNamedType | None, SelectionSetNode, bool]] = [
            (parent, selection_set, True)
        ]
        while stack:
            current_parent, current, own = stack.pop()
            self._spend(len(current.selections) + 1)
            for selection in current.selections:
                if isinstance(selection, FieldNode):
                    name = selection.name.value
                    definition = self._definition(current_parent, selection)
                    if definition is None and not name.startswith("__"):
                        raise _NotProven  # an unknown field: validation reports it
                    if selection.directives and any(
                        directive.name.value == "stream" for directive in selection.directives
                    ):
                        raise _NotProven
                    field = _Field(current_parent, selection, definition)
                    response_name = selection.alias.value if selection.alias else name
                    group = groups.get(response_name)
                    if group is None:
                        groups[response_name] = [field]
                    else:
                        group.append(field)
                        collected.shared_names = True
                    if own and selection.selection_set is not None:
                        children.append((self._child_type(field), selection.selection_set))
                elif isinstance(selection, InlineFragmentNode):
                    condition = selection.type_condition
                    narrowed = self._type(condition) if condition else current_parent
                    stack.append((narrowed, selection.selection_set, own))
                elif isinstance(selection, FragmentSpreadNode):
                    fragment_name = selection.name.value
                    if fragment_name in seen:
                        continue
                    seen.add(fragment_name)
                    fragment = self.fragments.get(fragment_name)
                    if fragment is None or getattr(selection, "arguments", None):
                        raise _NotProven  # unknown fragment / fragment arguments
                    target = self._type(fragment.type_condition)
                    stack.append((target, fragment.selection_set, False))
        self._collected[key] = collected
        return collected

    def _check(self, entries: tuple[_Entry, ...], *, exclusive: bool) -> None:
        """Check that the merged fields of `entries` can merge. `exclusive`: the fields
        can never apply together (different object parents above), so only their response
        shapes must agree."""
        if len(entries) == 1:
            parent, node = entries[0]
            key: Hashable = (exclusive, id(parent), id(node))
        else:
            key = (exclusive, frozenset((id(parent), id(node)) for parent, node in entries))
        if key in self._checked:
            return
        self._checked.add(key)
        if len(entries) == 1:
            groups = self._collect(*entries[0]).groups
        else:
            groups = {}
            for parent, selection_set in entries:
                for response_name, found in self._collect(parent, selection_set).groups.items():
                    groups.setdefault(response_name, []).extend(found)
                    self._spend(len(found))
        for group in groups.values():
            if len(group) > 1:
                self._check_group(group, exclusive=exclusive)

    def _check_group(self, group: list[_Field], *, exclusive: bool) -> None:
        self._spend(len(group))
        first_type: GraphQLOutputType | None = None
        for field in group:
            if field.definition is None:
                continue
            if first_type is None:
                first_type = field.definition.type
            elif _types_conflict(first_type, field.definition.type):
                raise _NotProven
        if exclusive:
            self._check_children(group, exclusive=True)
            return
        by_object: dict[int, list[_Field]] = {}
        shared: list[_Field] = []
        for field in group:
            if is_object_type(field.parent):
                by_object.setdefault(id(field.parent), []).append(field)
            else:
                shared.append(field)
        if shared:
            # Fields under an interface (or unknown) parent may apply with any other.
            self._require_same_call(group)
            partitions = [fields + shared for fields in by_object.values()] or [shared]
        else:
            for fields in by_object.values():
                self._require_same_call(fields)
            partitions = list(by_object.values())
        for partition in partitions:
            self._check_children(partition, exclusive=False)
        if len(partitions) > 1:
            # Across different object parents only the response shapes must agree.
            self._check_children(group, exclusive=True)

    def _check_children(self, fields: list[_Field], *, exclusive: bool) -> None:
        entries = tuple(
            (self._child_type(field), field.node.selection_set)
            for field in fields
            if field.node.selection_set is not None
        )
        if len(entries) > 1 or (entries and exclusive):
            self._check(entries, exclusive=exclusive)

    def _require_same_call(self, fields: list[_Field]) -> None:
        first = fields[0].node
        first_arguments = self._arguments_key(first)
        for field in fields[1:]:
            node = field.node
            if node is first:
                continue
            if node.name.value != first.name.value:
                raise _NotProven
            if self._arguments_key(node) != first_arguments:
                raise _NotProven

    def _arguments_key(self, node: FieldNode) -> Hashable:
        """The arguments as graphql-core compares them: by name, values by structure."""
        arguments = node.arguments
        if not arguments:
            return ()
        cached = self._argument_keys.get(id(node))
        if cached is None:
            self._spend(len(arguments) + 1)
            names = [argument.name.value for argument in arguments]
            if len(set(names)) != len(names):
                raise _NotProven  # a repeated argument: validation reports it
            variables: list[str] = []
            cached = self._argument_keys[id(node)] = json.dumps(
                sorted(
                    (argument.name.value, get_value_structure(argument.value, variables))
                    for argument in arguments
                ),
                separators=(",", ":"),
            )
        return cached


def _types_conflict(first: GraphQLOutputType, second: GraphQLOutputType) -> bool:
    """graphql-core's do_types_conflict: list and non-null wrappers must match, leaf types
    must be the same; composite types are compared through their fields."""
    while True:
        if first is second:
            return False
        if is_list_type(first) or is_list_type(second):
            if not (is_list_type(first) and is_list_type(second)):
                return True
        elif is_non_null_type(first) or is_non_null_type(second):
            if not (is_non_null_type(first) and is_non_null_type(second)):
                return True
        else:
            return is_leaf_type(first) or is_leaf_type(second)
        first, second = first.of_type, second.of_type


class OverlappingFieldsRule(OverlappingFieldsCanBeMergedRule):
    """graphql-core's OverlappingFieldsCanBeMergedRule behind the linear check: it only
    runs (with a small budget) for documents the check could not prove mergeable."""

    def __init__(self, context: ValidationContext) -> None:
        super().__init__(context)
        self.rule_context.remaining_complexity_budget = FALLBACK_BUDGET
        self.proven = False

    def enter_document(self, node: DocumentNode, *_args: Any) -> None:
        try:
            self.proven = FieldMergeCheck(self.context.schema, node).run()
        except _OverBudget:
            raise too_complex_error() from None

    def enter_selection_set(self, *args: Any) -> None:
        if not self.proven:
            super().enter_selection_set(*args)
