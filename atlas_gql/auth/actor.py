"""Who is acting, and from where: the one value every service takes as `actor=`.

Built once per operation by the graph layer's Context (`await context.actor()`); the CLI, the
seed and background work use `Actor.system()`. `require` is the one global-permission check,
`viewer_required` the one "signed in" check, `record` the one way to write an activity row
(`created`, with the new row it is about)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from atlas_gql.auth.models import ApiKeyScope, PermissionName
from atlas_gql.auth.viewer import Viewer
from atlas_gql.db.session import stored
from atlas_gql.errors import Forbidden, Unauthenticated
from atlas_gql.logs.audit import record_activity
from atlas_gql.logs.models import ActivityLog

SYSTEM_USER_AGENT = "atlas-gql (system)"


class Entity(Protocol):
    """A row an activity is about: its class name is the entity type, its id the entity id."""

    @property
    def id(self) -> uuid.UUID: ...


EntityT = TypeVar("EntityT", bound=Entity)

# An entity given by type name and id, for rows no longer (or never) in hand.
EntityRef = tuple[str, uuid.UUID]


def _new_request_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Actor:
    """The signed-in viewer (None for an anonymous caller, e.g. login), the client's address
    and user agent, and the operation's request id (the key of its ErrorLog rows)."""

    viewer: Viewer | None
    ip_address: str | None = None
    user_agent: str | None = None
    request_id: str = field(default_factory=_new_request_id)
    # The process itself (CLI, seed, background work): trusted, and no user.
    is_system: bool = False

    @classmethod
    def system(cls, *, request_id: str | None = None) -> Actor:
        return cls(
            viewer=None,
            user_agent=SYSTEM_USER_AGENT,
            request_id=request_id or _new_request_id(),
            is_system=True,
        )

    @property
    def user_id(self) -> uuid.UUID | None:
        return self.viewer.user_id if self.viewer is not None else None

    @property
    def is_admin(self) -> bool:
        return self.viewer is not None and self.viewer.is_admin

    @property
    def viewer_required(self) -> Viewer:
        """The signed-in viewer; UNAUTHENTICATED without one."""
        if self.viewer is None:
            raise Unauthenticated()
        return self.viewer

    def require(self, permission: PermissionName) -> None:
        """UNAUTHENTICATED without a viewer, FORBIDDEN without `permission`. The system actor
        passes (what the CLI does is the operator's decision)."""
        if self.is_system:
            return
        viewer = self.viewer_required
        if not viewer.has_permission(permission):
            if viewer.api_key_id is not None:
                raise Forbidden(
                    f"This requires the {permission.value} permission, which this API key's "
                    "scopes or its user's roles do not grant."
                )
            raise Forbidden(f"This requires the {permission.value} permission.")

    @property
    def api_key_id(self) -> uuid.UUID | None:
        """The personal API key the operation is authenticated by; None for a session."""
        return self.viewer.api_key_id if self.viewer is not None else None

    @property
    def scopes(self) -> frozenset[ApiKeyScope] | None:
        """The API key's scopes; None when not acting through a key (nothing narrowed)."""
        return self.viewer.scopes if self.viewer is not None else None

    def require_scope(self, scope: ApiKeyScope) -> None:
        """FORBIDDEN when the operation runs on an API key without `scope` (sessions and the
        system actor pass). Permissions need no call: a key's viewer holds only what its scopes
        let through, so `require` honours them already."""
        if self.is_system or self.viewer is None or self.viewer.allows(scope):
            return
        raise Forbidden(f"This API key lacks the {scope.value} scope.", scope=scope.value)

    def require_session(self, action: str) -> uuid.UUID:
        """The signed-in session's id; FORBIDDEN on an API key: managing credentials (keys,
        passwords, sessions) needs a session, so a leaked key cannot make itself new ones."""
        viewer = self.viewer_required
        if viewer.session_id is None:
            raise Forbidden(f"API keys cannot {action}; sign in to do it.")
        return viewer.session_id

    def record(
        self,
        db: AsyncSession,
        action: str,
        entity: Entity | EntityRef | None = None,
        *,
        project_id: uuid.UUID | None = None,
        details: dict[str, Any] | None = None,
        user_id: uuid.UUID | None = None,
    ) -> ActivityLog:
        """Add an ActivityLog row of this actor to `db`'s transaction. `user_id` names the
        user for an actor without a viewer (who just registered or signed in)."""
        if isinstance(entity, tuple):
            entity_type, entity_id = entity
        elif entity is not None:
            entity_type, entity_id = type(entity).__name__, entity.id
        else:
            entity_type, entity_id = None, None
        return record_activity(
            db=db,
            action=action,
            user_id=user_id or self.user_id,
            entity_type=entity_type,
            entity_id=entity_id,
            project_id=project_id,
            ip_address=self.ip_address,
            user_agent=self.user_agent,
            details=details,
        )

    async def created(
        self,
        db: AsyncSession,
        action: str,
        row: EntityT,
        *,
        project_id: uuid.UUID | None = None,
        details: dict[str, Any] | None = None,
    ) -> EntityT:
        """A new row's one way in: added and flushed, its `action` recorded, and the row read
        back as stored (for the response; the operation boundary commits)."""
        db.add(row)
        await db.flush()
        self.record(db, action, row, project_id=project_id, details=details)
        return await stored(db, row)
