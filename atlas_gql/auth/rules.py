"""Who is asking, as SQL: the viewer reference every visibility rule is written against, and
the session check that produces it.

A rule is a function of a `ViewerRef` (and of the rows it judges) that returns a SQL boolean.
The same function serves both read paths:
- the resolver path calls it with `viewer_literals(viewer)`, built from the `Viewer` the
  request authenticated: the flags are the constants `true`/`false`, which SQLAlchemy folds
  away (`or_(true(), ...)` is `true`), so an ADMIN's list query has no membership join;
- the compiled path (graph/compiled) calls it with `viewer_from(check)`, whose fields are
  expressions over the statement's `viewer` CTE (the session check folded into the same
  statement), so one prepared statement serves every viewer.
See docs/architecture.md, "Compiled reads"."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from atlas_gql.auth.models import (
    ApiKey,
    Permission,
    PermissionName,
    Role,
    RoleName,
    RolePermission,
    Session,
    User,
    UserRole,
)
from atlas_gql.auth.viewer import Viewer
from atlas_gql.db.tables import table_of

SqlBool = sa.ColumnElement[bool]


@dataclass(frozen=True)
class ViewerRef:
    """The viewer as SQL expressions. `user_id` is NULL for an anonymous viewer, and then
    every flag is false."""

    user_id: sa.ColumnElement[Any]
    is_admin: SqlBool
    permissions: Mapping[PermissionName, SqlBool]

    def has_permission(self, permission: PermissionName) -> SqlBool:
        return self.permissions[permission]


def _flag(value: bool) -> SqlBool:
    return sa.true() if value else sa.false()


def viewer_literals(viewer: Viewer | None) -> ViewerRef:
    """The resolver path's viewer as constants (None: anonymous)."""
    if viewer is None:
        return ViewerRef(
            # A typed NULL, so `column == user_id` stays `=` (never `IS NULL`).
            user_id=sa.cast(sa.null(), sa.Uuid),
            is_admin=sa.false(),
            permissions={permission: sa.false() for permission in PermissionName},
        )
    return ViewerRef(
        user_id=sa.literal(viewer.user_id, sa.Uuid),
        is_admin=_flag(viewer.is_admin),
        permissions={
            permission: _flag(viewer.has_permission(permission)) for permission in PermissionName
        },
    )


def _active_user_with_grants(*extra: sa.ColumnElement[Any]) -> sa.Select[Any]:
    """(id, email, role_names, permission_names, *extra) of active users: what both credential
    checks answer, before they join their credential's table."""
    users, links = table_of(User), table_of(UserRole)
    role_names = (
        sa.select(
            sa.func.coalesce(sa.func.array_agg(sa.distinct(table_of(Role).c.name)), sa.text("'{}'"))
        )
        .select_from(links)
        .join(table_of(Role), table_of(Role).c.id == links.c.role_id)
        .where(links.c.user_id == users.c.id)
        .scalar_subquery()
    )
    permission_names = (
        sa.select(
            sa.func.coalesce(
                sa.func.array_agg(sa.distinct(table_of(Permission).c.name)), sa.text("'{}'")
            )
        )
        .select_from(links)
        .join(table_of(RolePermission), table_of(RolePermission).c.role_id == links.c.role_id)
        .join(
            table_of(Permission),
            table_of(Permission).c.id == table_of(RolePermission).c.permission_id,
        )
        .where(links.c.user_id == users.c.id)
        .scalar_subquery()
    )
    return sa.select(
        users.c.id,
        users.c.email,
        role_names.label("role_names"),
        permission_names.label("permission_names"),
        *extra,
    ).where(users.c.is_active.is_(True))


def live_session(
    *, user_id: sa.ColumnElement[uuid.UUID], session_id: sa.ColumnElement[uuid.UUID]
) -> sa.Select[Any]:
    """The session check: one row (id, email, role_names, permission_names) when the session
    is live (not revoked, not expired) and its user active, no row otherwise."""
    users, sessions = table_of(User), table_of(Session)
    return (
        _active_user_with_grants()
        .join(sessions, sessions.c.user_id == users.c.id)
        .where(
            users.c.id == user_id,
            sessions.c.id == session_id,
            sessions.c.revoked_at.is_(None),
            sessions.c.expires_at > sa.func.now(),
        )
    )


def live_api_key(key: SqlBool) -> sa.Select[Any]:
    """The API key check, the session check's twin: one row (id, email, role_names,
    permission_names, api_key_id, scopes) for the key matching `key` (a condition on
    `api_keys`) when it is not revoked, not expired and its user active."""
    users, keys = table_of(User), table_of(ApiKey)
    return (
        _active_user_with_grants(keys.c.id.label("api_key_id"), keys.c.scopes)
        .join(keys, keys.c.user_id == users.c.id)
        .where(
            key,
            keys.c.revoked_at.is_(None),
            sa.or_(keys.c.expires_at.is_(None), keys.c.expires_at > sa.func.now()),
        )
    )


def viewer_from(check: sa.CTE) -> ViewerRef:
    """The viewer of a statement whose `check` CTE is `live_session(...)`: each field reads the
    CTE once (PostgreSQL runs these uncorrelated subqueries once per statement)."""

    def holds(name: str, column: str) -> SqlBool:
        # `name` is one of our enum values (an identifier), written as a literal.
        held = sa.literal_column(f"'{name}'", sa.String) == sa.any_(check.c[column])
        return sa.exists(sa.select(sa.literal_column("1")).select_from(check).where(held))

    return ViewerRef(
        user_id=sa.select(check.c.id).scalar_subquery(),
        is_admin=holds(RoleName.ADMIN.value, "role_names"),
        permissions={
            permission: holds(permission.value, "permission_names") for permission in PermissionName
        },
    )


def user_visible(viewer: ViewerRef, users: sa.FromClause) -> SqlBool:
    """A user is visible (as a node) to themselves and to holders of MANAGE_USERS."""
    return sa.or_(users.c.id == viewer.user_id, viewer.has_permission(PermissionName.MANAGE_USERS))


# -- field-level rules (issue 10 part 12) ------------------------------------------------------
# A user reached through a relation (a project's members, a thread's creator, an activity row)
# shows co-members their name and email; their global roles and permissions are for
# themselves and holders of MANAGE_USERS. Hidden, `roles` and `permissions` answer `[]`.


def user_grants_visible(viewer: ViewerRef, users: sa.FromClause) -> SqlBool:
    """Whether the viewer sees this user's global roles and permissions (SQL: the compiled
    read path's CASE WHEN)."""
    return sa.or_(users.c.id == viewer.user_id, viewer.has_permission(PermissionName.MANAGE_USERS))


def user_grants_visible_to(viewer: Viewer | None, user_id: uuid.UUID) -> bool:
    """`user_grants_visible` for the resolver path, which holds the viewer and the row in
    Python (tests/graph/compiled/test_rules.py checks the two agree for every viewer)."""
    if viewer is None:
        return False
    return viewer.user_id == user_id or viewer.has_permission(PermissionName.MANAGE_USERS)
