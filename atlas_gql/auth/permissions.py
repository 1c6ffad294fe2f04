"""Permission checks as schema directives: `@authenticated` and `@hasPermission(permission:)`.

They are the declarative first gate, visible in the SDL; services check again (and check
project roles), since the CLI and tests call services directly."""

from __future__ import annotations

from functools import cache
from typing import Any

import strawberry
from graphql import OperationType
from strawberry.extensions.field_extension import FieldExtension
from strawberry.permission import BasePermission, PermissionExtension
from strawberry.schema_directive import Location
from strawberry.types import Info

from atlas_gql.auth.models import ApiKeyScope, PermissionName, RoleName
from atlas_gql.graph.enums import described_enum

PermissionNameEnum = described_enum(
    PermissionName,
    name="PermissionName",
    description="A permission granted through roles.",
    values={
        "CREATE_PROJECT": "Create projects (ADMIN, PROJECT_MANAGER).",
        "MANAGE_USERS": "List, create, change and deactivate users; grant and withdraw roles "
        "(ADMIN).",
        "USE_AI": "Create assistants and threads, send messages, upload files (every role).",
    },
)
RoleNameEnum = described_enum(
    RoleName,
    name="RoleName",
    description="A global role (project roles are `ProjectRole`).",
    values={
        "ADMIN": "Every permission; sees every project, user and log.",
        "USER": "USE_AI: the default role of a new account.",
        "PROJECT_MANAGER": "CREATE_PROJECT and USE_AI.",
    },
)


@strawberry.schema_directive(
    name="authenticated",
    locations=[Location.FIELD_DEFINITION, Location.OBJECT],
    description="Requires a signed-in viewer (UNAUTHENTICATED otherwise).",
)
class AuthenticatedDirective:
    pass


@strawberry.schema_directive(
    name="hasPermission",
    locations=[Location.FIELD_DEFINITION, Location.OBJECT],
    description="Requires a viewer holding the permission (FORBIDDEN otherwise).",
)
class HasPermissionDirective:
    permission: PermissionName = strawberry.field(
        description="The permission the viewer must hold through a global role."
    )


class IsAuthenticated(BasePermission):
    """Signed in; on a root mutation field, a personal API key must also hold `key_scope`
    (WRITE unless the field says otherwise: docs/api-keys.md). Queries and subscriptions
    need no scope beyond READ, which every key has."""

    message = "Authentication required."
    error_extensions = {"code": "UNAUTHENTICATED"}
    schema_directive = AuthenticatedDirective()

    def __init__(self, key_scope: ApiKeyScope = ApiKeyScope.WRITE) -> None:
        self.key_scope = key_scope

    async def has_permission(self, source: Any, info: Info[Any, Any], **kwargs: Any) -> bool:
        actor = await info.context.actor()
        _ = actor.viewer_required
        if info.path.prev is None and info.operation.operation is OperationType.MUTATION:
            actor.require_scope(self.key_scope)
        return True


class HasPermission(BasePermission):
    """Base of the per-permission classes `requires()` builds (one class per permission, since
    Strawberry reads `schema_directive` off the class)."""

    message = "You are not allowed to do this."
    error_extensions = {"code": "FORBIDDEN"}
    permission: PermissionName

    async def has_permission(self, source: Any, info: Info[Any, Any], **kwargs: Any) -> bool:
        (await info.context.actor()).require(self.permission)
        return True


@cache
def permission_class(permission: PermissionName) -> type[HasPermission]:
    name = "Has" + "".join(part.title() for part in permission.value.split("_"))
    attributes = {
        "permission": permission,
        "schema_directive": HasPermissionDirective(permission=permission),
    }
    return type(name, (HasPermission,), attributes)


def authenticated(*, key_scope: ApiKeyScope = ApiKeyScope.WRITE) -> list[FieldExtension]:
    """Field extensions for `@authenticated`; `key_scope`: the scope an API key needs for
    the field when it is a mutation (WRITE by default; USE_AI for the chat's own mutations)."""
    return [PermissionExtension(permissions=[IsAuthenticated(key_scope)])]


def requires(permission: PermissionName) -> list[FieldExtension]:
    """Field extensions for `@hasPermission(permission: ...)`."""
    return [PermissionExtension(permissions=[permission_class(permission)()])]


# The header of a root field behind one of the gates above, written once: the field is a
# plain `strawberry.mutation`/`strawberry.field` with its description and that gate's
# extensions, so the schema shows the directive and the description as before.


def signed_in_mutation(*, description: str, key_scope: ApiKeyScope = ApiKeyScope.WRITE) -> Any:
    """`@strawberry.mutation` for a signed-in viewer (`@authenticated`); an API key needs
    `key_scope` (see `authenticated`)."""
    return strawberry.mutation(
        description=description, extensions=authenticated(key_scope=key_scope)
    )


def permitted_mutation(permission: PermissionName, *, description: str) -> Any:
    """`@strawberry.mutation` for holders of `permission` (`@hasPermission`)."""
    return strawberry.mutation(description=description, extensions=requires(permission))


def signed_in_field(*, description: str) -> Any:
    """`@strawberry.field` (a root query) for a signed-in viewer (`@authenticated`)."""
    return strawberry.field(description=description, extensions=authenticated())
