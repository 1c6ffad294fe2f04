"""The auth part of the graph: User, Role, `me`, `roles`."""

from __future__ import annotations

import uuid
from datetime import datetime

import strawberry
from strawberry.types import Info

from atlas_gql.auth import loaders
from atlas_gql.auth.models import Role, User
from atlas_gql.auth.permissions import PermissionNameEnum, RoleNameEnum
from atlas_gql.graph.context import Context
from atlas_gql.graph.relay import Node, encode_global_id, register_node


@strawberry.type(name="Role", description="A global role granting a set of permissions.")
class RoleType:
    name: RoleNameEnum  # type: ignore[valid-type]
    description: str | None
    permissions: list[PermissionNameEnum]  # type: ignore[valid-type]


@strawberry.type(name="User", description="A person with an account.")
class UserType(Node):
    db_id: strawberry.Private[uuid.UUID]
    email: str
    name: str | None
    is_active: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_model(cls, user: User) -> UserType:
        return cls(
            id=strawberry.ID(encode_global_id("User", user.id)),
            db_id=user.id,
            email=user.email,
            name=user.name,
            is_active=user.is_active,
            created_at=user.created_at,
            updated_at=user.updated_at,
        )

    @strawberry.field(description="The user's global roles.")
    async def roles(self, info: Info[Context, None]) -> list[RoleType]:
        roles = await info.context.loader(loaders.roles_by_user).load(self.db_id)
        return [await role_type(info.context, role) for role in roles]

    @strawberry.field(description="The permissions the user holds through their roles.")
    async def permissions(self, info: Info[Context, None]) -> list[PermissionNameEnum]:  # type: ignore[valid-type]
        return await info.context.loader(loaders.permissions_by_user).load(self.db_id)


async def role_type(context: Context, role: Role) -> RoleType:
    permissions = await context.loader(loaders.permissions_by_role).load(role.id)
    return RoleType(name=role.name, description=role.description, permissions=permissions)


async def _resolve_user_node(context: Context, user_id: uuid.UUID) -> UserType | None:
    """A user is visible to themselves and to holders of MANAGE_USERS."""
    viewer = await context.viewer()
    if viewer is None:
        return None
    from atlas_gql.auth.models import PermissionName

    if viewer.user_id != user_id and not viewer.has_permission(PermissionName.MANAGE_USERS):
        return None
    user = await context.loader(loaders.user_by_id).load(user_id)
    return UserType.from_model(user) if user else None


register_node("User", _resolve_user_node)


@strawberry.type
class Query:
    @strawberry.field(description="The signed-in user; null without a token.")
    async def me(self, info: Info[Context, None]) -> UserType | None:
        viewer = await info.context.viewer()
        if viewer is None:
            return None
        user = await info.context.loader(loaders.user_by_id).load(viewer.user_id)
        return UserType.from_model(user) if user else None

    @strawberry.field(description="Every global role and its permissions.")
    async def roles(self, info: Info[Context, None]) -> list[RoleType]:
        roles = await info.context.loader(loaders.all_roles).load(None)
        return [await role_type(info.context, role) for role in roles]
