"""Every type, field, argument, enum value and union member of DESIGN.md's normative SDL
excerpt (copied in design_sdl.graphql) exists in the exported schema with the same type, but
where the nullability rule (issue 10 part 7, docs/architecture.md) makes a field nullable:
every query and mutation root field, and every field that takes arguments. Where an issue
changed a shape (DESIGN.md: "the issues win where they differ"), `CHANGED_BY_ISSUES` names the
new type and the issue."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from graphql import (
    EnumTypeDefinitionNode,
    GraphQLEnumType,
    GraphQLInterfaceType,
    GraphQLUnionType,
    ObjectTypeDefinitionNode,
    UnionTypeDefinitionNode,
    build_schema,
    parse,
    print_ast,
)

from atlas_gql.graph.schema import export_sdl

DESIGN_SDL = Path(__file__).with_name("design_sdl.graphql")
ROOT_TYPES = frozenset({"Query", "Mutation"})

# Issue 12 part 6: a mutation that changes an object returns it; one that deletes it returns
# its ID (README, "API conventions").
CHANGED_BY_ISSUES = {
    "Mutation.deleteProject": "ID",
    "Mutation.removeProjectMember": "ID",
    "Mutation.deleteProjectSetting": "Project",
    "Mutation.deleteAssistant": "ID",
    "Mutation.deleteThread": "ID",
    "Mutation.detachFile": "File",
    "Mutation.deleteFile": "ID",
}


def nullable_by_rule(type_name: str, takes_arguments: bool) -> bool:
    """A field error stays a field error: root fields and fields with arguments are nullable
    (a subscription's events are not: an error ends the stream)."""
    return type_name in ROOT_TYPES or (takes_arguments and type_name != "Subscription")


def test_exported_schema_keeps_every_normative_name() -> None:
    ours = build_schema(export_sdl())
    problems: list[str] = []
    for definition in parse(DESIGN_SDL.read_text()).definitions:
        name = definition.name.value  # type: ignore[attr-defined]
        ours_type = ours.type_map.get(name)
        if ours_type is None:
            problems.append(f"missing type {name}")
            continue
        if isinstance(definition, ObjectTypeDefinitionNode):
            for field in definition.fields or ():
                ours_field = cast(Any, ours_type).fields.get(field.name.value)
                if ours_field is None:
                    problems.append(f"missing field {name}.{field.name.value}")
                    continue
                expected = print_ast(field.type)
                if nullable_by_rule(name, bool(field.arguments)):
                    expected = expected.removesuffix("!")
                expected = CHANGED_BY_ISSUES.get(f"{name}.{field.name.value}", expected)
                if expected != str(ours_field.type):
                    problems.append(f"{name}.{field.name.value}: {ours_field.type}")
                for argument in field.arguments or ():
                    if argument.name.value not in ours_field.args:
                        problems.append(f"missing argument {name}.{field.name.value}")
        elif isinstance(definition, EnumTypeDefinitionNode):
            assert isinstance(ours_type, GraphQLEnumType)
            for value in definition.values or ():
                if value.name.value not in ours_type.values:
                    problems.append(f"missing enum value {name}.{value.name.value}")
        elif isinstance(definition, UnionTypeDefinitionNode):
            if isinstance(ours_type, GraphQLInterfaceType):
                # Issue 12 part 3: ThreadEvent is an interface its former members implement.
                members = {member.name for member in ours.get_implementations(ours_type).objects}
            else:
                assert isinstance(ours_type, GraphQLUnionType)
                members = {member.name for member in ours_type.types}
            for member in definition.types or ():
                if member.name.value not in members:
                    problems.append(f"union {name} lacks {member.name.value}")
    assert problems == []
