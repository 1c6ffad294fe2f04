"""What the compiler knows of the schema: for each object type its table and, per field, how
to read it in SQL; for each root field of Query, how to find its rows and who may.

Each entry mirrors a resolver of the graph types (auth/graph.py, projects/graph.py,
ai/types.py, ai/graph.py, logs/graph.py); authorization comes from the domains' rule modules
(auth/rules.py, projects/rules.py, ai/rules.py, logs/rules.py), the same functions the
resolver path is to use. A field missing here is not compiled: the request takes the resolver
path (tests/graph/compiled checks the list against the schema).

Size: over 400 lines on purpose: one entry per type and root field, side by side, so the list
reads against the schema it mirrors."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa
from graphql import FieldNode

from atlas_gql.ai import tree
from atlas_gql.ai.models import Assistant, AssociableType, File, FileAssociation, Message, Thread
from atlas_gql.ai.rules import (
    assistant_instructions_visible,
    assistant_visible,
    file_visible,
    message_visible,
    thread_visible,
)
from atlas_gql.auth.models import Permission, PermissionName, Role, RolePermission, User, UserRole
from atlas_gql.auth.rules import SqlBool, ViewerRef, user_grants_visible, user_visible
from atlas_gql.config import TEXT_LIMITS
from atlas_gql.db.inputs import check_length
from atlas_gql.db.tables import table_of
from atlas_gql.graph.compiled.compiler import (
    Catalogue,
    Compiler,
    Handler,
    ObjectSpec,
    Ordering,
    RootHandler,
    Row,
)
from atlas_gql.graph.compiled.errors import NotCompilable
from atlas_gql.graph.compiled.sql import (
    EMPTY_JSON_ARRAY,
    JSON_NULL,
    ONE,
    global_id,
    iso_datetime,
    json_array,
)
from atlas_gql.graph.compiled.values import UNDECODABLE_ID, Value, plain
from atlas_gql.graph.relay import node_types
from atlas_gql.ids import decode_global_id, decode_id_of
from atlas_gql.logs.models import ActivityLog, ErrorLog
from atlas_gql.logs.rules import (
    LOG_READER_ROLES,
    activity_visible,
    error_logs_visible,
    reads_activity,
)
from atlas_gql.logs.service import time_window
from atlas_gql.projects.models import Project, ProjectMember, ProjectSetting
from atlas_gql.projects.rules import (
    has_project_role,
    member_project_ids,
    project_visible,
    viewer_project_role,
)

Fields = list[FieldNode]

users = table_of(User)
roles = table_of(Role)
user_roles = table_of(UserRole)
role_permissions = table_of(RolePermission)
permissions = table_of(Permission)
projects = table_of(Project)
members = table_of(ProjectMember)
settings = table_of(ProjectSetting)
assistants = table_of(Assistant)
threads = table_of(Thread)
messages = table_of(Message)
files = table_of(File)
associations = table_of(FileAssociation)
activity_logs = table_of(ActivityLog)
error_logs = table_of(ErrorLog)

# Orderings of the resolver path (services and loaders): lists newest first, members and
# users oldest first, a thread's messages oldest first.
NEWEST_FIRST = Ordering("created_at", descending=True)
OLDEST_FIRST = Ordering("created_at", descending=False)


# -- field handlers ---------------------------------------------------------------------------


def column(name: str) -> Handler:
    return lambda compiler, row, fields: row.table.c[name]


def timestamp(name: str) -> Handler:
    return lambda compiler, row, fields: iso_datetime(row.table.c[name])


def node_id(type_name: str, name: str = "id") -> Handler:
    return lambda compiler, row, fields: global_id(type_name, row.table.c[name])


FieldRule = Callable[[ViewerRef, sa.FromClause], SqlBool]


def guarded(handler: Handler, rule: FieldRule, hidden: sa.ColumnElement[Any]) -> Handler:
    """A field with a field-level rule (issue 10 part 12): its value where `rule` holds for the
    viewer and the row, `hidden` (what the resolver path answers then) elsewhere."""

    def guarded_handler(compiler: Compiler, row: Row, fields: Fields) -> sa.ColumnElement[Any]:
        return sa.case(
            (rule(compiler.viewer, row.table), handler(compiler, row, fields)), else_=hidden
        )

    return guarded_handler


def to_one(
    type_name: str,
    table: sa.Table,
    key: str,
    *,
    rule: Callable[[ViewerRef, sa.FromClause], SqlBool] | None = None,
) -> Handler:
    """The object whose id is this row's `key` (null when none, or when `rule` hides it)."""

    def handler(compiler: Compiler, row: Row, fields: Fields) -> sa.ColumnElement[Any]:
        def where(target: sa.FromClause) -> list[Any]:
            conditions: list[Any] = [target.c.id == row.table.c[key]]
            if rule is not None:
                conditions.append(rule(compiler.viewer, target))
            return conditions

        return compiler.one(type_name, table, fields, where, checked=rule is not None)

    return handler


