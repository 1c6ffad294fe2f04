"""GraphQL enums over the domains' own enums, with a description for every value.

The domains define their enums (`enum.StrEnum`, stored in the database) without Strawberry;
the graph layer exposes them under a GraphQL name and documents each value here."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import TypeVar

import strawberry

EnumT = TypeVar("EnumT", bound=type[enum.Enum])


def described_enum(cls: EnumT, *, name: str, description: str, values: Mapping[str, str]) -> EnumT:
    """`strawberry.enum(cls)` with a description on each value. `values` must name every
    member, no more, so a value added to the domain's enum fails at import until described."""
    members = {member.name for member in cls}
    if set(values) != members:
        raise ValueError(f"{name}: describe exactly {sorted(members)}; got {sorted(values)}")
    wrapped = strawberry.enum(cls, name=name, description=description)
    for value in wrapped.__strawberry_definition__.values:  # type: ignore[attr-defined]
        value.description = values[value.name]
    return wrapped
