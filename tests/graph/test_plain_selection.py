"""graph/fanout.py's `plain_selection`: which selections of an event read only what the event
holds (shared by every subscriber of a group), on the real schema."""

from __future__ import annotations

import pytest
from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    GraphQLObjectType,
    OperationDefinitionNode,
    parse,
)

from atlas_gql.graph.fanout import plain_selection
from atlas_gql.graph.schema import build_schema

SCHEMA = build_schema()._schema

FRAGMENTS = """
fragment Created on MessageCreated { sequence message { role status } }
fragment Resolved on MessageCreated { message { files { id } } }
fragment Other on MessageCompleted { message { parent { id } } }
"""


def is_plain(selection: str, type_name: str = "MessageCreated") -> bool:
    document = parse(
        f"subscription($t: ID!) {{ threadEvents(threadId: $t) {{ {selection} }} }} {FRAGMENTS}"
    )
    operation, *fragments = document.definitions
    assert isinstance(operation, OperationDefinitionNode)
    [root] = operation.selection_set.selections
    assert isinstance(root, FieldNode)
    assert root.selection_set is not None
    event_type = SCHEMA.get_type(type_name)
    assert isinstance(event_type, GraphQLObjectType)
    by_name = {
        fragment.name.value: fragment
        for fragment in fragments
        if isinstance(fragment, FragmentDefinitionNode)
    }
    return plain_selection(SCHEMA, event_type, root.selection_set, by_name)


@pytest.mark.parametrize(
    "selection",
    [
        "__typename",
        "... on MessageCreated { id sequence messageId message { id role status content } }",
        "... on ThreadEvent { sequence }",
        "...Created",
        # Fragments for other types do not run for a MessageCreated.
        "...Created ...Other ... on MessageCompleted { message { files { id } } }",
        "... on MessageCreated { m: message { c: content } message { createdAt } }",
    ],
)
def test_selections_of_plain_fields_are_plain(selection: str) -> None:
    assert is_plain(selection)


@pytest.mark.parametrize(
    "selection",
    [
        "... on MessageCreated { message { files { id } } }",
        "... on MessageCreated { message { author { id } } }",
        "... on MessageCreated { message { citations { title } } }",
        "...Resolved",
        "... on ThreadEvent { ... on MessageCreated { message { parent { id } } } }",
    ],
)
def test_a_field_with_a_resolver_is_not_plain(selection: str) -> None:
    assert not is_plain(selection)


def test_the_event_type_decides() -> None:
    selection = "... on MessageCompleted { message { parent { id } } } ...Created"
    assert is_plain(selection, "MessageCreated")
    assert not is_plain(selection, "MessageCompleted")