def visible_project(viewer: ViewerRef, project: sa.FromClause) -> SqlBool:
    return project_visible(viewer, project.c.id)


def files_of(kind: AssociableType) -> Handler:
    """Files attached to the row, in attachment order (ai.loaders.files_by_target)."""

    def handler(compiler: Compiler, row: Row, fields: Fields) -> sa.ColumnElement[Any]:
        link, file = associations.alias(), files.alias()
        value = compiler.object_json("File", Row(file), compiler.sub("File", fields))
        return (
            sa.select(json_array(value, link.c.created_at, link.c.id))
            .select_from(link.join(file, file.c.id == link.c.file_id))
            .where(link.c.associable_type == kind, link.c.associable_id == row.table.c.id)
            .correlate_except(link, file)
            .scalar_subquery()
        )

    return handler


def user_roles_list(compiler: Compiler, row: Row, fields: Fields) -> sa.ColumnElement[Any]:
    link, role = user_roles.alias(), roles.alias()
    value = compiler.object_json("Role", Row(role), compiler.sub("Role", fields))
    return (
        sa.select(json_array(value, role.c.name))
        .select_from(link.join(role, role.c.id == link.c.role_id))
        .where(link.c.user_id == row.table.c.id)
        .correlate_except(link, role)
        .scalar_subquery()
    )


def user_permissions_list(compiler: Compiler, row: Row, fields: Fields) -> sa.ColumnElement[Any]:
    link, grant, permission = user_roles.alias(), role_permissions.alias(), permissions.alias()
    held = (
        sa.select(permission.c.name)
        .distinct()
        .select_from(
            link.join(grant, grant.c.role_id == link.c.role_id).join(
                permission, permission.c.id == grant.c.permission_id
            )
        )
        .where(link.c.user_id == row.table.c.id)
        .correlate_except(link, grant, permission)
        .subquery()
    )
    return (
        sa.select(json_array(held.c.name, held.c.name))
        .select_from(held)
        .correlate_except(held)
        .scalar_subquery()
    )


def role_permissions_list(compiler: Compiler, row: Row, fields: Fields) -> sa.ColumnElement[Any]:
    grant, permission = role_permissions.alias(), permissions.alias()
    return (
        sa.select(json_array(permission.c.name, permission.c.name))
        .select_from(grant.join(permission, permission.c.id == grant.c.permission_id))
        .where(grant.c.role_id == row.table.c.id)
        .correlate_except(grant, permission)
        .scalar_subquery()
    )


def project_settings_list(compiler: Compiler, row: Row, fields: Fields) -> sa.ColumnElement[Any]:
    setting = settings.alias()
    value = compiler.object_json(
        "ProjectSetting", Row(setting), compiler.sub("ProjectSetting", fields)
    )
    listed = (
        sa.select(json_array(value, setting.c.setting_key))
        .select_from(setting)
        .where(setting.c.project_id == row.table.c.id)
        .correlate_except(setting)
        .scalar_subquery()
    )
    return compiler.when_project_visible(row, listed, sa.literal_column("'[]'::json"))


