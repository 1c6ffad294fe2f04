"""Keyset pagination over SQLAlchemy selects: one list, or one page per parent in one query.

Kernel: services and DataLoaders page with these; the graph layer turns a `Page` into a Relay
connection (`graph.relay.to_connection`). No Strawberry here."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import InstrumentedAttribute, Mapped, aliased

from atlas_gql.db.inputs import unstorable_character
from atlas_gql.db.session import ReadSession
from atlas_gql.errors import BadInput

T = TypeVar("T")
U = TypeVar("U")

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20
# The cursors of `encode_cursor` are under 120 characters; anything much longer is not one.
MAX_CURSOR_CHARS = 512

# A model attribute (`Message.created_at`, or `sqlmodel.col(...)` of one) or a SQL expression.
ColumnLike = InstrumentedAttribute[Any] | Mapped[Any] | sa.ColumnElement[Any]


@dataclass(frozen=True)
class PageRequest:
    """Validated pagination arguments."""

    first: int | None = None
    after: str | None = None
    last: int | None = None
    before: str | None = None
    # Whether the total is wanted (a connection's totalCount is selected): counting costs a
    # statement, so it runs only when asked for.
    with_total: bool = True

    @property
    def backward(self) -> bool:
        return self.last is not None or (self.before is not None and self.first is None)

    @property
    def limit(self) -> int:
        size = self.last if self.backward else self.first
        return DEFAULT_PAGE_SIZE if size is None else size


def page_request(
    *,
    first: int | None = None,
    after: str | None = None,
    last: int | None = None,
    before: str | None = None,
    with_total: bool = True,
) -> PageRequest:
    """Check the Relay arguments: sizes 0..100, not `first` with `last`. `with_total=False`:
    the page's `total_count` is not computed (left 0)."""
    if first is not None and last is not None:
        raise BadInput("Pass `first` or `last`, not both.", field="first")
    for name, size in (("first", first), ("last", last)):
        if size is not None and not 0 <= size <= MAX_PAGE_SIZE:
            raise BadInput(f"`{name}` must be between 0 and {MAX_PAGE_SIZE}.", field=name)
    return PageRequest(first=first, after=after, last=last, before=before, with_total=with_total)


@dataclass
class Page(Generic[T]):
    """A page of a keyset-paginated list: its items, one cursor per item, and where it sits."""

    items: list[T]
    cursors: list[str]
    has_next_page: bool
    has_previous_page: bool
    total_count: int

    def map(self, convert: Callable[[T], U]) -> Page[U]:
        """The same page with each item converted (e.g. a row into its GraphQL type)."""
        return Page(
            [convert(item) for item in self.items],
            self.cursors,
            self.has_next_page,
            self.has_previous_page,
            self.total_count,
        )


def empty_page() -> Page[Any]:
    return Page([], [], False, False, 0)


@dataclass(frozen=True)
class Ordering:
    """A keyset: a sort column (unique together with the id column) and a direction."""

    sort: ColumnLike
    id: ColumnLike
    descending: bool = False
    kind: str = "datetime"  # how the sort value is written in a cursor: datetime | str | int
    extra: dict[str, Any] = field(default_factory=dict)


