"""The query-cost estimate: page sizes multiply, and a left-out `first` counts as a page."""

from __future__ import annotations

from atlas_gql.config import Settings
from atlas_gql.graph.schema import build_schema

NESTED = (
    "{ projects%s { edges { node { threads%s { edges { node { "
    "messages%s { edges { node { id } } } } } } } } } }"
)


async def cost_of(query: str) -> int:
    schema = build_schema(Settings.model_construct(atlas_max_cost=1))
    result = await schema.execute(query)
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
    schema = build_schema(Settings.model_construct(atlas_max_cost=1))
    result = await schema.execute(query, variable_values={"n": 100})
    assert result.errors is not None
    assert (result.errors[0].extensions or {})["cost"] > 100 * 50


async def test_default_limit_refuses_three_nested_full_pages() -> None:
    schema = build_schema(Settings.model_construct())
    query = NESTED % ("(first: 100)", "(first: 100)", "(first: 100)")
    result = await schema.execute(query)
    assert result.errors is not None
    assert (result.errors[0].extensions or {})["code"] == "QUERY_TOO_COMPLEX"
