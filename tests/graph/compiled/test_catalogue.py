"""The compiler's catalogue and the schema stay in step: each field of a compiled type is
either built in SQL or listed as left to the resolver path, so a field added to the schema
is a conscious decision here (until then it falls back, which is safe but slow)."""

from __future__ import annotations

from graphql import GraphQLObjectType

from atlas_gql.graph.compiled.catalogue import NOT_COMPILED, OBJECTS, ROOT_FIELDS
from atlas_gql.graph.schema import build_schema


def test_every_field_of_a_compiled_type_is_built_or_listed() -> None:
    schema = build_schema()._schema
    unaccounted = []
    for type_name, spec in OBJECTS.items():
        graphql_type = schema.get_type(type_name)
        assert isinstance(graphql_type, GraphQLObjectType), type_name
        for field in graphql_type.fields:
            if field not in spec.fields and f"{type_name}.{field}" not in NOT_COMPILED:
                unaccounted.append(f"{type_name}.{field}")
        for field in spec.fields:
            assert field in graphql_type.fields, f"{type_name}.{field} is not in the schema"
    query_type = schema.query_type
    assert query_type is not None
    for field in query_type.fields:
        if field not in ROOT_FIELDS and f"Query.{field}" not in NOT_COMPILED:
            unaccounted.append(f"Query.{field}")
    assert unaccounted == []


def test_listed_refusals_exist() -> None:
    schema = build_schema()._schema
    for path in NOT_COMPILED:
        type_name, _, field = path.partition(".")
        graphql_type = schema.get_type(type_name)
        assert isinstance(graphql_type, GraphQLObjectType)
        assert field in graphql_type.fields, path