def encode_cursor(sort_value: Any, object_id: uuid.UUID) -> str:
    if isinstance(sort_value, datetime):
        sort_value = sort_value.isoformat()
    raw = json.dumps([sort_value, str(object_id)], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def read_cursor(
    cursor: str, *, field: str, parse: Callable[[Any], Any] = lambda value: value
) -> tuple[Any, uuid.UUID]:
    """A cursor's sort value (as `parse` makes it from the decoded JSON; it raises ValueError,
    TypeError or OverflowError on a value it refuses) and id. BAD_USER_INPUT naming `field`
    for anything else (too long, not base64 or JSON, wrong types, text the database could not
    compare)."""
    invalid = BadInput(f"`{field}` is not a valid cursor.", field=field)
    if len(cursor) > MAX_CURSOR_CHARS:
        raise invalid
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        sort_value, raw_id = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        if not isinstance(raw_id, str):
            raise TypeError(raw_id)
        object_id = uuid.UUID(raw_id)
        if isinstance(sort_value, str) and unstorable_character(sort_value) is not None:
            raise ValueError(sort_value)  # (fromisoformat stops reading at a NUL)
        return parse(sort_value), object_id
    except (ValueError, TypeError, OverflowError, RecursionError):
        # (binascii.Error, UnicodeError and JSONDecodeError are ValueErrors)
        raise invalid from None


def decode_cursor(cursor: str, ordering: Ordering, *, field: str) -> tuple[Any, uuid.UUID]:
    def parse(sort_value: Any) -> Any:
        if ordering.kind == "datetime":
            moment = datetime.fromisoformat(sort_value)
            if moment.tzinfo is None:  # every keyset column is a timestamptz
                raise ValueError(sort_value)
            # In UTC, as the driver sends it (OverflowError past year 1 or 9999 there).
            return moment.astimezone(UTC)
        if ordering.kind == "int":
            if isinstance(sort_value, bool) or not isinstance(sort_value, int):
                raise TypeError(sort_value)
            if not -(2**63) <= sort_value < 2**63:
                raise ValueError(sort_value)
            return sort_value
        if not isinstance(sort_value, str):
            raise TypeError(sort_value)
        return sort_value

    return read_cursor(cursor, field=field, parse=parse)


def _keyset_condition(ordering: Ordering, cursor: tuple[Any, uuid.UUID], *, after: bool) -> Any:
    left = sa.tuple_(ordering.sort, ordering.id)
    right = sa.tuple_(sa.literal(cursor[0]), sa.literal(cursor[1]))
    forward = after != ordering.descending
    return left > right if forward else left < right


def _apply_window(statement: sa.Select[Any], ordering: Ordering, request: PageRequest) -> Any:
    """WHERE for after/before and the ORDER BY the page is read in."""
    if request.after:
        statement = statement.where(
            _keyset_condition(
                ordering, decode_cursor(request.after, ordering, field="after"), after=True
            )
        )
    if request.before:
        statement = statement.where(
            _keyset_condition(
                ordering, decode_cursor(request.before, ordering, field="before"), after=False
            )
        )
    read_descending = ordering.descending != request.backward
    if read_descending:
        return statement, (sa.desc(ordering.sort), sa.desc(ordering.id))
    return statement, (sa.asc(ordering.sort), sa.asc(ordering.id))


def _finish(rows: Sequence[Any], cursors: list[str], request: PageRequest, total: int) -> Page[Any]:
    limit = request.limit
    has_more = len(rows) > limit
    items, cursors = list(rows[:limit]), cursors[:limit]
    if request.backward:
        items.reverse()
        cursors.reverse()
        return Page(items, cursors, request.before is not None, has_more, total)
    return Page(items, cursors, has_more, request.after is not None, total)


async def paginate(
    db: ReadSession,
    statement: sa.Select[Any],
    *,
    ordering: Ordering,
    request: PageRequest,
    sort_key: Any = None,
) -> Page[Any]:
    """One page of `statement` (a select of one ORM entity, filtered, unordered) and its total.

    `sort_key(item)` reads the sort value off an item (default: the sort column's attribute)."""
    total = 0
    if request.with_total:
        count = sa.select(sa.func.count()).select_from(statement.order_by(None).subquery())
        total = int((await db.execute(count)).scalar_one())
    windowed, order = _apply_window(statement, ordering, request)
    rows = list((await db.execute(windowed.order_by(*order).limit(request.limit + 1))).scalars())
    key = sort_key or _attribute_reader(ordering)
    cursors = [encode_cursor(key(row), row.id) for row in rows]
    return _finish(rows, cursors, request, total)


def _attribute_reader(ordering: Ordering) -> Any:
    name = getattr(ordering.sort, "key", None) or getattr(ordering.sort, "name", None)
    if not isinstance(name, str):
        raise TypeError("pass sort_key for an ordering on an expression")
    return lambda row: getattr(row, name)


async def paginate_by_parent(
    db: ReadSession,
    entity: Any,
    *,
    parent_column: ColumnLike,
    parent_ids: Sequence[Hashable],
    ordering: Ordering,
    request: PageRequest,
    where: Sequence[Any] = (),
) -> dict[Any, Page[Any]]:
    """One page per parent (e.g. the members of 20 projects) in two statements, whatever the
    number of parents: ROW_NUMBER() OVER (PARTITION BY parent) for the pages, GROUP BY for
    the totals. The DataLoaders of nested connections call this."""
    if not parent_ids:
        return {}
    parent_key = getattr(parent_column, "key", None)
    if not isinstance(parent_key, str):
        raise TypeError("parent_column must be a model attribute")
    base = sa.select(entity).where(parent_column.in_(list(parent_ids)), *where)
    windowed, order = _apply_window(base, ordering, request)
    row_number = sa.func.row_number().over(partition_by=parent_column, order_by=order).label("rn")
    ranked = windowed.add_columns(row_number).subquery()
    alias = aliased(entity, ranked)
    page_rows = (
        await db.execute(
            sa.select(alias)
            .where(ranked.c.rn <= request.limit + 1)
            .order_by(ranked.c[parent_key], ranked.c.rn)
        )
    ).scalars()
    grouped: dict[Any, list[Any]] = {parent_id: [] for parent_id in parent_ids}
    for row in page_rows:
        grouped.setdefault(getattr(row, parent_key), []).append(row)
    totals: dict[Any, int] = {}
    if request.with_total:
        count_rows = await db.execute(
            sa.select(parent_column, sa.func.count())
            .where(parent_column.in_(list(parent_ids)), *where)
            .group_by(parent_column)
        )
        totals = {parent: int(count) for parent, count in count_rows.all()}
    key = _attribute_reader(ordering)
    return {
        parent_id: _finish(
            rows,
            [encode_cursor(key(row), row.id) for row in rows],
            request,
            totals.get(parent_id, 0),
        )
        for parent_id, rows in grouped.items()
    }