def _project_child_page(
    compiler: Compiler, row: Row, fields: Fields, table: sa.Table, ordering: Ordering
) -> sa.ColumnElement[Any]:
    """A project's page of `table` rows (those whose `project_id` is the project's)."""
    arguments = compiler.arguments("Project", fields[0])
    return compiler.connection(
        parent="Project",
        fields=fields,
        table=table,
        where=lambda child: [child.c.project_id == row.table.c.id],
        ordering=ordering,
        window=compiler.page_window(arguments, backward_allowed=False),
        visible=None if row.checked else project_visible(compiler.viewer, row.table.c.id),
    )


def project_members_page(compiler: Compiler, row: Row, fields: Fields) -> sa.ColumnElement[Any]:
    return _project_child_page(compiler, row, fields, members, OLDEST_FIRST)


def project_threads_page(compiler: Compiler, row: Row, fields: Fields) -> sa.ColumnElement[Any]:
    return _project_child_page(compiler, row, fields, threads, NEWEST_FIRST)


def thread_messages_page(compiler: Compiler, row: Row, fields: Fields) -> sa.ColumnElement[Any]:
    arguments = compiler.arguments("Thread", fields[0])
    return compiler.connection(
        parent="Thread",
        fields=fields,
        table=messages,
        # The active path, root to leaf (ai.tree, as ai.loaders.messages_page reads it).
        where=lambda message: [
            message.c.thread_id == row.table.c.id,
            tree.on_path_to(row.table.c.active_leaf_id)(message),
        ],
        ordering=OLDEST_FIRST,
        window=compiler.page_window(arguments, backward_allowed=True),
    )


def message_siblings(compiler: Compiler, row: Row, fields: Fields) -> sa.ColumnElement[Any]:
    """The message's siblings, oldest first (ai.loaders.siblings_by_message)."""
    sibling = messages.alias()
    value = compiler.object_json("Message", Row(sibling), compiler.sub("Message", fields))
    return (
        sa.select(json_array(value, sibling.c.created_at, sibling.c.id))
        .select_from(sibling)
        .where(tree.is_sibling(row.table, sibling))
        .correlate_except(sibling)
        .scalar_subquery()
    )


def message_sibling_index(compiler: Compiler, row: Row, fields: Fields) -> sa.ColumnElement[Any]:
    """How many siblings come before the message in (created_at, id) order."""
    sibling = messages.alias()
    before = sa.tuple_(sibling.c.created_at, sibling.c.id) < sa.tuple_(
        row.table.c.created_at, row.table.c.id
    )
    return (
        sa.select(sa.func.count())
        .select_from(sibling)
        .where(tree.is_sibling(row.table, sibling), before)
        .correlate_except(sibling)
        .scalar_subquery()
    )


def viewer_role(compiler: Compiler, row: Row, fields: Fields) -> sa.ColumnElement[Any]:
    return viewer_project_role(compiler.viewer, row.table.c.id)  # type: ignore[no-any-return]


# -- object types -------------------------------------------------------------------------------

