"""Generated documents: selection sets drawn from the schema (every field the compiler builds,
nested to three levels, page sizes at the edges, aliases, inline and named fragments,
`__typename`) run through both paths for a drawn viewer; the compiled path answers exactly
what the resolver path answers, or hands the request back where the resolver path errs.

A strategy of our own rather than hypothesis-graphql: that one draws argument values at
random (nearly every document would then be refused, and so fall back, before any page is
read); this one draws what the compiler is asked to build. GENERATED_EXAMPLES runs it longer.
"""

from __future__ import annotations

import json
import os
from typing import Any

from graphql import (
    GraphQLEnumType,
    GraphQLObjectType,
    GraphQLScalarType,
    GraphQLSchema,
    get_named_type,
    parse,
    validate,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atlas_gql.graph.compiled import Answer, Fallback
from atlas_gql.graph.compiled.catalogue import OBJECTS
from atlas_gql.graph.schema import build_schema
from tests.graph.compiled.conftest import VIEWERS, Both

SCHEMA: GraphQLSchema = build_schema()._schema
ROOTS = ("projects", "threads", "assistants", "users", "activityLogs", "errorLogs", "me", "roles")
PAGE_SIZES = st.sampled_from([None, 0, 1, 2, 3])
MAX_DEPTH = 3


def _object(name: str) -> GraphQLObjectType:
    found = SCHEMA.get_type(name)
    assert isinstance(found, GraphQLObjectType), name
    return found


def _is_leaf(type_: Any) -> bool:
    return isinstance(get_named_type(type_), GraphQLScalarType | GraphQLEnumType)


@st.composite
def _arguments(draw: st.DrawFn, field: Any) -> str:
    """Page arguments only (the other arguments keep their defaults)."""
    given: list[str] = []
    if "first" in field.args:
        backward = "last" in field.args and draw(st.booleans())
        size = draw(PAGE_SIZES)
        if size is not None:
            given.append(f"{'last' if backward else 'first'}: {size}")
    return f"({', '.join(given)})" if given else ""


@st.composite
def selection(draw: st.DrawFn, type_name: str, depth: int, counter: list[int]) -> str:
    """A selection set on `type_name`: some of its fields, each maybe aliased, the whole maybe
    wrapped in an inline fragment."""
    graphql_type = _object(type_name)
    if type_name in OBJECTS:
        names = [name for name in OBJECTS[type_name].fields if name in graphql_type.fields]
    else:  # connections, edges, PageInfo
        names = list(graphql_type.fields)
    if depth >= MAX_DEPTH:
        names = [name for name in names if _is_leaf(graphql_type.fields[name].type)] or names[:1]
    chosen = draw(st.lists(st.sampled_from(names), min_size=1, max_size=4, unique=True))
    parts: list[str] = []
    if draw(st.integers(0, 5)) == 0:
        parts.append("__typename")
    for name in chosen:
        field = graphql_type.fields[name]
        counter[0] += 1
        alias = f"a{counter[0]}: " if draw(st.integers(0, 4)) == 0 else ""
        if any(
            argument.type.__class__.__name__ == "GraphQLNonNull" for argument in field.args.values()
        ):
            continue  # a required argument: not drawn here
        arguments = draw(_arguments(field))
        if _is_leaf(field.type):
            parts.append(f"{alias}{name}")
            continue
        inner = draw(selection(get_named_type(field.type).name, depth + 1, counter))
        parts.append(f"{alias}{name}{arguments} {{ {inner} }}")
    if not parts:
        parts.append("__typename")
    body = " ".join(parts)
    if draw(st.integers(0, 5)) == 0:
        return f"... on {type_name} {{ {body} }}"
    return body


@st.composite
def documents(draw: st.DrawFn) -> str:
    counter = [0]
    query_type = _object("Query")
    roots = draw(st.lists(st.sampled_from(ROOTS), min_size=1, max_size=2, unique=True))
    parts = []
    for name in roots:
        field = query_type.fields[name]
        arguments = draw(_arguments(field))
        inner = draw(selection(get_named_type(field.type).name, 1, counter))
        parts.append(f"{name}{arguments} {{ {inner} }}")
    if draw(st.booleans()):
        # The same selection through a named fragment on Query.
        return f"query {{ ...Roots }} fragment Roots on Query {{ {' '.join(parts)} }}"
    return f"query {{ {' '.join(parts)} }}"


@settings(
    max_examples=int(os.environ.get("GENERATED_EXAMPLES", "25")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(document=documents(), viewer=st.sampled_from(VIEWERS))
async def test_generated_selections_answer_the_same_on_both_paths(
    both: Both, document: str, viewer: str
) -> None:
    if validate(SCHEMA, parse(document)):
        return  # (a drawn alias clash; the generator avoids most)
    expected = await both.resolver(document, viewer=viewer)
    compiled = await both.compiled(document, viewer=viewer)
    if "errors" in expected:
        assert isinstance(compiled, Fallback), (document, viewer, expected["errors"])
        return
    assert isinstance(compiled, Answer), (document, viewer, compiled)
    assert json.dumps(json.loads(compiled.data)) == json.dumps(expected["data"]), (
        document,
        viewer,
    )
