"""What the domains' DataLoaders are made of: a read-session source, rows by id, and pages per
parent. One SQL statement per batch (two for pages), whatever the number of keys.

A loader factory takes kernel types only (a `ReadSessionSource`, and where a loader needs it,
the viewer): the graph layer's Context builds one loader per factory per operation. Factories
are module-level values (`user_by_id = rows_by_id(User)`), as the Context keys its loaders by
factory. `strawberry.dataloader` is a batching utility with no schema in it; it is the one
Strawberry import the kernel allows (see .importlinter)."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeAlias, TypeVar

import sqlalchemy as sa
from sqlalchemy.sql.base import Executable
from sqlmodel import col
from strawberry.dataloader import DataLoader

from atlas_gql.db.pagination import ColumnLike, Ordering, Page, PageRequest, paginate_by_parent
from atlas_gql.db.session import ReadSession

KeyT = TypeVar("KeyT")
ValueT = TypeVar("ValueT")
ViewerT = TypeVar("ViewerT")


class _Identified(Protocol):
    id: uuid.UUID


RowT = TypeVar("RowT", bound=_Identified)

# The operation's session, opened on first use. Loaders call it when a batch runs, not when
# they are built: a subscription closes its session between events, and the next batch then
# gets a fresh one.
ReadSessionSource: TypeAlias = Callable[[], ReadSession]
LoaderFactory: TypeAlias = Callable[[ReadSessionSource], DataLoader[KeyT, ValueT]]
# A loader factory for loads that depend on who asks: the session and the viewer source.
ViewerLoaderFactory: TypeAlias = Callable[
    [ReadSessionSource, Callable[[], Awaitable[ViewerT | None]]], DataLoader[KeyT, ValueT]
]
# (parent id, page request): one page of a parent's children.
PageKey: TypeAlias = tuple[uuid.UUID, PageRequest]


def rows_by_id(model: type[RowT]) -> LoaderFactory[uuid.UUID, RowT | None]:
    """A factory of loaders of `model` rows by id (None for a missing id). No visibility
    check: callers check."""

    def factory(db: ReadSessionSource) -> DataLoader[uuid.UUID, RowT | None]:
        async def load(ids: Sequence[uuid.UUID]) -> list[RowT | None]:
            rows = await db().execute(sa.select(model).where(col(model.id).in_(ids)))
            by_id = {row.id: row for row in rows.scalars()}
            return [by_id.get(row_id) for row_id in ids]

        return DataLoader(load_fn=load)

    factory.__qualname__ = f"rows_by_id({model.__name__})"
    return factory


def viewer_keyed(
    fetch: Callable[[ReadSession, ViewerT, Sequence[KeyT]], Awaitable[Mapping[KeyT, ValueT]]],
    *,
    default: ValueT,
) -> Callable[
    [ReadSessionSource, Callable[[], Awaitable[ViewerT | None]]], DataLoader[KeyT, ValueT]
]:
    """A factory of loaders of what depends on who asks (the viewer's role, rating, what they
    may see): `default` for every key when nobody is signed in, else `fetch(db, viewer,
    keys)`'s value of each key, `default` where it has none."""

    def factory(
        db: ReadSessionSource, viewer: Callable[[], Awaitable[ViewerT | None]]
    ) -> DataLoader[KeyT, ValueT]:
        async def load(keys: Sequence[KeyT]) -> list[ValueT]:
            signed_in = await viewer()
            if signed_in is None:
                return [default for _ in keys]
            found = await fetch(db(), signed_in, keys)
            return [found.get(key, default) for key in keys]

        return DataLoader(load_fn=load)

    factory.__qualname__ = f"viewer_keyed({fetch.__qualname__})"
    return factory


def lists_by_key(
    query: Callable[[Sequence[KeyT]], Executable],
) -> LoaderFactory[KeyT, list[Any]]:
    """A factory of loaders of key -> a list of values, from one statement `query(keys)` that
    selects (key, value) rows in the order the lists keep. A key without rows gets []."""

    def factory(db: ReadSessionSource) -> DataLoader[KeyT, list[Any]]:
        async def load(keys: Sequence[KeyT]) -> list[list[Any]]:
            grouped: dict[Any, list[Any]] = defaultdict(list)
            for key, value in (await db().execute(query(keys))).all():
                grouped[key].append(value)
            return [grouped[key] for key in keys]

        return DataLoader(load_fn=load)

    return factory


def pages_by_parent(
    entity: type[RowT],
    *,
    parent_column: ColumnLike,
    ordering: Ordering,
    where: Callable[[Sequence[uuid.UUID]], Sequence[Any]] | None = None,
) -> LoaderFactory[PageKey, Page[RowT]]:
    """A factory of loaders of (parent id, page request) -> that parent's page of `entity`:
    one `paginate_by_parent` call (two statements) per distinct page request in a batch. A bad
    cursor fails only the keys that carry it. `where(parent ids)` adds conditions on the rows
    (one statement's worth for the batch's parents)."""

    def factory(db: ReadSessionSource) -> DataLoader[PageKey, Page[RowT]]:
        async def load(keys: Sequence[PageKey]) -> list[Page[RowT] | BaseException]:
            by_request: dict[PageRequest, list[uuid.UUID]] = defaultdict(list)
            for parent_id, request in keys:
                by_request[request].append(parent_id)
            results: dict[PageRequest, dict[Any, Page[RowT]] | BaseException] = {}
            for request, parent_ids in by_request.items():
                try:
                    results[request] = await paginate_by_parent(
                        db(),
                        entity,
                        parent_column=parent_column,
                        parent_ids=parent_ids,
                        ordering=ordering,
                        request=request,
                        where=where(parent_ids) if where is not None else (),
                    )
                except Exception as error:  # handed to the waiting resolvers by the DataLoader
                    results[request] = error
            answers: list[Page[RowT] | BaseException] = []
            for parent_id, request in keys:
                result = results[request]
                answers.append(result if isinstance(result, BaseException) else result[parent_id])
            return answers

        # A DataLoader hands an exception in the answers to the waiting key's resolver.
        return DataLoader(load_fn=load)

    factory.__qualname__ = f"pages_by_parent({entity.__name__})"
    return factory
