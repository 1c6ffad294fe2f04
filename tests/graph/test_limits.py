"""The query-cost estimate: page sizes multiply, a left-out `first` counts as a page, and a
page size is priced from the coerced variables whichever way it is passed."""

from __future__ import annotations

from typing import Any

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from atlas_gql.config import Settings
from atlas_gql.graph.schema import build_schema

NESTED = (
    "{ projects%s { edges { node { threads%s { edges { node { "
    "messages%s { edges { node { id } } } } } } } } } }"
)


def page(size: object, directives: str = "") -> str:
    return f"projects(first: {size}) {directives} {{ edges {{ node {{ id }} }} }} __typename"


def wrap(selection: str, definitions: str = "") -> str:
    return f"{definitions} {{ {selection} }}"


CHEAP = build_schema(Settings.model_construct(atlas_max_cost=1, atlas_document_cache_bytes=0))


async def cost_of(query: str, variables: dict[str, Any] | None = None) -> int:
    result = await CHEAP.execute(query, variable_values=variables)
    assert result.errors is not None
    extensions = result.errors[0].extensions or {}
    assert extensions["code"] == "QUERY_TOO_COMPLEX", result.errors
    cost = extensions["cost"]
    assert isinstance(cost, int)
    return cost


async def test_left_out_first_is_priced_as_the_default_page() -> None:
    implicit = await cost_of(NESTED % ("", "", ""))
    explicit = await cost_of(NESTED % ("(first: 20)", "(first: 20)", "(first: 20)"))
    small = await cost_of(NESTED % ("(first: 1)", "(first: 1)", "(first: 1)"))
    assert implicit == explicit
    assert small < explicit
    assert explicit > 20 * 20 * 20


async def test_fragments_and_variables_are_priced() -> None:
    query = """
    query($n: Int) { projects(first: $n) { edges { node { ...P } } } }
    fragment P on Project { members(first: 50) { edges { node { id } } } }
    """
    assert await cost_of(query, {"n": 100}) > 100 * 50


async def test_default_limit_refuses_three_nested_full_pages() -> None:
    schema = build_schema(Settings.model_construct())
    query = NESTED % ("(first: 100)", "(first: 100)", "(first: 100)")
    result = await schema.execute(query)
    assert result.errors is not None
    assert (result.errors[0].extensions or {})["code"] == "QUERY_TOO_COMPLEX"


async def test_a_variable_default_is_priced_as_its_value() -> None:
    """The review's case: `$n: Int = 100` was priced as the default page (20) but ran 100."""
    literal = await cost_of(wrap(page(100)))
    defaulted = await cost_of(wrap(page("$n"), "query($n: Int = 100)"))
    assert defaulted == literal
    assert defaulted > await cost_of(wrap(page(20)))


async def test_a_provided_variable_overrides_its_default() -> None:
    query = wrap(page("$n"), "query($n: Int = 100)")
    assert await cost_of(query, {"n": 3}) == await cost_of(wrap(page(3)))


async def test_null_and_left_out_variables_are_the_default_page() -> None:
    default = await cost_of(wrap(page(20)))
    variable = wrap(page("$n"), "query($n: Int)")
    assert await cost_of(variable, {"n": None}) == default
    assert await cost_of(variable) == default
    assert await cost_of(wrap(page("null"))) == default


async def test_last_and_before_pages_are_priced_like_first() -> None:
    messages = "{ threads(first: 1) { nodes { messages(%s: %s) { nodes { id } } } } }"
    query = "query($n: Int = 100) " + messages % ("last", "$n")
    assert await cost_of(query) == await cost_of(messages % ("first", "100"))


async def test_a_page_size_inside_a_fragment_is_priced_from_the_operation_variables() -> None:
    query = "query($n: Int = 100) { ...Page } fragment Page on Query { " + page("$n") + " }"
    assert await cost_of(query) == await cost_of(wrap(page(100)))


async def test_skip_and_include_follow_their_variables() -> None:
    query = wrap(
        f"small: {page(1)} big: {page(100, '@include(if: $big)')}", "query($big: Boolean!)"
    )
    assert await cost_of(query, {"big": True}) > await cost_of(query, {"big": False})
    literal = wrap(f"small: {page(1)} big: {page(100, '@skip(if: true)')}")
    assert await cost_of(literal) == await cost_of(query, {"big": False})


@settings(max_examples=60, deadline=None, database=None)
@given(
    size=st.integers(min_value=-5, max_value=150),
    way=st.sampled_from(["literal", "variable", "default", "default overridden"]),
)
async def test_every_way_of_passing_a_page_size_costs_the_same(size: int, way: str) -> None:
    clamped = min(max(size, 0), 100)
    expected = await cost_of(wrap(page(clamped)))
    if way == "literal":
        found = await cost_of(wrap(page(size)))
    elif way == "variable":
        found = await cost_of(wrap(page("$n"), "query($n: Int)"), {"n": size})
    elif way == "default":
        found = await cost_of(wrap(page("$n"), f"query($n: Int = {size})"))
    else:
        found = await cost_of(wrap(page("$n"), "query($n: Int = 1)"), {"n": size})
    assert found == expected


async def test_cost_by_variable_default_is_refused_over_http(client: httpx.AsyncClient) -> None:
    query = "query($n: Int = 100) " + NESTED % ("(first: $n)", "(first: $n)", "(first: $n)")
    response = await client.post("/graphql", json={"query": query})
    assert response.status_code == 400
    error = response.json()["errors"][0]
    assert error["extensions"]["code"] == "QUERY_TOO_COMPLEX"
    assert error["extensions"]["cost"] > 100 * 100 * 100
    small = await client.post("/graphql", json={"query": query, "variables": {"n": 2}})
    assert small.status_code == 200
    assert small.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_bad_variables_are_refused_before_pricing(client: httpx.AsyncClient) -> None:
    query = wrap(page("$n"), "query($n: Int = 100)")
    response = await client.post("/graphql", json={"query": query, "variables": {"n": "many"}})
    body = response.json()
    assert response.status_code == 200
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert "requestId" not in body["errors"][0]["extensions"]