OBJECTS: dict[str, ObjectSpec] = {
    "User": ObjectSpec(
        users,
        {
            "id": node_id("User"),
            "email": column("email"),
            "name": column("name"),
            "isActive": column("is_active"),
            "createdAt": timestamp("created_at"),
            "updatedAt": timestamp("updated_at"),
            "roles": guarded(user_roles_list, user_grants_visible, EMPTY_JSON_ARRAY),
            "permissions": guarded(user_permissions_list, user_grants_visible, EMPTY_JSON_ARRAY),
        },
    ),
    "Role": ObjectSpec(
        roles,
        {
            "name": column("name"),
            "description": column("description"),
            "permissions": role_permissions_list,
        },
    ),
    "Project": ObjectSpec(
        projects,
        {
            "id": node_id("Project"),
            "name": column("name"),
            "description": column("description"),
            "createdAt": timestamp("created_at"),
            "updatedAt": timestamp("updated_at"),
            "createdBy": to_one("User", users, "created_by_id"),
            "members": project_members_page,
            "settings": project_settings_list,
            "threads": project_threads_page,
            "viewerRole": viewer_role,
        },
    ),
    "ProjectMember": ObjectSpec(
        members,
        {
            "id": node_id("ProjectMember"),
            "role": column("role"),
            "createdAt": timestamp("created_at"),
            "user": to_one("User", users, "user_id"),
            # The resolver path loads the project without a check (the membership's
            # visibility implies it); its relations check again (Row.checked is False).
            "project": to_one("Project", projects, "project_id"),
        },
    ),
    "ProjectSetting": ObjectSpec(
        settings,
        {
            "key": column("setting_key"),
            "value": column("value"),
            "updatedAt": timestamp("updated_at"),
        },
    ),
    "Assistant": ObjectSpec(
        assistants,
        {
            "id": node_id("Assistant"),
            "name": column("name"),
            "description": column("description"),
            "model": column("model"),
            "instructions": guarded(
                column("instructions"), assistant_instructions_visible, sa.null()
            ),
            "temperature": column("temperature"),
            "createdAt": timestamp("created_at"),
            "updatedAt": timestamp("updated_at"),
            "project": to_one("Project", projects, "project_id", rule=visible_project),
            "files": files_of(AssociableType.ASSISTANT),
        },
    ),
    "Thread": ObjectSpec(
        threads,
        {
            "id": node_id("Thread"),
            "title": column("title"),
            "openaiThreadId": column("openai_thread_id"),
            "pinned": column("pinned"),
            "archivedAt": timestamp("archived_at"),
            "createdAt": timestamp("created_at"),
            "updatedAt": timestamp("updated_at"),
            "project": to_one("Project", projects, "project_id", rule=visible_project),
            # As ai/types.py: the thread's assistant is loaded by id, without a rule.
            "assistant": to_one("Assistant", assistants, "assistant_id"),
            "createdBy": to_one("User", users, "created_by_id"),
            "messages": thread_messages_page,
            # Same thread, so visible (as ai/types.py: loaded by id, without a rule).
            "activeLeaf": to_one("Message", messages, "active_leaf_id"),
            "files": files_of(AssociableType.THREAD),
        },
    ),
    "Message": ObjectSpec(
        messages,
        {
            "id": node_id("Message"),
            "role": column("role"),
            "content": column("content"),
            "status": column("status"),
            "openaiMessageId": column("openai_message_id"),
            "inputTokens": column("input_tokens"),
            "outputTokens": column("output_tokens"),
            "error": column("error"),
            "createdAt": timestamp("created_at"),
            "completedAt": timestamp("completed_at"),
            "files": files_of(AssociableType.MESSAGE),
            "parent": to_one("Message", messages, "parent_id"),
            "siblings": message_siblings,
            "siblingIndex": message_sibling_index,
        },
    ),
    "File": ObjectSpec(
        files,
        {
            "id": node_id("File"),
            "filename": column("filename"),
            "bytes": column("bytes"),
            "mimeType": column("mime_type"),
            "purpose": column("purpose"),
            "openaiFileId": column("openai_file_id"),
            "createdAt": timestamp("created_at"),
            "indexStatus": column("index_status"),
            "indexError": column("index_error"),
        },
    ),
    "ActivityLog": ObjectSpec(
        activity_logs,
        {
            "id": node_id("ActivityLog"),
            "action": column("action"),
            "entityType": column("entity_type"),
            "entityId": column("entity_id"),
            "projectId": node_id("Project", "project_id"),
            "ipAddress": column("ip_address"),
            "userAgent": column("user_agent"),
            "details": column("details"),
            "createdAt": timestamp("created_at"),
            "user": to_one("User", users, "user_id"),
        },
    ),
    "ErrorLog": ObjectSpec(
        error_logs,
        {
            "id": node_id("ErrorLog"),
            "requestId": column("request_id"),
            "source": column("source"),
            "errorType": column("error_type"),
            "message": column("message"),
            "stack": column("stack"),
            "operationName": column("operation_name"),
            "path": column("path"),
            "upstreamStatus": column("upstream_status"),
            "upstreamRequestId": column("upstream_request_id"),
            "details": column("details"),
            "createdAt": timestamp("created_at"),
            "count": column("count"),
            "lastSeenAt": timestamp("last_seen_at"),
            "user": to_one("User", users, "user_id"),
        },
    ),
}

