"""`paged_field`: one declaration for the root list fields `first`/`after`/`filter` →
Connection (assistants, threads, feedback, projects, users, activityLogs, errorLogs).

Each of those fields was the same resolver written again: the three Relay arguments one per
line, `requested_page`, `filter or TheFilter()`, one service call, `to_connection`. Only the
service call differs, so a field now names its node type, its filter input and a `fetch`
(context, filter, page request) → page; the resolver and its signature are built here once.
The arguments' names, order, defaults and descriptions are those of `First`, `After` and
`ListFilter` (or the field's own filter argument), so the schema is what it was; `make
check-schema` compares it. Fields with other arguments (`apiKeys`, `searchMessages`,
`Thread.messages`) keep a written resolver."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import strawberry

from atlas_gql.db.pagination import Page, PageRequest
from atlas_gql.graph.context import Context, Info
from atlas_gql.graph.inputs import After, First, ListFilter
from atlas_gql.graph.relay import REFUSED, Connection, requested_page, to_connection

NodeT = TypeVar("NodeT")
FilterT = TypeVar("FilterT")

# What a paged field's `fetch` does: one page of rows for the viewer of `context`, narrowed by
# the filter the client gave (its input type's defaults when it gave none).
Fetch = Callable[[Context, FilterT, PageRequest], Awaitable[Page[Any]]]


def paged_field(
    node: type[NodeT],
    *,
    filter: type[FilterT],
    fetch: Fetch[FilterT],
    description: str,
    extensions: list[Any],
    convert: Callable[[Any], NodeT] | None = None,
    filter_argument: Any = ListFilter,
) -> Any:
    """A root connection field `(first: Int, after: String, filter: <filter>) -> <node>
    Connection`, its description followed by the nullability rule (`REFUSED`). `convert`
    turns a row into `node` (default `node.from_model`); `filter_argument` is the `Annotated`
    alias describing the filter (default `ListFilter`)."""
    to_node: Callable[[Any], NodeT] = convert or node.from_model  # type: ignore[attr-defined]

    async def resolve(
        info: Info, first: int | None = None, after: str | None = None, filter: Any = None
    ) -> Connection[NodeT] | None:
        given = filter if filter is not None else filter_type()
        page = await fetch(info.context, given, requested_page(info, first=first, after=after))
        return to_connection(page, to_node)

    filter_type = filter
    # Strawberry reads the arguments from the annotations: the concrete types of this field.
    resolve.__annotations__ = {
        "info": Info,
        "first": First,
        "after": After,
        "filter": filter_argument[filter_type],
        "return": Connection[node] | None,  # type: ignore[valid-type]
    }
    return strawberry.field(
        resolver=resolve, description=f"{description} {REFUSED}", extensions=extensions
    )
