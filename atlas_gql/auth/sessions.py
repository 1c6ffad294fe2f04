"""Server-side sessions: starting one, and resolving a request's viewer from its token."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from atlas_gql.auth.models import (
    Permission,
    PermissionName,
    RefreshToken,
    Role,
    RoleName,
    RolePermission,
    Session,
    User,
    UserRole,
)
from atlas_gql.auth.tokens import (
    decode_access_token,
    hash_token,
    issue_access_token,
    new_opaque_token,
)
from atlas_gql.auth.viewer import Viewer
from atlas_gql.config import Settings
from atlas_gql.errors import Unauthenticated


@dataclass(frozen=True)
class IssuedTokens:
    access_token: str
    access_token_expires_at: datetime
    refresh_token: str
    session_id: uuid.UUID


async def start_session(
    *,
    db: AsyncSession,
    settings: Settings,
    user_id: uuid.UUID,
    ip_address: str | None = None,
    user_agent: str | None = None,
) -> IssuedTokens:
    """Open a session for the user: a Session row, a first refresh token and an access token.
    The caller commits."""
    now = datetime.now(UTC)
    session = Session(
        user_id=user_id,
        token_hash=hash_token(new_opaque_token()),
        ip_address=ip_address,
        user_agent=(user_agent or None) and user_agent[:500],
        expires_at=now + timedelta(seconds=settings.atlas_refresh_token_ttl),
        last_used_at=now,
    )
    db.add(session)
    # No ORM relationships (loads go through DataLoaders), so parents are flushed first.
    await db.flush()
    refresh_token = new_opaque_token()
    db.add(
        RefreshToken(
            session_id=session.id,
            user_id=user_id,
            token_hash=hash_token(refresh_token),
            expires_at=session.expires_at,
        )
    )
    await db.flush()
    access_token, expires_at = issue_access_token(
        settings=settings, user_id=user_id, session_id=session.id, now=now
    )
    return IssuedTokens(access_token, expires_at, refresh_token, session.id)


async def load_viewer_for_session(
    *, db: AsyncSession, user_id: uuid.UUID, session_id: uuid.UUID
) -> Viewer | None:
    """The viewer when the session is live and the user active, else None; one SQL statement."""
    now = sa.func.now()
    role_names = (
        sa.select(sa.func.coalesce(sa.func.array_agg(sa.distinct(col(Role.name))), sa.text("'{}'")))
        .select_from(UserRole)
        .join(Role, col(Role.id) == col(UserRole.role_id))
        .where(col(UserRole.user_id) == col(User.id))
        .scalar_subquery()
    )
    permission_names = (
        sa.select(
            sa.func.coalesce(sa.func.array_agg(sa.distinct(col(Permission.name))), sa.text("'{}'"))
        )
        .select_from(UserRole)
        .join(RolePermission, col(RolePermission.role_id) == col(UserRole.role_id))
        .join(Permission, col(Permission.id) == col(RolePermission.permission_id))
        .where(col(UserRole.user_id) == col(User.id))
        .scalar_subquery()
    )
    statement = (
        sa.select(col(User.id), col(User.email), role_names, permission_names)
        .join(Session, col(Session.user_id) == col(User.id))
        .where(
            col(User.id) == user_id,
            col(User.is_active).is_(True),
            col(Session.id) == session_id,
            col(Session.revoked_at).is_(None),
            col(Session.expires_at) > now,
        )
    )
    row = (await db.execute(statement)).one_or_none()
    if row is None:
        return None
    return Viewer(
        user_id=row[0],
        session_id=session_id,
        email=row[1],
        roles=frozenset(RoleName(name) for name in row[2] or ()),
        permissions=frozenset(PermissionName(name) for name in row[3] or ()),
    )


async def authenticate_access_token(*, db: AsyncSession, settings: Settings, token: str) -> Viewer:
    """Resolve a bearer token to a viewer; UNAUTHENTICATED when the token, session or user
    is not valid any more (logout, revocation and deactivation take effect at once)."""
    claims = decode_access_token(token, settings=settings)
    viewer = await load_viewer_for_session(
        db=db, user_id=claims.user_id, session_id=claims.session_id
    )
    if viewer is None:
        raise Unauthenticated("The session has ended; sign in again.", reason="SESSION_ENDED")
    return viewer