# node(id:): the table and the rule of each type it resolves (graph.relay.register_node).
NODE_RULES: dict[str, Callable[[ViewerRef, sa.FromClause], SqlBool]] = {
    "User": user_visible,
    "Project": visible_project,
    "ProjectMember": lambda viewer, member: project_visible(viewer, member.c.project_id),
    "Assistant": assistant_visible,
    "Thread": thread_visible,
    "Message": message_visible,
    "File": file_visible,
    "ActivityLog": activity_visible,
    "ErrorLog": lambda viewer, row: error_logs_visible(viewer),
}


# -- root fields --------------------------------------------------------------------------------


def _id_of(value: Value, type_name: str, field: str) -> Callable[[Any], Any]:
    return lambda raw: decode_id_of(str(raw), type_name, field=field)


def root_node(compiler: Compiler, fields: Fields) -> sa.ColumnElement[Any]:
    arguments = compiler.arguments("Query", fields[0])
    identifier = arguments["id"]
    type_name = identifier.static_id_type()
    rule = NODE_RULES.get(type_name)
    if type_name == UNDECODABLE_ID:
        raise NotCompilable("node(id:) with an invalid id (BAD_USER_INPUT)")
    if rule is None:
        if type_name in node_types():
            # A node type the compiler does not build (e.g. Feedback, ApiKey): the resolver path's.
            raise NotCompilable(f"node(id:) of a {type_name}")
        return JSON_NULL  # a well-formed id of a type without nodes: null, as resolve_node
    object_id = compiler.value_param(identifier, sa.Uuid, lambda raw: decode_global_id(str(raw))[1])
    return _visible_one(compiler, fields, type_name, object_id)


def _visible_one(
    compiler: Compiler, fields: Fields, type_name: str, object_id: sa.BindParameter[Any]
) -> sa.ColumnElement[Any]:
    """The object of `type_name` with `object_id` when the viewer may see it (its `NODE_RULES`
    visibility), else null: `node(id:)` and the by-id roots."""
    visible = NODE_RULES[type_name]
    return compiler.one(
        type_name,
        OBJECTS[type_name].table,
        fields,
        lambda row: [row.c.id == object_id, visible(compiler.viewer, row)],
        checked=type_name == "Project",
    )


def root_me(compiler: Compiler, fields: Fields) -> sa.ColumnElement[Any]:
    return compiler.one("User", users, fields, lambda user: [user.c.id == compiler.viewer.user_id])


def root_roles(compiler: Compiler, fields: Fields) -> sa.ColumnElement[Any]:
    compiler.requires_viewer = True
    role = roles.alias()
    value = compiler.object_json("Role", Row(role), compiler.sub("Role", fields))
    return sa.select(json_array(value, role.c.name)).select_from(role).scalar_subquery()


def _root_by_id(type_name: str) -> RootHandler:
    """`project(id:)`, `thread(id:)`: one object by its `id` argument, null when it is missing
    or hidden (its `NODE_RULES` visibility), as on the resolver path; a malformed ID or one of
    another type is BAD_USER_INPUT."""

    def handler(compiler: Compiler, fields: Fields) -> sa.ColumnElement[Any]:
        compiler.requires_viewer = True
        identifier = compiler.arguments("Query", fields[0])["id"]
        object_id = compiler.value_param(identifier, sa.Uuid, _id_of(identifier, type_name, "id"))
        return _visible_one(compiler, fields, type_name, object_id)

    return handler


def _optional_id_param(
    compiler: Compiler, value: Value, type_name: str, field: str
) -> sa.BindParameter[Any] | None:
    if value.is_null():
        return None
    return compiler.value_param(value, sa.Uuid, _id_of(value, type_name, field))


