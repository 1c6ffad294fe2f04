"""The compiler: a validated query document, its operation and the shape of its variables
become one SQL statement whose `data` column is the response's `data` object as JSON text.

The walk follows GraphQL's own execution: fields are collected per response key (aliases,
fragments, `@include`/`@skip`), each object is a `json_build_object` of its selected fields,
relations are correlated subqueries, connections a keyset page read with LIMIT n+1 and
aggregated with `json_agg`. The viewer is a CTE (`auth.rules.live_session`) and every
authorization rule comes from the domains' rule modules, evaluated against it. What the
walk does not know raises NotCompilable, and the request takes the resolver path.

Size: over 400 lines on purpose: one walk of a document, kept whole so it reads in the order
GraphQL executes."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from graphql import (
    BooleanValueNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLBoolean,
    GraphQLField,
    GraphQLInterfaceType,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    GraphQLUnionType,
    InlineFragmentNode,
    NamedTypeNode,
    OperationDefinitionNode,
    SelectionNode,
    SelectionSetNode,
    get_named_type,
)
from graphql.pyutils import Undefined

from atlas_gql.auth.rules import SqlBool, ViewerRef, live_session, viewer_from
from atlas_gql.db.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, decode_cursor
from atlas_gql.db.pagination import Ordering as PythonOrdering
from atlas_gql.errors import BadInput
from atlas_gql.graph.compiled.errors import NotCompilable
from atlas_gql.graph.compiled.sql import (
    EMPTY_JSON_ARRAY,
    ONE,
    boolean_constant,
    integer_constant,
    json_array,
    json_object,
    keyset_cursor,
    text_constant,
)
from atlas_gql.graph.compiled.values import Const, Shape, Value, value_of

VIEWER_USER_PARAM = "viewer_user_id"
VIEWER_SESSION_PARAM = "viewer_session_id"

# Reads a request's (coerced) variables; may raise an AtlasError (the resolver path then
# answers with that error).
ParamSource = Callable[[Mapping[str, Any]], Any]
Check = Callable[[Mapping[str, Any]], None]
Fields = list[FieldNode]
Selection = dict[str, Fields]

# Cursors of every compiled ordering carry a created_at (see db.pagination.encode_cursor).
_DATETIME_KEYSET = PythonOrdering(sort=sa.column("created_at"), id=sa.column("id"))


@dataclass(frozen=True)
class Row:
    """Where an object's columns come from. `checked` says its visibility is established
    (a Project read through `projects`, `project` or a visible relation), so relations that
    the resolver path guards with the project rule need not test it again."""

    table: sa.FromClause
    checked: bool = False


@dataclass(frozen=True)
class Ordering:
    """A keyset ordering: a timestamptz column and the id as tie-break."""

    sort: str
    descending: bool


@dataclass(frozen=True)
class PageWindow:
    """A connection's page arguments, as the statement reads them."""

    backward: bool
    size: sa.ColumnElement[int]
    # size + 1: the extra row tells whether more rows follow in the reading direction.
    limit: sa.ColumnElement[int]
    after: tuple[sa.ColumnElement[Any], sa.ColumnElement[Any]] | None
    before: tuple[sa.ColumnElement[Any], sa.ColumnElement[Any]] | None


Handler = Callable[["Compiler", Row, Fields], sa.ColumnElement[Any]]
RootHandler = Callable[["Compiler", Fields], sa.ColumnElement[Any]]


@dataclass(frozen=True)
class ObjectSpec:
    """An object type: its table and, per field, how to read it in SQL."""

    table: sa.Table
    fields: Mapping[str, Handler]


@dataclass(frozen=True)
class Catalogue:
    """What the compiler knows of the schema (graph/compiled/catalogue.py)."""

    objects: Mapping[str, ObjectSpec]
    roots: Mapping[str, RootHandler]


@dataclass
class CompiledStatement:
    """The statement (columns live, allowed, data) and what binding it needs."""

    statement: sa.Select[Any, Any, Any]
    sources: dict[str, ParamSource]
    checks: list[Check]
    requires_viewer: bool


