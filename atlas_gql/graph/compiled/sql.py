"""SQL building blocks of compiled reads: JSON objects, global ids, DateTime text and keyset
cursors, each written to give exactly the text the resolver path gives."""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa

from atlas_gql.graph.compiled.errors import NotCompilable

# json_build_object takes at most 100 arguments (PostgreSQL's FUNC_MAX_ARGS).
MAX_OBJECT_KEYS = 50
_NAME = re.compile(r"^[_A-Za-z][_0-9A-Za-z]*$")


def text_constant(value: str) -> sa.ColumnElement[str]:
    """A GraphQL name (response key, type name) as a SQL string literal. Names match
    /[_A-Za-z][_0-9A-Za-z]*/ (the parser and the schema guarantee it), so quoting is safe;
    client values are never written this way, they are bound parameters."""
    if not _NAME.match(value):
        raise NotCompilable(f"{value!r} is not a GraphQL name")
    return sa.literal_column(f"'{value}'", sa.Text)


def integer_constant(value: int) -> sa.ColumnElement[int]:
    return sa.literal_column(str(int(value)), sa.Integer)


def boolean_constant(value: bool) -> sa.ColumnElement[bool]:
    return sa.true() if value else sa.false()


ONE: sa.ColumnElement[int] = sa.literal_column("1", sa.Integer)
EMPTY_JSON_ARRAY: sa.ColumnElement[Any] = sa.literal_column("'[]'::json")
JSON_NULL: sa.ColumnElement[Any] = sa.literal_column("NULL::json")


def json_object(pairs: list[tuple[str, sa.ColumnElement[Any]]]) -> sa.ColumnElement[Any]:
    """`json_build_object('key', value, ...)`, keys in selection order."""
    if len(pairs) > MAX_OBJECT_KEYS:
        raise NotCompilable(f"a selection of more than {MAX_OBJECT_KEYS} fields")
    arguments: list[Any] = []
    for key, value in pairs:
        arguments.extend((text_constant(key), value))
    return sa.func.json_build_object(*arguments)


def json_array(
    element: sa.ColumnElement[Any], *order_by: Any, where: Any = None
) -> sa.ColumnElement[Any]:
    """`coalesce(json_agg(element ORDER BY ...) [FILTER (WHERE ...)], '[]')`."""
    from sqlalchemy.dialects.postgresql import aggregate_order_by

    aggregated: Any = sa.func.json_agg(
        aggregate_order_by(element, *order_by) if order_by else element
    )
    if where is not None:
        aggregated = aggregated.filter(where)
    return sa.func.coalesce(aggregated, EMPTY_JSON_ARRAY)


def _base64url(text: sa.ColumnElement[Any]) -> sa.ColumnElement[str]:
    """URL-safe base64 of `text`'s UTF-8 bytes, unpadded (PostgreSQL's base64 also breaks
    lines every 76 characters: the newlines go with the padding)."""
    encoded = sa.func.encode(
        sa.func.convert_to(text, sa.literal_column("'UTF8'")), sa.literal_column("'base64'")
    )
    return sa.func.translate(encoded, sa.literal_column("E'+/=\\n'"), sa.literal_column("'-_'"))


def global_id(type_name: str, object_id: sa.ColumnElement[Any]) -> sa.ColumnElement[str]:
    """`encode_global_id(type_name, id)` in SQL: base64url("Type:uuid"), unpadded; NULL for a
    NULL id."""
    text_constant(type_name)  # checks the name
    prefix = sa.literal_column(f"'{type_name}:'", sa.Text)
    return _base64url(prefix.concat(sa.cast(object_id, sa.Text)))


def iso_datetime(value: sa.ColumnElement[Any]) -> sa.ColumnElement[str]:
    """A timestamptz as Python's `datetime.isoformat()` writes the UTC datetime asyncpg returns
    (what Strawberry's DateTime serialises): `YYYY-MM-DDTHH:MM:SS[.ffffff]+00:00`, the
    fraction only when there are microseconds. NULL stays NULL."""
    utc = sa.func.timezone(sa.literal_column("'UTC'"), value)
    whole = sa.func.to_char(utc, sa.literal_column("'YYYY-MM-DD\"T\"HH24:MI:SS'"))
    fraction = sa.func.to_char(utc, sa.literal_column("'YYYY-MM-DD\"T\"HH24:MI:SS.US'"))
    truncated = sa.func.date_trunc(sa.literal_column("'second'"), utc)
    text = sa.case((truncated == utc, whole), else_=fraction)
    return text.concat(sa.literal_column("'+00:00'"))


def keyset_cursor(
    sort_value: sa.ColumnElement[Any], object_id: sa.ColumnElement[Any]
) -> sa.ColumnElement[str]:
    """`encode_cursor(created_at, id)` in SQL: base64url of the compact JSON
    `["<isoformat>","<uuid>"]`, unpadded."""
    raw = (
        sa.literal_column("'[\"'")
        .concat(iso_datetime(sort_value))
        .concat(sa.literal_column("'\",\"'"))
        .concat(sa.cast(object_id, sa.Text))
        .concat(sa.literal_column("'\"]'"))
    )
    return _base64url(raw)