def root_projects(compiler: Compiler, fields: Fields) -> sa.ColumnElement[Any]:
    compiler.requires_viewer = True
    arguments = compiler.arguments("Query", fields[0])
    window = compiler.page_window(arguments, backward_allowed=False)
    given = arguments["filter"]
    role, search = given.field("role"), given.field("search")
    role_param = None if role.is_null() else compiler.value_param(role, sa.String, plain)
    # icontains(search.strip(), autoescape=True) of projects.projects.list_projects.
    search_param = (
        None
        if search.is_null()
        else compiler.value_param(
            search,
            sa.String,
            lambda text: (
                str(check_length(str(text), field="search", limit=TEXT_LIMITS.search))
                .strip()
                .replace("/", "//")
                .replace("%", "/%")
                .replace("_", "/_")
            ),
        )
    )

    def where(project: sa.FromClause) -> list[Any]:
        conditions: list[Any] = []
        if role_param is None:
            conditions.append(visible_project(compiler.viewer, project))
        else:
            conditions.append(
                project.c.id.in_(member_project_ids(compiler.viewer, roles=[role_param]))
            )
        if search_param is not None:
            conditions.append(project.c.name.icontains(search_param, escape="/"))
        return conditions

    return compiler.connection(
        parent="Query",
        fields=fields,
        table=projects,
        where=where,
        ordering=NEWEST_FIRST,
        window=window,
        checked_nodes=True,
    )


ListFilter = Callable[[Value], Callable[[sa.FromClause], list[Any]]]


def _visible_list(
    compiler: Compiler,
    fields: Fields,
    table: sa.Table,
    rule: Callable[[ViewerRef, sa.FromClause], SqlBool],
    more: ListFilter | None = None,
) -> sa.ColumnElement[Any]:
    """`assistants` and `threads`: the visible rows, optionally of one project (`more`: the
    list's other filter conditions)."""
    compiler.requires_viewer = True
    arguments = compiler.arguments("Query", fields[0])
    window = compiler.page_window(arguments, backward_allowed=False)
    given = arguments["filter"]
    project_id = _optional_id_param(compiler, given.field("projectId"), "Project", "projectId")
    conditions_of = more(given) if more is not None else None

    def where(row: sa.FromClause) -> list[Any]:
        conditions: list[Any] = [rule(compiler.viewer, row)]
        if project_id is not None:
            conditions.append(row.c.project_id == project_id)
        if conditions_of is not None:
            conditions += conditions_of(row)
        return conditions

    return compiler.connection(
        parent="Query", fields=fields, table=table, where=where, ordering=NEWEST_FIRST,
        window=window,
    )  # fmt: skip


def root_assistants(compiler: Compiler, fields: Fields) -> sa.ColumnElement[Any]:
    return _visible_list(compiler, fields, assistants, assistant_visible)


def _thread_filter(given: Value) -> Callable[[sa.FromClause], list[Any]]:
    """ai.threads.list_threads: archived threads hidden unless `archived` is true (then only
    they), `pinned` when given. Booleans are part of a plan's shape: constants here."""
    archived_value, pinned_value = given.field("archived"), given.field("pinned")
    archived = not archived_value.is_null() and archived_value.static_bool()
    pinned = None if pinned_value.is_null() else pinned_value.static_bool()

    def conditions(thread: sa.FromClause) -> list[Any]:
        found: list[Any] = [
            thread.c.archived_at.is_not(None) if archived else thread.c.archived_at.is_(None)
        ]
        if pinned is not None:
            found.append(thread.c.pinned.is_(pinned))
        return found

    return conditions


def root_threads(compiler: Compiler, fields: Fields) -> sa.ColumnElement[Any]:
    return _visible_list(compiler, fields, threads, thread_visible, _thread_filter)


def _bounded(field: str) -> Callable[[Any], Any]:
    """A log filter's text as logs.service checks it (BAD_USER_INPUT past its length)."""
    return lambda raw: check_length(raw, field=field, limit=TEXT_LIMITS.filter_value)


