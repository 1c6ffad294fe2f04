"""Service input objects: one per command (`ProjectCreate`, `AssistantUpdate`, ...), validated
when built, so a service receives clean values.

`PartialUpdate` is the one partial-update idiom: it carries only the fields a caller set
(pydantic's `model_fields_set`), and `apply(row)` writes exactly those. Omitted = unchanged;
null = clear, where the column is nullable; null for a field listed in `not_null` is
BAD_USER_INPUT naming the field. Field validators raise the project's `BadInput` (pydantic
lets it through), so a refused value names its field the same way on every path."""

from __future__ import annotations

from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, model_validator
from sqlmodel import SQLModel

from atlas_gql.errors import BadInput


def check_length(value: str | None, *, field: str, limit: int) -> str | None:
    """`value`, unless it is longer than `limit` characters: BAD_USER_INPUT naming `field`."""
    if value is not None and len(value) > limit:
        raise BadInput(f"`{field}` must be at most {limit} characters.", field=field)
    return value


def unstorable_character(text: str) -> str | None:
    """What in `text` PostgreSQL cannot store as text (a NUL byte, a lone UTF-16 surrogate,
    which JSON can carry), said for a client; None when there is none."""
    if "\x00" in text:
        return "a NUL character (U+0000)"
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return f"a lone surrogate (U+{ord(text[error.start]):04X})"
    return None


def camel_case(name: str) -> str:
    """`is_active` -> `isActive`: how a field is named to clients."""
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


class Command(BaseModel):
    """The input of one service command: immutable, no unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)


class PartialUpdate(Command):
    """Changes to a row: only the fields that were set."""

    # Fields that may be left out but never cleared.
    not_null: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="after")
    def _refuse_null(self) -> Self:
        for name in sorted(self.not_null & self.model_fields_set):
            if getattr(self, name) is None:
                field = camel_case(name)
                raise BadInput(f"`{field}` cannot be null; leave it out to keep it.", field=field)
        return self

    def changes(self) -> dict[str, Any]:
        """The fields that were set, with their (validated) values."""
        return {name: getattr(self, name) for name in self.model_fields_set}

    def apply(self, row: SQLModel) -> dict[str, Any]:
        """Write the set fields that differ from `row`'s values; those fields and values."""
        changed = {
            name: value for name, value in self.changes().items() if getattr(row, name) != value
        }
        row.sqlmodel_update(changed)
        return changed
