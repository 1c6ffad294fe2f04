"""The signed-in user as the rest of the code sees them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

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
