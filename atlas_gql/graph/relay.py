"""Relay plumbing: the Node interface, `node(id:)` resolution, and generic cursor connections
built from the kernel's pages (`db.pagination.Page`)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import strawberry
from graphql import FieldNode, FragmentSpreadNode, InlineFragmentNode, SelectionSetNode

from atlas_gql.db.pagination import Page, PageRequest, page_request
from atlas_gql.errors import AtlasError
from atlas_gql.ids import decode_global_id, encode_global_id

if TYPE_CHECKING:
    from atlas_gql.auth.viewer import Viewer
    from atlas_gql.db.session import ReadSession
    from atlas_gql.graph.context import Context

# The nullability rule (docs/architecture.md, "A field error stays a field error"): a field
# that takes arguments, and every root field, is nullable, so a refused argument or a failed
# mutation nulls that field alone. Its description says so with this sentence.
REFUSED = "Null, with an error, when its arguments are refused (e.g. `first` over 100)."
# What every `delete*` / `remove*` mutation answers (docs/api.md, "Conventions").
DELETED = (
    "Answers the deleted object's ID (evict it from a normalised cache, e.g. Apollo's "
    "`cache.evict`); null, with an error, when refused."
)

NodeType = TypeVar("NodeType")
ItemType = TypeVar("ItemType")
TypeT = TypeVar("TypeT")


@strawberry.interface(description="An object with a globally unique ID (Relay).")
class Node:
    id: strawberry.ID = strawberry.field(description="The globally unique ID of the object.")


def global_id(type_name: str, object_id: uuid.UUID) -> strawberry.ID:
    """The global ID of an object (what a `delete*` mutation answers for what it deleted)."""
    return strawberry.ID(encode_global_id(type_name, object_id))


def from_row(cls: type[TypeT], type_name: str, row: Any, **values: Any) -> TypeT:
    """A Node type built from a table row: its global ID, then as `from_attributes`."""
    values.setdefault("id", strawberry.ID(encode_global_id(type_name, row.id)))
    return from_attributes(cls, row, **values)


def from_attributes(cls: type[TypeT], source: Any, **values: Any) -> TypeT:
    """A Strawberry type built from an object (a row, a service's result): each private
    `<x>_db_id` from the object's `<x>_id` (`db_id` from its `id`), and every other field
    named like an attribute of the object; `values` give the rest (overrides)."""
    for name, attribute in _attributes_of(cls):
        if name not in values:
            value = getattr(source, attribute, _MISSING)
            if value is not _MISSING:
                values[name] = value
    return cls(**values)


_MISSING = object()
# Per Strawberry type: (field, the object's attribute it is read from) of each init field.
# Made once per type (a fixed set: the schema's), not at every object built.
_ATTRIBUTES: dict[type, tuple[tuple[str, str], ...]] = {}


def _attributes_of(cls: type) -> tuple[tuple[str, str], ...]:
    pairs = _ATTRIBUTES.get(cls)
    if pairs is None:
        pairs = _ATTRIBUTES[cls] = tuple(
            (field.name, field.name.removesuffix("db_id") + "id")
            if field.name.endswith("db_id")
            else (field.name, field.name)
            for field in dataclasses.fields(cls)
            if field.init
        )
    return pairs


# What `node(id:)` calls to load an object of a given type for the current viewer; it
# returns None when the object does not exist or the viewer may not see it.
NodeResolver = Callable[["Context", uuid.UUID], Awaitable[Any]]
_node_resolvers: dict[str, NodeResolver] = {}


def register_node(type_name: str, resolver: NodeResolver) -> None:
    _node_resolvers[type_name] = resolver


# A service's getter of one object for a viewer: raises NOT_FOUND (or another project error)
# when the viewer may not see it.
ServiceGetter = Callable[["ReadSession", "Viewer", uuid.UUID], Awaitable[Any]]


def register_service_node(
    type_name: str, get: ServiceGetter, convert: Callable[[Any], Any]
) -> None:
    """`node(id:)` for a type its service's getter reads: null for an anonymous viewer and
    where the getter refuses, else the object `convert`ed to its GraphQL type."""

    async def resolve(context: Context, object_id: uuid.UUID) -> Any:
        viewer = await context.viewer()
        if viewer is None:
            return None
        try:
            return convert(await get(context.read_session(), viewer, object_id))
        except AtlasError:
            return None

    register_node(type_name, resolve)


def node_types() -> frozenset[str]:
    """The type names `node(id:)` resolves on the resolver path."""
    return frozenset(_node_resolvers)


async def resolve_node(context: Context, global_id: str) -> Any:
    type_name, object_id = decode_global_id(global_id)
    return await resolve_node_of(context, type_name, object_id)


async def resolve_node_of(context: Context, type_name: str, object_id: uuid.UUID) -> Any:
    """The object of type `type_name` the viewer may see, or None. Lets one domain's type
    resolve another domain's object without importing its graph module."""
    resolver = _node_resolvers.get(type_name)
    if resolver is None:
        return None
    return await resolver(context, object_id)


@strawberry.type(description="Where a page of a connection starts and ends.")
class PageInfo:
    has_next_page: bool = strawberry.field(
        description="Whether items follow this page (continue with `after: endCursor`)."
    )
    has_previous_page: bool = strawberry.field(
        description="Whether items precede this page (go back with `before: startCursor` where the "
        "connection takes `last`/`before`)."
    )
    start_cursor: str | None = strawberry.field(
        description="The cursor of the page's first item; null when the page is empty."
    )
    end_cursor: str | None = strawberry.field(
        description="The cursor of the page's last item; null when the page is empty."
    )


@strawberry.type(description="An item of a connection, with the cursor that points at it.")
class Edge(Generic[NodeType]):
    cursor: str = strawberry.field(
        description="Opaque; pass it as `after` (or `before`) to continue from this item. Stable "
        "under inserts (keyset)."
    )
    node: NodeType = strawberry.field(description="The item.")


@strawberry.type(description="A page of a list, keyset-paginated (Relay cursor connection).")
class Connection(Generic[NodeType]):
    edges: list[Edge[NodeType]] = strawberry.field(
        description="The items of this page, each with its cursor."
    )
    page_info: PageInfo = strawberry.field(
        description="Where this page starts and ends, and whether more follow."
    )
    total_count: int = strawberry.field(description="How many items the whole list holds.")

    @strawberry.field(description="The items of this page, without their cursors.")
    def nodes(self) -> list[NodeType]:
        return [edge.node for edge in self.edges]


def requested_page(
    info: Any,
    *,
    first: int | None = None,
    after: str | None = None,
    last: int | None = None,
    before: str | None = None,
) -> PageRequest:
    """The page a connection field's arguments ask for, counting the total only when the
    field selects `totalCount`."""
    return page_request(
        first=first, after=after, last=last, before=before, with_total=selects_total(info)
    )


def selects_total(info: Any) -> bool:
    """Whether the connection field being resolved selects `totalCount` (directly, under an
    alias or through fragments), so its resolver counts only when asked (issue 13). A
    `totalCount` behind `@skip`/`@include` counts as selected: counting too often is only
    slower, never wrong."""
    raw = info._raw_info
    pending: list[SelectionSetNode] = [
        node.selection_set for node in raw.field_nodes if node.selection_set is not None
    ]
    spread: set[str] = set()
    while pending:
        for selection in pending.pop().selections:
            if isinstance(selection, FieldNode):
                if selection.name.value == "totalCount":
                    return True
            elif isinstance(selection, InlineFragmentNode):
                pending.append(selection.selection_set)
            elif isinstance(selection, FragmentSpreadNode) and selection.name.value not in spread:
                spread.add(selection.name.value)
                fragment = raw.fragments.get(selection.name.value)
                if fragment is not None:
                    pending.append(fragment.selection_set)
    return False


def to_connection(
    page: Page[ItemType], convert: Callable[[ItemType], NodeType]
) -> Connection[NodeType]:
    """A page as a Relay connection, each item converted (e.g. `ThreadType.from_model`)."""
    edges = [
        Edge(cursor=cursor, node=convert(item))
        for cursor, item in zip(page.cursors, page.items, strict=True)
    ]
    return Connection(
        edges=edges,
        page_info=PageInfo(
            has_next_page=page.has_next_page,
            has_previous_page=page.has_previous_page,
            start_cursor=edges[0].cursor if edges else None,
            end_cursor=edges[-1].cursor if edges else None,
        ),
        total_count=page.total_count,
    )
