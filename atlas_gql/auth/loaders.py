"""Per-request DataLoaders of the auth domain: one SQL statement per batch."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from sqlmodel import col
from strawberry.dataloader import DataLoader

from atlas_gql.auth.models import Permission, PermissionName, Role, RolePermission, User, UserRole
from atlas_gql.db.loaders import LoaderFactory, ReadSessionSource, lists_by_key, rows_by_id

user_by_id = rows_by_id(User)


# A user's global roles, by name.
roles_by_user: LoaderFactory[uuid.UUID, list[Role]] = lists_by_key(
    lambda user_ids: (
        sa.select(col(UserRole.user_id), Role)
        .join(Role, col(Role.id) == col(UserRole.role_id))
        .where(col(UserRole.user_id).in_(user_ids))
        .order_by(col(Role.name))
    )
)
# The permissions a user holds through their roles, each once, by name.
permissions_by_user: LoaderFactory[uuid.UUID, list[PermissionName]] = lists_by_key(
    lambda user_ids: (
        sa.select(col(UserRole.user_id), col(Permission.name))
        .join(RolePermission, col(RolePermission.role_id) == col(UserRole.role_id))
        .join(Permission, col(Permission.id) == col(RolePermission.permission_id))
        .where(col(UserRole.user_id).in_(user_ids))
        .distinct()
        .order_by(col(UserRole.user_id), col(Permission.name))
    )
)
# The permissions a role grants, by name.
permissions_by_role: LoaderFactory[uuid.UUID, list[PermissionName]] = lists_by_key(
    lambda role_ids: (
        sa.select(col(RolePermission.role_id), col(Permission.name))
        .join(Permission, col(Permission.id) == col(RolePermission.permission_id))
        .where(col(RolePermission.role_id).in_(role_ids))
        .order_by(col(Permission.name))
    )
)


def all_roles(db: ReadSessionSource) -> DataLoader[None, list[Role]]:
    async def load(keys: Sequence[None]) -> list[list[Role]]:
        roles = list((await db().execute(sa.select(Role).order_by(col(Role.name)))).scalars())
        return [roles for _ in keys]

    return DataLoader(load_fn=load)
