"""The Core table behind a SQLModel class, typed (SQL expressions that serve several read
paths, such as the rule modules, are written against tables and their aliases), new rows
of a table model made cheaply (`new_row`), and loaded rows made of plain columns
(`LoadedRow`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import instrumentation, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import SQLModel

RowT = TypeVar("RowT", bound=SQLModel)

_DIALECT = asyncpg_dialect()  # type: ignore[no-untyped-call]


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


def _processor(column: sa.Column[Any]) -> Callable[[Any], Any] | None:
    """What SQLAlchemy does to the driver's value of `column` when it loads a row (None:
    nothing). A float column arrives as the driver's float."""
    if isinstance(column.type, sa.Float) and not column.type.asdecimal:
        return None
    processor: Callable[[Any], Any] | None = column.type.dialect_impl(_DIALECT).result_processor(
        _DIALECT, None
    )
    return processor


@dataclass(frozen=True)
class LoadedRow(Generic[RowT]):
    """A table model's mapped columns, to read them as plain columns (`columns`, in a
    statement run on the driver: `db.driver`) and make the row of them (`load`) as the ORM
    loads one: a persistent row of the session, each value as SQLAlchemy processes it."""

    model: type[RowT]
    keys: tuple[str, ...]
    columns: tuple[sa.Column[Any], ...]
    processors: tuple[Callable[[Any], Any] | None, ...]

    @classmethod
    def of(cls, model: type[RowT]) -> LoadedRow[RowT]:
        table = table_of(model)
        mapped = [
            (prop.key, column)
            for prop in sa.inspect(model).column_attrs
            for column in prop.columns[:1]
            if isinstance(column, sa.Column) and column.table is table
        ]
        return cls(
            model=model,
            keys=tuple(key for key, _ in mapped),
            columns=tuple(column for _, column in mapped),
            processors=tuple(_processor(column) for _, column in mapped),
        )

    def load(self, db: AsyncSession, values: Sequence[Any]) -> RowT:
        """The row of `values` (the driver's, in `columns`' order) in `db`, as a statement
        with `populate_existing` loads it: the session's own row refreshed if it holds it
        already, else a new persistent row (no SQLModel `__init__`, as `new_row`)."""
        data = {
            key: value if processor is None or value is None else processor(value)
            for key, processor, value in zip(self.keys, self.processors, values, strict=True)
        }
        mapper = sa.inspect(self.model)
        identity = mapper.identity_key_from_primary_key(
            [data[column.key] for column in mapper.primary_key]
        )
        existing = db.sync_session.identity_map.get(identity)
        if existing is not None:
            for key, value in data.items():
                set_committed_value(existing, key, value)
            row: RowT = existing
            return row
        row = instrumentation.manager_of_class(self.model).new_instance()
        row.__dict__.update(data)
        make_transient_to_detached(row)
        db.add(row)
        return row
