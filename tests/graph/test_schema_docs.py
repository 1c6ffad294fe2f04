"""Every part of the schema a client reads in GraphiQL or generates code from is described
(issue 12 part 7): types, fields, arguments, input fields, enum values, directives and their
arguments. The test names every element that lacks a description, so a field added without
one fails here with its coordinate (`Type.field(argument:)`)."""

from __future__ import annotations

from collections.abc import Iterator

from graphql import (
    GraphQLEnumType,
    GraphQLInputObjectType,
    GraphQLInterfaceType,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLSchema,
    GraphQLUnionType,
    specified_directives,
)
from graphql.type.introspection import introspection_types

from atlas_gql.graph.schema import build_schema

SCHEMA: GraphQLSchema = build_schema()._schema

# Root operation types are named by the spec and described by their fields.
ROOT_TYPES = {"Query", "Mutation", "Subscription"}
# Too short to say anything a client needs ("A 36-character UUID." is fine; "The id." is not).
MIN_LENGTH = 8


def described(description: str | None) -> bool:
    return description is not None and len(description.strip()) >= MIN_LENGTH


def own_types(schema: GraphQLSchema) -> list[GraphQLNamedType]:
    """The schema's own named types: no introspection types, no built-in scalars."""
    built_in = set(introspection_types) | {"String", "Int", "Float", "Boolean", "ID"}
    return [named for name, named in sorted(schema.type_map.items()) if name not in built_in]


def undescribed(schema: GraphQLSchema) -> Iterator[str]:
    """The coordinate of every element without a useful description."""
    for named in own_types(schema):
        if named.name not in ROOT_TYPES and not described(named.description):
            yield named.name
        if isinstance(named, GraphQLObjectType | GraphQLInterfaceType):
            for field_name, field in named.fields.items():
                if not described(field.description):
                    yield f"{named.name}.{field_name}"
                for arg_name, arg in field.args.items():
                    if not described(arg.description):
                        yield f"{named.name}.{field_name}({arg_name}:)"
        elif isinstance(named, GraphQLInputObjectType):
            for field_name, input_field in named.fields.items():
                if not described(input_field.description):
                    yield f"{named.name}.{field_name}"
        elif isinstance(named, GraphQLEnumType):
            for value_name, value in named.values.items():
                if not described(value.description):
                    yield f"{named.name}.{value_name}"
        elif isinstance(named, GraphQLUnionType):
            pass  # its description is checked above; its members are object types
    specified = {directive.name for directive in specified_directives}
    for directive in schema.directives:
        if directive.name in specified:
            continue
        if not described(directive.description):
            yield f"@{directive.name}"
        for arg_name, arg in directive.args.items():
            if not described(arg.description):
                yield f"@{directive.name}({arg_name}:)"


def test_every_type_field_argument_and_enum_value_is_described() -> None:
    missing = list(undescribed(SCHEMA))
    assert not missing, f"{len(missing)} schema elements lack a description:\n" + "\n".join(missing)


def test_the_walk_sees_every_kind_of_element() -> None:
    """The walk reaches each kind it checks, so an empty list above means described, not
    skipped: it finds the undescribed parts of a schema built to have one of each."""
    from graphql import build_schema as build_sdl

    bare = build_sdl(
        """
        directive @gate(reason: String) on FIELD_DEFINITION
        "Root." type Query { thing(id: ID): Thing, kind: Kind, shape: Shape }
        interface Shape { area: Int }
        type Thing implements Shape { area: Int }
        union Either = Thing
        input Filter { name: String }
        enum Kind { A }
        scalar Moment
        type Mutation { apply(filter: Filter): Either }
        """
    )
    assert sorted(undescribed(bare)) == sorted(
        [
            "@gate",
            "@gate(reason:)",
            "Either",
            "Filter",
            "Filter.name",
            "Kind",
            "Kind.A",
            "Moment",
            "Mutation.apply",
            "Mutation.apply(filter:)",
            "Query.kind",
            "Query.shape",
            "Query.thing",
            "Query.thing(id:)",
            "Shape",
            "Shape.area",
            "Thing",
            "Thing.area",
        ]
    )


def test_short_descriptions_do_not_count() -> None:
    assert not described(None)
    assert not described("  Id. ")
    assert described("The thread's title; null when it has none.")
