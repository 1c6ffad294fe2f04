"""Per-request DataLoaders of the auth domain: one SQL statement per batch."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence

import sqlalchemy as sa
from sqlmodel import col
from strawberry.dataloader import DataLoader

from atlas_gql.auth.models import Permission, PermissionName, Role, RolePermission, User, UserRole
from atlas_gql.db.loaders import ReadSessionSource, rows_by_id

user_by_id = rows_by_id(User)


def roles_by_user(db: ReadSessionSource) -> DataLoader[uuid.UUID, list[Role]]:
    async def load(user_ids: Sequence[uuid.UUID]) -> list[list[Role]]:
        rows = await db().execute(
            sa.select(col(UserRole.user_id), Role)
            .join(Role, col(Role.id) == col(UserRole.role_id))
            .where(col(UserRole.user_id).in_(user_ids))
            .order_by(col(Role.name))
        )
        grouped: dict[uuid.UUID, list[Role]] = defaultdict(list)
        for user_id, role in rows.all():
            grouped[user_id].append(role)
        return [grouped[user_id] for user_id in user_ids]

    return DataLoader(load_fn=load)


def permissions_by_user(db: ReadSessionSource) -> DataLoader[uuid.UUID, list[PermissionName]]:
    async def load(user_ids: Sequence[uuid.UUID]) -> list[list[PermissionName]]:
        rows = await db().execute(
            sa.select(col(UserRole.user_id), col(Permission.name))
            .join(RolePermission, col(RolePermission.role_id) == col(UserRole.role_id))
            .join(Permission, col(Permission.id) == col(RolePermission.permission_id))
            .where(col(UserRole.user_id).in_(user_ids))
            .distinct()
            .order_by(col(UserRole.user_id), col(Permission.name))
        )
        grouped: dict[uuid.UUID, list[PermissionName]] = defaultdict(list)
        for user_id, name in rows.all():
            grouped[user_id].append(PermissionName(name))
        return [grouped[user_id] for user_id in user_ids]

    return DataLoader(load_fn=load)


def permissions_by_role(db: ReadSessionSource) -> DataLoader[uuid.UUID, list[PermissionName]]:
    async def load(role_ids: Sequence[uuid.UUID]) -> list[list[PermissionName]]:
        rows = await db().execute(
            sa.select(col(RolePermission.role_id), col(Permission.name))
            .join(Permission, col(Permission.id) == col(RolePermission.permission_id))
            .where(col(RolePermission.role_id).in_(role_ids))
            .order_by(col(Permission.name))
        )
        grouped: dict[uuid.UUID, list[PermissionName]] = defaultdict(list)
        for role_id, name in rows.all():
            grouped[role_id].append(PermissionName(name))
        return [grouped[role_id] for role_id in role_ids]

    return DataLoader(load_fn=load)


def all_roles(db: ReadSessionSource) -> DataLoader[None, list[Role]]:
    async def load(keys: Sequence[None]) -> list[list[Role]]:
        roles = list((await db().execute(sa.select(Role).order_by(col(Role.name)))).scalars())
        return [roles for _ in keys]

    return DataLoader(load_fn=load)
