"""The signed-in user as the rest of the code sees them."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeAlias

from atlas_gql.auth.models import PermissionName, RoleName


@dataclass(frozen=True)
class Viewer:
    """Who is asking: resolved once per request from a live session and an active user."""

    user_id: uuid.UUID
    session_id: uuid.UUID
    email: str
    roles: frozenset[RoleName]
    permissions: frozenset[PermissionName]

    @property
    def is_admin(self) -> bool:
        return RoleName.ADMIN in self.roles

    def has_permission(self, permission: PermissionName) -> bool:
        return permission in self.permissions


# The operation's viewer, resolved on first call (None when signed out): what a DataLoader
# that depends on who is asking is given.
ViewerSource: TypeAlias = Callable[[], Awaitable[Viewer | None]]
