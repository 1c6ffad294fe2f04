"""The signed-in user as the rest of the code sees them."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TypeAlias

from atlas_gql.auth.models import ApiKeyScope, PermissionName, RoleName

# What each scope of a personal API key lets through of its user's permissions (READ: none,
# reading needs no permission). The ADMIN scope also keeps the ADMIN role (seeing everything);
# a key without it acts as its user would without that role. docs/api-keys.md.
SCOPE_PERMISSIONS: dict[ApiKeyScope, frozenset[PermissionName]] = {
    ApiKeyScope.READ: frozenset(),
    ApiKeyScope.WRITE: frozenset({PermissionName.CREATE_PROJECT}),
    ApiKeyScope.USE_AI: frozenset({PermissionName.USE_AI}),
    ApiKeyScope.ADMIN: frozenset({PermissionName.MANAGE_USERS}),
}


@dataclass(frozen=True)
class Viewer:
    """Who is asking: resolved once per request from a live session (or a live personal API
    key) and an active user."""

    user_id: uuid.UUID
    # The session of the access token; None for a request authenticated by an API key.
    session_id: uuid.UUID | None
    email: str
    roles: frozenset[RoleName]
    permissions: frozenset[PermissionName]
    # The API key of the request (None: a session), and its scopes, already applied to
    # `roles` and `permissions` (`for_api_key`).
    api_key_id: uuid.UUID | None = None
    scopes: frozenset[ApiKeyScope] | None = None

    @classmethod
    def for_api_key(
        cls,
        *,
        user_id: uuid.UUID,
        email: str,
        roles: Iterable[RoleName],
        permissions: Iterable[PermissionName],
        api_key_id: uuid.UUID,
        scopes: Iterable[ApiKeyScope],
    ) -> Viewer:
        """The user narrowed by the key's scopes: the permissions the scopes let through, and
        the ADMIN role only with the ADMIN scope."""
        granted = frozenset(scopes)
        allowed = frozenset().union(*(SCOPE_PERMISSIONS[scope] for scope in granted))
        held_roles = frozenset(roles)
        if ApiKeyScope.ADMIN not in granted:
            held_roles -= {RoleName.ADMIN}
        return cls(
            user_id=user_id,
            session_id=None,
            email=email,
            roles=held_roles,
            permissions=frozenset(permissions) & allowed,
            api_key_id=api_key_id,
            scopes=granted,
        )

    @property
    def is_admin(self) -> bool:
        return RoleName.ADMIN in self.roles

    def has_permission(self, permission: PermissionName) -> bool:
        return permission in self.permissions

    def allows(self, scope: ApiKeyScope) -> bool:
        """Whether the request's credential allows `scope` (a session allows everything)."""
        return self.scopes is None or scope in self.scopes


# The operation's viewer, resolved on first call (None when signed out): what a DataLoader
# that depends on who is asking is given.
ViewerSource: TypeAlias = Callable[[], Awaitable[Viewer | None]]
