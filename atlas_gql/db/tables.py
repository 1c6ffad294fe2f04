"""The Core table behind a SQLModel class, typed (SQL expressions that serve several read
paths, such as the rule modules, are written against tables and their aliases)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa


def table_of(model: type[Any]) -> sa.Table:
    table = model.__table__
    if not isinstance(table, sa.Table):  # pragma: no cover - every table model has one
        raise TypeError(f"{model!r} is not a table model")
    return table
