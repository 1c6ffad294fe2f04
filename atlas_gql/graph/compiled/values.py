"""Argument values of a compiled document: literals, or variables read at request time.

A plan is compiled for a *shape* of the variables, never for their values: the shape says
which values are null, the booleans (they steer `@include`/`@skip` and filters), and the type
named by each `ID` (it picks `node(id:)`'s table). Everything else reaches the statement as a
bound parameter, read from the variables of each request."""

from __future__ import annotations

import binascii
import enum
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from graphql import (
    GraphQLInputObjectType,
    GraphQLInputType,
    ObjectValueNode,
    ValueNode,
    VariableDefinitionNode,
    VariableNode,
    get_named_type,
    value_from_ast,
)
from graphql.pyutils import Undefined

from atlas_gql.errors import BadInput
from atlas_gql.graph.compiled.errors import NotCompilable
from atlas_gql.ids import decode_global_id

Shape = Hashable
UNDECODABLE_ID = "!invalid"


def id_type_name(value: Any) -> str:
    """The type named by a global id, or UNDECODABLE_ID."""
    try:
        return decode_global_id(str(value))[0]
    except BadInput:
        return UNDECODABLE_ID
    except (binascii.Error, ValueError):  # pragma: no cover - decode_global_id maps these
        return UNDECODABLE_ID


def shape_of(value: Any, *, is_id: bool = False) -> Shape:
    """What of a variable's value a plan may depend on."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, Mapping):
        return tuple(
            (key, shape_of(item)) for key, item in sorted(value.items()) if item is not None
        )
    if isinstance(value, list | tuple):
        return tuple(shape_of(item, is_id=is_id) for item in value)
    if is_id:
        return ("id", id_type_name(value))
    return "value"


def variable_is_id(definition: VariableDefinitionNode) -> bool:
    node: Any = definition.type
    while hasattr(node, "type"):
        node = node.type
    return bool(node.name.value == "ID")


def operation_shapes(
    definitions: tuple[VariableDefinitionNode, ...], variables: Mapping[str, Any]
) -> tuple[tuple[str, Shape], ...]:
    return tuple(
        (
            definition.variable.name.value,
            shape_of(
                variables.get(definition.variable.name.value), is_id=variable_is_id(definition)
            ),
        )
        for definition in definitions
    )


def plain(value: Any) -> Any:
    """A coerced value as the database takes it (Strawberry's enums coerce to their value)."""
    return value.value if isinstance(value, enum.Enum) else value


class Value:
    """An argument (or input field) of the document."""

    def is_null(self) -> bool:
        raise NotImplementedError

    def resolve(self, variables: Mapping[str, Any]) -> Any:
        """The value of one request (variables are coerced)."""
        raise NotImplementedError

    def field(self, name: str) -> Value:
        """A field of an input object value."""
        raise NotImplementedError

    def static_bool(self) -> bool:
        raise NotImplementedError

    def static_id_type(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Const(Value):
    value: Any

    def is_null(self) -> bool:
        return self.value is None

    def resolve(self, variables: Mapping[str, Any]) -> Any:
        return self.value

    def field(self, name: str) -> Value:
        return Const(self.value.get(name) if isinstance(self.value, Mapping) else None)

    def static_bool(self) -> bool:
        return bool(self.value)

    def static_id_type(self) -> str:
        return id_type_name(self.value)


@dataclass(frozen=True)
class Var(Value):
    name: str
    path: tuple[str, ...]
    shapes: Mapping[str, Shape]

    def _shape(self) -> Shape:
        shape = self.shapes.get(self.name)
        for key in self.path:
            if not isinstance(shape, tuple):
                return None
            shape = dict(shape).get(key)
        return shape

    def is_null(self) -> bool:
        return self._shape() is None

    def resolve(self, variables: Mapping[str, Any]) -> Any:
        value = variables.get(self.name)
        for key in self.path:
            value = value.get(key) if isinstance(value, Mapping) else None
        return value

    def field(self, name: str) -> Value:
        return Var(self.name, (*self.path, name), self.shapes)

    def static_bool(self) -> bool:
        shape = self._shape()
        if not isinstance(shape, bool):
            raise NotCompilable(f"${self.name} is not a boolean")
        return shape

    def static_id_type(self) -> str:
        shape = self._shape()
        if not (isinstance(shape, tuple) and len(shape) == 2 and shape[0] == "id"):
            raise NotCompilable(f"${self.name} is not an ID")
        return str(shape[1])


@dataclass(frozen=True)
class InputObject(Value):
    """An input object literal, some of whose fields may be variables."""

    fields: Mapping[str, Value]

    def is_null(self) -> bool:
        return False

    def resolve(self, variables: Mapping[str, Any]) -> Any:
        return {name: value.resolve(variables) for name, value in self.fields.items()}

    def field(self, name: str) -> Value:
        return self.fields.get(name, Const(None))

    def static_bool(self) -> bool:
        raise NotCompilable("an input object is not a boolean")

    def static_id_type(self) -> str:
        raise NotCompilable("an input object is not an ID")


def value_of(node: ValueNode, type_: GraphQLInputType, shapes: Mapping[str, Shape]) -> Value:
    """The Value of an argument's AST node."""
    if isinstance(node, VariableNode):
        return Var(node.name.value, (), shapes)
    named = get_named_type(type_)
    if isinstance(node, ObjectValueNode) and isinstance(named, GraphQLInputObjectType):
        fields: dict[str, Value] = {}
        for field_node in node.fields:
            definition = named.fields.get(field_node.name.value)
            if definition is None:
                raise NotCompilable(f"unknown input field {field_node.name.value}")
            fields[field_node.name.value] = value_of(field_node.value, definition.type, shapes)
        return InputObject(fields)
    literal = value_from_ast(node, type_, None)
    if literal is Undefined:
        raise NotCompilable("a literal the schema does not accept")
    return Const(literal)