def _users_search_pattern(raw: Any) -> str:
    """auth.admin.list_users: a substring of email or name, `\\`-escaped; blank matches
    everything (the resolver path adds no condition then)."""
    search = str(check_length(str(raw), field="search", limit=TEXT_LIMITS.search))
    escaped = search.strip().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def root_users(compiler: Compiler, fields: Fields) -> sa.ColumnElement[Any]:
    compiler.requires_viewer = True
    compiler.guards.append(compiler.viewer.has_permission(PermissionName.MANAGE_USERS))
    arguments = compiler.arguments("Query", fields[0])
    window = compiler.page_window(arguments, backward_allowed=False)
    given = arguments["filter"]
    search, role, active = given.field("search"), given.field("role"), given.field("isActive")
    pattern = (
        None if search.is_null() else compiler.value_param(search, sa.String, _users_search_pattern)
    )
    role_param = None if role.is_null() else compiler.value_param(role, sa.String, plain)
    is_active = None if active.is_null() else active.static_bool()

    def where(user: sa.FromClause) -> list[Any]:
        conditions: list[Any] = []
        if pattern is not None:
            conditions.append(
                sa.or_(
                    user.c.email.ilike(pattern, escape="\\"),
                    user.c.name.ilike(pattern, escape="\\"),
                )
            )
        if role_param is not None:
            link, granted = user_roles.alias(), roles.alias()
            conditions.append(
                sa.exists(
                    sa.select(ONE)
                    .select_from(link.join(granted, granted.c.id == link.c.role_id))
                    .where(link.c.user_id == user.c.id, granted.c.name == role_param)
                )
            )
        if is_active is not None:
            conditions.append(user.c.is_active.is_(is_active))
        return conditions

    return compiler.connection(
        parent="Query", fields=fields, table=users, where=where, ordering=OLDEST_FIRST,
        window=window,
    )  # fmt: skip


def _time_window(compiler: Compiler, given: Value) -> Callable[[sa.FromClause], list[Any]]:
    """`from`/`to` of a log filter, checked per request as logs.service.time_window does, as
    the conditions on a log row's `created_at`."""
    start, end = given.field("from"), given.field("to")

    def check(variables: Mapping[str, Any]) -> None:
        time_window(start=start.resolve(variables), end=end.resolve(variables))

    compiler.checks.append(check)
    kind = sa.DateTime(timezone=True)
    start_param = None if start.is_null() else compiler.value_param(start, kind)
    end_param = None if end.is_null() else compiler.value_param(end, kind)

    def within(row: sa.FromClause) -> list[Any]:
        conditions: list[Any] = []
        if start_param is not None:
            conditions.append(row.c.created_at >= start_param)
        if end_param is not None:
            conditions.append(row.c.created_at < end_param)
        return conditions

    return within


def root_activity_logs(compiler: Compiler, fields: Fields) -> sa.ColumnElement[Any]:
    compiler.requires_viewer = True
    arguments = compiler.arguments("Query", fields[0])
    window = compiler.page_window(arguments, backward_allowed=False)
    given = arguments["filter"]
    viewer = compiler.viewer
    project_id = _optional_id_param(
        compiler, given.field("projectId"), "Project", "filter.projectId"
    )
    user_id = _optional_id_param(compiler, given.field("userId"), "User", "filter.userId")
    action, entity = given.field("action"), given.field("entityType")
    action_param = (
        None
        if action.is_null()
        else compiler.value_param(action, sa.String, _bounded("filter.action"))
    )
    entity_param = (
        None
        if entity.is_null()
        else compiler.value_param(entity, sa.String, _bounded("filter.entityType"))
    )
    within = _time_window(compiler, given)
    if project_id is not None:
        # require_project_role(MANAGER): ADMIN on an existing project, or an OWNER/MANAGER.
        project = projects.alias()
        compiler.guards.append(
            sa.or_(
                sa.and_(
                    viewer.is_admin,
                    sa.exists(
                        sa.select(ONE).select_from(project).where(project.c.id == project_id)
                    ),
                ),
                has_project_role(viewer, project_id, LOG_READER_ROLES),
            )
        )
    else:
        compiler.guards.append(reads_activity(viewer))

    def where(row: sa.FromClause) -> list[Any]:
        conditions: list[Any] = []
        if project_id is not None:
            conditions.append(row.c.project_id == project_id)
        else:
            conditions.append(activity_visible(viewer, row))
        if user_id is not None:
            conditions.append(row.c.user_id == user_id)
        if action_param is not None:
            conditions.append(row.c.action == action_param)
        if entity_param is not None:
            conditions.append(row.c.entity_type == entity_param)
        return conditions + within(row)

    return compiler.connection(
        parent="Query", fields=fields, table=activity_logs, where=where,
        ordering=NEWEST_FIRST, window=window,
    )  # fmt: skip