@dataclass
class Compiler:
    """One compilation: walks the operation for one shape of its variables, collecting the
    parameter sources, per-request checks and guards the statement needs."""

    schema: GraphQLSchema
    catalogue: Catalogue
    operation: OperationDefinitionNode
    fragments: Mapping[str, FragmentDefinitionNode]
    shapes: Mapping[str, Shape]
    sources: dict[str, ParamSource] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    # Conditions the statement reports in its `allowed` column: false means the resolver
    # path must answer (with FORBIDDEN, NOT_FOUND, ...).
    guards: list[SqlBool] = field(default_factory=list)
    # The operation needs a signed-in viewer (UNAUTHENTICATED otherwise).
    requires_viewer: bool = False

    def __post_init__(self) -> None:
        check = live_session(
            user_id=sa.bindparam(VIEWER_USER_PARAM, value=None, type_=sa.Uuid, required=False),
            session_id=sa.bindparam(
                VIEWER_SESSION_PARAM, value=None, type_=sa.Uuid, required=False
            ),
        ).cte("viewer")
        self.viewer_check = check
        self.viewer: ViewerRef = viewer_from(check)

    # -- the statement ---------------------------------------------------------------------

    def compile(self) -> CompiledStatement:
        query_type = self.schema.query_type
        assert query_type is not None
        selection = self.collect(query_type.name, [self.operation.selection_set])
        pairs: list[tuple[str, sa.ColumnElement[Any]]] = []
        for key, fields in selection.items():
            name = fields[0].name.value
            if name == "__typename":
                pairs.append((key, text_constant(query_type.name)))
                continue
            root = self.catalogue.roots.get(name)
            if root is None:
                raise NotCompilable(f"Query.{name} is not compiled")
            pairs.append((key, root(self, fields)))
        live = sa.exists(sa.select(ONE).select_from(self.viewer_check))
        allowed = sa.and_(*self.guards) if self.guards else sa.true()
        statement = sa.select(
            live.label("live"),
            allowed.label("allowed"),
            sa.cast(json_object(pairs), sa.Text).label("data"),
        )
        return CompiledStatement(statement, self.sources, self.checks, self.requires_viewer)

    def param(self, source: ParamSource, type_: Any) -> sa.BindParameter[Any]:
        """A bound parameter whose value `source` reads from each request's variables."""
        name = f"p{len(self.sources)}"
        self.sources[name] = source
        return sa.bindparam(name, value=None, type_=type_, required=False)

    def value_param(
        self, value: Value, type_: Any, convert: Callable[[Any], Any] = lambda raw: raw
    ) -> sa.BindParameter[Any]:
        """A parameter for an argument (literal or variable), converted per request."""
        return self.param(lambda variables: convert(value.resolve(variables)), type_)

    # -- selections --------------------------------------------------------------------------

    def collect(self, type_name: str, selection_sets: Iterable[SelectionSetNode]) -> Selection:
        """CollectFields of the spec: response key -> the field nodes merged under it."""
        collected: Selection = {}
        visited: set[str] = set()
        for selection_set in selection_sets:
            self._collect(type_name, selection_set, collected, visited)
        return collected

    def _collect(
        self, type_name: str, selection_set: SelectionSetNode, into: Selection, visited: set[str]
    ) -> None:
        for selection in selection_set.selections:
            if not self._included(selection):
                continue
            if isinstance(selection, FieldNode):
                key = selection.alias.value if selection.alias else selection.name.value
                into.setdefault(key, []).append(selection)
            elif isinstance(selection, InlineFragmentNode):
                if self._applies(selection.type_condition, type_name):
                    self._collect(type_name, selection.selection_set, into, visited)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                if name in visited:
                    continue
                visited.add(name)
                fragment = self.fragments.get(name)
                if fragment is None:
                    raise NotCompilable(f"unknown fragment {name}")
                if self._applies(fragment.type_condition, type_name):
                    self._collect(type_name, fragment.selection_set, into, visited)

    def _included(self, selection: SelectionNode) -> bool:
        for directive in selection.directives or ():
            name = directive.name.value
            if name not in ("skip", "include"):
                raise NotCompilable(f"directive @{name}")
            argument = next(arg for arg in directive.arguments or () if arg.name.value == "if")
            if isinstance(argument.value, BooleanValueNode):
                condition = argument.value.value
            else:
                condition = value_of(
                    argument.value, GraphQLNonNull(GraphQLBoolean), self.shapes
                ).static_bool()
            if condition == (name == "skip"):
                return False
        return True

    def _applies(self, condition: NamedTypeNode | None, type_name: str) -> bool:
        if condition is None or condition.name.value == type_name:
            return True
        abstract = self.schema.get_type(condition.name.value)
        concrete = self.schema.get_type(type_name)
        return (
            isinstance(abstract, GraphQLInterfaceType | GraphQLUnionType)
            and isinstance(concrete, GraphQLObjectType)
            and self.schema.is_sub_type(abstract, concrete)
        )

    def sub(self, type_name: str, fields: Fields) -> Selection:
        """The merged sub-selection of a field's nodes, for an object of `type_name`."""
        return self.collect(
            type_name, [node.selection_set for node in fields if node.selection_set]
        )

    def field_definition(self, parent: str, name: str) -> GraphQLField:
        parent_type = self.schema.get_type(parent)
        if not isinstance(parent_type, GraphQLObjectType | GraphQLInterfaceType):
            raise NotCompilable(f"{parent} is not an object type")
        definition: GraphQLField | None = parent_type.fields.get(name)
        if definition is None:
            raise NotCompilable(f"{parent}.{name} does not exist")
        return definition

    def return_type(self, parent: str, name: str) -> str:
        return get_named_type(self.field_definition(parent, name).type).name

    def arguments(self, parent: str, node: FieldNode) -> dict[str, Value]:
        """Every argument of the field: given (literal or variable) or its default."""
        definition = self.field_definition(parent, node.name.value)
        given = {argument.name.value: argument for argument in node.arguments or ()}
        values: dict[str, Value] = {}
        for name, argument in definition.args.items():
            if name in given:
                values[name] = value_of(given[name].value, argument.type, self.shapes)
            else:
                default = argument.default_value
                values[name] = Const(None if default is Undefined else default)
        return values

    # -- objects -------------------------------------------------------------------------------

    def object_json(self, type_name: str, row: Row, selection: Selection) -> sa.ColumnElement[Any]:
        spec = self.catalogue.objects.get(type_name)
        if spec is None:
            raise NotCompilable(f"type {type_name} is not compiled")
        pairs: list[tuple[str, sa.ColumnElement[Any]]] = []
        for key, fields in selection.items():
            name = fields[0].name.value
            if name == "__typename":
                pairs.append((key, text_constant(type_name)))
                continue
            handler = spec.fields.get(name)
            if handler is None:
                raise NotCompilable(f"{type_name}.{name} is not compiled")
            pairs.append((key, handler(self, row, fields)))
        return json_object(pairs)

    def one(
        self,
        type_name: str,
        table: sa.Table,
        fields: Fields,
        where: Callable[[sa.FromClause], list[Any]],
        *,
        checked: bool = False,
    ) -> sa.ColumnElement[Any]:
        """One object of `table` (JSON null when no row matches `where`)."""
        source = table.alias()
        value = self.object_json(type_name, Row(source, checked), self.sub(type_name, fields))
        return (
            sa.select(value)
            .select_from(source)
            .where(*where(source))
            .correlate_except(source)
            .scalar_subquery()
        )

    def when_project_visible(
        self, row: Row, value: sa.ColumnElement[Any], otherwise: sa.ColumnElement[Any]
    ) -> sa.ColumnElement[Any]:
        """`value`, or `otherwise` for a project the viewer may not see (what the resolver
        path answers on a Project it has not checked)."""
        if row.checked:
            return value
        from atlas_gql.projects.rules import project_visible

        return sa.case((project_visible(self.viewer, row.table.c.id), value), else_=otherwise)

    # -- connections ---------------------------------------------------------------------------

    def page_window(self, arguments: Mapping[str, Value], *, backward_allowed: bool) -> PageWindow:
        """`page_request(...)` of the resolver path, at compile time for what the shape fixes
        (which arguments are null) and per request for the values."""
        first, after = arguments["first"], arguments["after"]
        last = arguments.get("last", Const(None)) if backward_allowed else Const(None)
        before = arguments.get("before", Const(None)) if backward_allowed else Const(None)
        if not first.is_null() and not last.is_null():
            raise NotCompilable("`first` with `last` (BAD_USER_INPUT)")
        backward = not last.is_null() or (not before.is_null() and first.is_null())
        sized, name = (last, "last") if backward else (first, "first")
        if sized.is_null() or isinstance(sized, Const):
            try:
                fixed = (
                    DEFAULT_PAGE_SIZE if sized.is_null() else _page_size(sized.resolve({}), name)
                )
            except BadInput as error:
                raise NotCompilable(f"{error} (BAD_USER_INPUT)") from None
            size: sa.ColumnElement[int] = integer_constant(fixed)
            limit = integer_constant(fixed + 1)
        else:
            size = self.value_param(sized, sa.Integer, lambda value: _page_size(value, name))
            limit = size + ONE
        return PageWindow(
            backward=backward,
            size=size,
            limit=limit,
            after=None if after.is_null() else self._cursor(after, "after"),
            before=None if before.is_null() else self._cursor(before, "before"),
        )

    def _cursor(
        self, value: Value, name: str
    ) -> tuple[sa.ColumnElement[Any], sa.ColumnElement[Any]]:
        def decoded(variables: Mapping[str, Any]) -> tuple[Any, Any]:
            return decode_cursor(value.resolve(variables), _DATETIME_KEYSET, field=name)

        return (
            self.param(lambda variables: decoded(variables)[0], sa.DateTime(timezone=True)),
            self.param(lambda variables: decoded(variables)[1], sa.Uuid),
        )

    def connection(
        self,
        *,
        parent: str,
        fields: Fields,
        table: sa.Table,
        where: Callable[[sa.FromClause], list[Any]],
        ordering: Ordering,
        window: PageWindow,
        checked_nodes: bool = False,
        visible: SqlBool | None = None,
    ) -> sa.ColumnElement[Any]:
        """A Relay connection: one keyset page of `table` rows matching `where`, read with
        LIMIT n+1 (the extra row answers hasNextPage / hasPreviousPage), numbered, and
        aggregated into the selected edges / nodes / pageInfo; totalCount is a count(*) of
        its own, built only when selected. `visible` false gives the empty connection."""
        connection_type = self.return_type(parent, fields[0].name.value)
        selection = self.sub(connection_type, fields)
        source = table.alias()
        sort, identity = source.c[ordering.sort], source.c.id
        keyset: list[Any] = []
        if window.after is not None:
            after = sa.tuple_(*window.after)
            keyset.append(
                sa.tuple_(sort, identity) < after
                if ordering.descending
                else sa.tuple_(sort, identity) > after
            )
        if window.before is not None:
            before = sa.tuple_(*window.before)
            keyset.append(
                sa.tuple_(sort, identity) > before
                if ordering.descending
                else sa.tuple_(sort, identity) < before
            )
        read_descending = ordering.descending != window.backward
        order = (sort.desc(), identity.desc()) if read_descending else (sort.asc(), identity.asc())
        numbered = (
            sa.select(*source.c, sa.func.row_number().over(order_by=order).label("atlas_rn"))
            .where(*where(source), *keyset)
            .order_by(*order)
            .limit(window.limit)
            .correlate_except(source)
            .subquery()
        )
        number = numbered.c.atlas_rn
        in_page = number <= window.size
        display = number.desc() if window.backward else number.asc()
        row = Row(numbered, checked_nodes)
        node_type = self.return_type(connection_type, "nodes")
        edge_type = self.return_type(connection_type, "edges")
        cursor = keyset_cursor(numbered.c[ordering.sort], numbered.c.id)

        pairs: list[tuple[str, sa.ColumnElement[Any]]] = []
        # Whether an aggregate over the page is selected; without one (only totalCount,
        # __typename or constant pageInfo fields) the page is not read at all.
        reads_page = False
        for key, sub_fields in selection.items():
            name = sub_fields[0].name.value
            if name == "__typename":
                value: sa.ColumnElement[Any] = text_constant(connection_type)
            elif name == "edges":
                edge = self._edge(edge_type, node_type, row, sub_fields, cursor)
                value, reads_page = json_array(edge, display, where=in_page), True
            elif name == "nodes":
                node = self.object_json(node_type, row, self.sub(node_type, sub_fields))
                value, reads_page = json_array(node, display, where=in_page), True
            elif name == "pageInfo":
                value, aggregates = self._page_info(sub_fields, window, cursor, in_page, display)
                reads_page = reads_page or aggregates
            elif name == "totalCount":
                counted = table.alias()
                value = (
                    sa.select(sa.func.count())
                    .select_from(counted)
                    .where(*where(counted))
                    .correlate_except(counted)
                    .scalar_subquery()
                )
            else:
                raise NotCompilable(f"{connection_type}.{name} is not compiled")
            pairs.append((key, value))
        page: sa.ColumnElement[Any] = json_object(pairs)
        if reads_page:
            page = (
                sa.select(page).select_from(numbered).correlate_except(numbered).scalar_subquery()
            )
        if visible is None:
            return page
        return sa.case((visible, page), else_=self._empty_connection(connection_type, selection))

    def _edge(
        self,
        edge_type: str,
        node_type: str,
        row: Row,
        fields: Fields,
        cursor: sa.ColumnElement[Any],
    ) -> sa.ColumnElement[Any]:
        pairs: list[tuple[str, sa.ColumnElement[Any]]] = []
        for key, sub_fields in self.sub(edge_type, fields).items():
            name = sub_fields[0].name.value
            if name == "__typename":
                pairs.append((key, text_constant(edge_type)))
            elif name == "cursor":
                pairs.append((key, cursor))
            elif name == "node":
                pairs.append(
                    (key, self.object_json(node_type, row, self.sub(node_type, sub_fields)))
                )
            else:
                raise NotCompilable(f"{edge_type}.{name} is not compiled")
        return json_object(pairs)

    def _page_info(
        self,
        fields: Fields,
        window: PageWindow,
        cursor: sa.ColumnElement[Any],
        in_page: SqlBool,
        display: Any,
    ) -> tuple[sa.ColumnElement[Any], bool]:
        """The selected PageInfo, and whether it aggregates over the page."""
        from sqlalchemy.dialects.postgresql import aggregate_order_by

        # As db.pagination._finish: the extra row means more in the reading direction;
        # the other direction reports whether the client passed a cursor there.
        has_more = sa.func.count() > window.size
        cursors: Any = sa.func.json_agg(aggregate_order_by(cursor, display)).filter(in_page)
        pairs: list[tuple[str, sa.ColumnElement[Any]]] = []
        aggregates = False
        for key, sub_fields in self.sub("PageInfo", fields).items():
            name = sub_fields[0].name.value
            if name == "__typename":
                value: sa.ColumnElement[Any] = text_constant("PageInfo")
            elif name == "hasNextPage" and window.backward:
                value = boolean_constant(window.before is not None)
            elif name == "hasPreviousPage" and not window.backward:
                value = boolean_constant(window.after is not None)
            elif name in ("hasNextPage", "hasPreviousPage"):
                value, aggregates = has_more, True
            elif name == "startCursor":
                value, aggregates = cursors.op("->>")(sa.literal_column("0")), True
            elif name == "endCursor":
                value, aggregates = cursors.op("->>")(sa.literal_column("-1")), True
            else:
                raise NotCompilable(f"PageInfo.{name} is not compiled")
            pairs.append((key, value))
        return json_object(pairs), aggregates

    def _empty_connection(
        self, connection_type: str, selection: Selection
    ) -> sa.ColumnElement[Any]:
        pairs: list[tuple[str, sa.ColumnElement[Any]]] = []
        for key, sub_fields in selection.items():
            name = sub_fields[0].name.value
            if name == "__typename":
                value: sa.ColumnElement[Any] = text_constant(connection_type)
            elif name in ("edges", "nodes"):
                value = EMPTY_JSON_ARRAY
            elif name == "totalCount":
                value = integer_constant(0)
            else:  # pageInfo
                info: list[tuple[str, sa.ColumnElement[Any]]] = []
                for info_key, info_fields in self.sub("PageInfo", sub_fields).items():
                    info_name = info_fields[0].name.value
                    if info_name == "__typename":
                        info.append((info_key, text_constant("PageInfo")))
                    elif info_name in ("hasNextPage", "hasPreviousPage"):
                        info.append((info_key, sa.false()))
                    else:
                        info.append((info_key, sa.null()))
                value = json_object(info)
            pairs.append((key, value))
        return json_object(pairs)


def _page_size(value: Any, name: str) -> int:
    """`page_request`'s range check (BAD_USER_INPUT on the resolver path)."""
    if not isinstance(value, int) or not 0 <= value <= MAX_PAGE_SIZE:
        raise BadInput(f"`{name}` must be between 0 and {MAX_PAGE_SIZE}.", field=name)
    return value


def fragments_of(document_definitions: Iterable[Any]) -> dict[str, FragmentDefinitionNode]:
    return {
        definition.name.value: definition
        for definition in document_definitions
        if isinstance(definition, FragmentDefinitionNode)
    }
