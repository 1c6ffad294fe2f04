"""Relay plumbing: the Node interface, global ids, and generic cursor connections."""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import strawberry

from atlas_gql.errors import BadInput

if TYPE_CHECKING:
    from atlas_gql.graph.context import Context

NodeType = TypeVar("NodeType")

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20


def encode_global_id(type_name: str, object_id: uuid.UUID | str) -> str:
    """`base64("Type:uuid")`, the opaque id clients see."""
    return base64.urlsafe_b64encode(f"{type_name}:{object_id}".encode()).decode().rstrip("=")


def decode_global_id(global_id: str, *, field: str = "id") -> tuple[str, uuid.UUID]:
    """The (type name, uuid) inside a global id; BAD_USER_INPUT when it is not one of ours."""
    try:
        padded = global_id + "=" * (-len(global_id) % 4)
        type_name, _, raw_id = base64.urlsafe_b64decode(padded.encode()).decode().partition(":")
        if not type_name or not type_name.isidentifier():
            raise ValueError(global_id)
        return type_name, uuid.UUID(raw_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadInput(f"`{field}` is not a valid ID.", field=field) from None


def decode_id_of(global_id: str | strawberry.ID, *types: str, field: str = "id") -> uuid.UUID:
    """The uuid inside a global id that must name one of `types`."""
    type_name, object_id = decode_global_id(str(global_id), field=field)
    if types and type_name not in types:
        raise BadInput(f"`{field}` must be the ID of a {' or '.join(types)}.", field=field)
    return object_id


@strawberry.interface(description="An object with a globally unique ID (Relay).")
class Node:
    id: strawberry.ID = strawberry.field(description="The globally unique ID of the object.")


# What `node(id:)` calls to load an object of a given type for the current viewer; it
# returns None when the object does not exist or the viewer may not see it.
NodeResolver = Callable[["Context", uuid.UUID], Awaitable[Any]]
_node_resolvers: dict[str, NodeResolver] = {}


def register_node(type_name: str, resolver: NodeResolver) -> None:
    _node_resolvers[type_name] = resolver


async def resolve_node(context: Context, global_id: str) -> Any:
    type_name, object_id = decode_global_id(global_id)
    resolver = _node_resolvers.get(type_name)
    if resolver is None:
        return None
    return await resolver(context, object_id)


@strawberry.type(description="Where a page of a connection starts and ends.")
class PageInfo:
    has_next_page: bool
    has_previous_page: bool
    start_cursor: str | None
    end_cursor: str | None


@strawberry.type(description="An item of a connection, with the cursor that points at it.")
class Edge(Generic[NodeType]):
    cursor: str
    node: NodeType


@strawberry.type(description="A page of a list, keyset-paginated (Relay cursor connection).")
class Connection(Generic[NodeType]):
    edges: list[Edge[NodeType]]
    page_info: PageInfo
    total_count: int = strawberry.field(description="How many items the whole list holds.")

    @strawberry.field(description="The items of this page, without their cursors.")
    def nodes(self) -> list[NodeType]:
        return [edge.node for edge in self.edges]


@dataclass(frozen=True)
class PageRequest:
    """Validated pagination arguments."""

    first: int | None = None
    after: str | None = None
    last: int | None = None
    before: str | None = None

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
) -> PageRequest:
    """Check the Relay arguments: sizes 0..100, not `first` with `last`."""
    if first is not None and last is not None:
        raise BadInput("Pass `first` or `last`, not both.", field="first")
    for name, size in (("first", first), ("last", last)):
        if size is not None and not 0 <= size <= MAX_PAGE_SIZE:
            raise BadInput(f"`{name}` must be between 0 and {MAX_PAGE_SIZE}.", field=name)
    return PageRequest(first=first, after=after, last=last, before=before)


def build_connection(
    nodes: Sequence[NodeType],
    *,
    cursors: Sequence[str],
    has_next_page: bool,
    has_previous_page: bool,
    total_count: int,
) -> Connection[NodeType]:
    edges = [Edge(cursor=cursor, node=node) for cursor, node in zip(cursors, nodes, strict=True)]
    return Connection(
        edges=edges,
        page_info=PageInfo(
            has_next_page=has_next_page,
            has_previous_page=has_previous_page,
            start_cursor=edges[0].cursor if edges else None,
            end_cursor=edges[-1].cursor if edges else None,
        ),
        total_count=total_count,
    )
