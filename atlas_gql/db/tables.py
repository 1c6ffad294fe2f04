"""The Core table behind a SQLModel class, typed (SQL expressions that serve several read
paths, such as the rule modules, are written against tables and their aliases), and new rows
of a table model made cheaply (`new_row`)."""

from __future__ import annotations

from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import instrumentation
from sqlmodel import SQLModel

RowT = TypeVar("RowT", bound=SQLModel)


def table_of(model: type[Any]) -> sa.Table:
    table = model.__table__
    if not isinstance(table, sa.Table):  # pragma: no cover - every table model has one
        raise TypeError(f"{model!r} is not a table model")
    return table


def new_row(model: type[RowT], /, **values: Any) -> RowT:
    """A new (transient) row of a table model, as `model(**values)` makes it (the given values,
    the fields' defaults for the rest, nothing validated: a table model validates nothing
    either), without SQLModel's `__init__`, which sets each attribute through pydantic and
    SQLAlchemy's instrumentation (~0.3 ms for a message, on the hot path of sendMessage): the
    values go into the instance's dict as SQLAlchemy puts a loaded row's. For rows the code
    builds itself; an unknown name is a TypeError."""
    fields = model.model_fields
    unknown = values.keys() - fields.keys()
    if unknown:
        raise TypeError(f"{model.__name__} has no field {', '.join(sorted(unknown))}")
    row: RowT = instrumentation.manager_of_class(model).new_instance()
    data = row.__dict__
    for name, field in fields.items():
        if name in values:
            data[name] = values[name]
        elif not field.is_required():
            data[name] = field.get_default(call_default_factory=True)
    object.__setattr__(row, "__pydantic_fields_set__", set(values))
    return row