def root_error_logs(compiler: Compiler, fields: Fields) -> sa.ColumnElement[Any]:
    compiler.requires_viewer = True
    compiler.guards.append(error_logs_visible(compiler.viewer))
    arguments = compiler.arguments("Query", fields[0])
    window = compiler.page_window(arguments, backward_allowed=False)
    given = arguments["filter"]
    source = given.field("source")
    source_param = None if source.is_null() else compiler.value_param(source, sa.String, plain)
    within = _time_window(compiler, given)

    def where(row: sa.FromClause) -> list[Any]:
        conditions: list[Any] = []
        if source_param is not None:
            conditions.append(row.c.source == source_param)
        return conditions + within(row)

    return compiler.connection(
        parent="Query", fields=fields, table=error_logs, where=where, ordering=NEWEST_FIRST,
        window=window,
    )  # fmt: skip


ROOT_FIELDS: dict[str, RootHandler] = {
    "node": root_node,
    "me": root_me,
    "users": root_users,
    "roles": root_roles,
    "projects": root_projects,
    "project": _root_by_id("Project"),
    "assistants": root_assistants,
    "threads": root_threads,
    "thread": _root_by_id("Thread"),
    "activityLogs": root_activity_logs,
    "errorLogs": root_error_logs,
}

CATALOGUE = Catalogue(objects=OBJECTS, roots=ROOT_FIELDS)

# Fields of compiled types that the compiler leaves to the resolver path, with the reason
# (tests/graph/compiled/test_catalogue.py keeps this list and the schema in step).
NOT_COMPILED: dict[str, str] = {
    "Query.apiUsage": "grouped sums with Python-side key mapping; not needed by typical pages",
    "Query.apiKeys": "a settings page's list (issue 15 part 5); not needed by typical pages",
    "Project.usageThisMonth": "month arithmetic and running replies, computed in Python",
    "Thread.lastEventSequence": "issue 12 (events branch): resolver path until compiled",
    "Message.author": "issue 12 (events branch): resolver path until compiled",
    "Message.assistant": "issue 12 (events branch): resolver path until compiled",
    "ProjectSetting.project": "issue 12 (events branch): resolver path until compiled",
    "User.approvedAt": "shown to the user and MANAGE_USERS only; an administrator's page",
    "User.limits": "settings' defaults and this month's usage, computed in Python",
    "Query.feedback": "issue 15 (feedback): an administrator's page, resolver path",
    "Message.viewerRating": "issue 15 (feedback): resolver path until compiled",
    "Message.ratings": "issue 15 (feedback): resolver path until compiled",
    "Assistant.tools": "issue 16 (tools branch): a JSON list mapped in Python; resolver path",
    "Message.citations": "issue 16 (tools branch): cited files checked per viewer; resolver path",
    "Query.searchMessages": "full-text search: its query check and HTML snippets (issue 15)",
    "Query.exportThread": "issue 15 part 6: a document (JSON text, Markdown) written in Python",
    "Query.exportProject": "issue 15 part 6: a document (JSON text) written in Python",
}
