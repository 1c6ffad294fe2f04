"""The first, cheap look at a parsed document: how many of each kind of node it holds.

Parsing is already bounded (bytes, tokens, nesting). Validation and analysis cost grows with
the number of fields, fragments, operations, directives and variables, and some of
graphql-core's rules multiply two of them (every operation walks the fragments it uses). This
linear count runs before either, so a document over a cap is refused before any work that is
not linear in its size."""

from __future__ import annotations

from dataclasses import dataclass, fields

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    Node,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableDefinitionNode,
)


def fragments_of(document: DocumentNode) -> dict[str, FragmentDefinitionNode]:
    """The document's fragment definitions by name."""
    return {
        definition.name.value: definition
        for definition in document.definitions
        if isinstance(definition, FragmentDefinitionNode)
    }


@dataclass(frozen=True, slots=True)
class DocumentCounts:
    """Nodes of each kind in a document, as written (fragments are not expanded)."""

    operations: int = 0
    fragments: int = 0
    fields: int = 0
    spreads: int = 0
    directives: int = 0
    variables: int = 0


@dataclass(frozen=True, slots=True)
class StructureCaps(DocumentCounts):
    """The most of each kind a document may hold (`STRUCTURE_CAPS`)."""

    def first_exceeded(self, counts: DocumentCounts) -> tuple[str, int, int] | None:
        """(kind, count, cap) of the first kind over its cap; None when all are within."""
        for field in fields(self):
            count, cap = getattr(counts, field.name), getattr(self, field.name)
            if count > cap:
                return field.name, count, cap
        return None


# The caps every document is held to. They keep parse + validation + analysis of the worst
# document within ~50 ms on a slow core (bench/document_limits.py).
STRUCTURE_CAPS = StructureCaps(
    operations=10, fragments=50, fields=400, spreads=200, directives=50, variables=50
)

_DEFINITION_KINDS = (OperationDefinitionNode, FragmentDefinitionNode)


def count_document(document: DocumentNode) -> DocumentCounts:
    """Count the nodes of `document` in one pass, without recursion."""
    operations = fragments = fields_ = spreads = directives = variables = 0
    stack: list[Node] = list(document.definitions)
    pop, push = stack.pop, stack.append
    while stack:
        node = pop()
        if isinstance(node, FieldNode):
            fields_ += 1
            if node.directives:
                directives += len(node.directives)
            if node.selection_set is not None:
                push(node.selection_set)
        elif isinstance(node, SelectionSetNode):
            stack.extend(node.selections)
        elif isinstance(node, FragmentSpreadNode):
            spreads += 1
            if node.directives:
                directives += len(node.directives)
        elif isinstance(node, InlineFragmentNode):
            spreads += 1
            if node.directives:
                directives += len(node.directives)
            push(node.selection_set)
        elif isinstance(node, _DEFINITION_KINDS):
            if isinstance(node, OperationDefinitionNode):
                operations += 1
            else:
                fragments += 1
            if node.directives:
                directives += len(node.directives)
            for definition in node.variable_definitions or ():
                variables += 1
                push(definition)
            push(node.selection_set)
        elif isinstance(node, VariableDefinitionNode) and node.directives:
            directives += len(node.directives)
    return DocumentCounts(
        operations=operations,
        fragments=fragments,
        fields=fields_,
        spreads=spreads,
        directives=directives,
        variables=variables,
    )
