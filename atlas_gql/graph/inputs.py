"""From GraphQL arguments to service input objects: the pagination arguments of connection
fields, the fields a client set in an update input, optional global IDs.

Update inputs declare their fields `strawberry.Maybe[T | None]`: a field left out is None, a
field given (null included) is `Some(value)`. `set_fields` keeps only the given ones, which is
what a service's `PartialUpdate` is built from (omitted = unchanged, null = clear)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, TypeVar

import strawberry
from strawberry.types.maybe import Some
from strawberry.utils.str_converters import to_camel_case

from atlas_gql.ids import decode_id_of
from atlas_gql.logs.service import time_window

# The pagination arguments of every connection field.
First = Annotated[
    int | None, strawberry.argument(description="How many items from the start, 0 to 100 (20).")
]
After = Annotated[str | None, strawberry.argument(description="The cursor to continue after.")]
Last = Annotated[
    int | None, strawberry.argument(description="How many items from the end, 0 to 100.")
]
Before = Annotated[str | None, strawberry.argument(description="The cursor to stop before.")]

InputT = TypeVar("InputT")
# The `input` of an `update*` mutation: an input of `strawberry.Maybe` fields (`set_fields`).
Changes = Annotated[
    InputT, strawberry.argument(description="The fields to change (omitted = unchanged).")
]
# The optional `filter` of a list field.
ListFilter = Annotated[
    InputT | None,
    strawberry.argument(description="Narrows the list; all given conditions apply."),
]

# The `id` argument naming one object, per type.
AssistantID = Annotated[
    strawberry.ID, strawberry.argument(description="The assistant's global ID.")
]
FileID = Annotated[strawberry.ID, strawberry.argument(description="The file's global ID.")]
ProjectID = Annotated[strawberry.ID, strawberry.argument(description="The project's global ID.")]
ThreadID = Annotated[strawberry.ID, strawberry.argument(description="The thread's global ID.")]
UserID = Annotated[strawberry.ID, strawberry.argument(description="The user's global ID.")]


def input_fields(input: Any, **converted: Any) -> dict[str, Any]:
    """The fields of a Strawberry input by Python name, `converted` ones (decoded global IDs,
    tuples) in place of what the client sent: what a service's `Command` validates. The
    command forbids unknown fields, so an input and its command cannot drift apart."""
    return {**vars(input), **converted}


def filter_fields(given: Any, **ids: str) -> dict[str, Any]:
    """A list filter's fields for its service filter (a dataclass of the same field names):
    the global-ID fields named in `ids` (field=type name) decoded, BAD_USER_INPUT naming
    `filter.<field>`; `from`/`to` checked into the `window` (`time_window`)."""
    fields: dict[str, Any] = dict(vars(given))
    for name, type_name in ids.items():
        field = f"filter.{to_camel_case(name)}"
        fields[name] = optional_id(fields[name], type_name, field=field)
    fields["window"] = time_window(start=fields.pop("from_"), end=fields.pop("to"))
    return fields


def set_fields(input: Any) -> dict[str, Any]:
    """The fields of a Strawberry input that the client gave, by Python name."""
    return {name: value.value for name, value in vars(input).items() if isinstance(value, Some)}


def optional_id(value: strawberry.ID | None, type_name: str, *, field: str) -> uuid.UUID | None:
    """The database id of an optional global ID argument (BAD_USER_INPUT naming `field`)."""
    return None if value is None else decode_id_of(value, type_name, field=field)
