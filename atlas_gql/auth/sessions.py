"""Server-side sessions: starting one, resolving a request's viewer from its token, revoking,
and rotating refresh tokens."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from atlas_gql.auth.actor import Actor
from atlas_gql.auth.models import (
    PermissionName,
    RefreshToken,
    RoleName,
    Session,
    User,
)
from atlas_gql.auth.rules import live_session
from atlas_gql.auth.tokens import (
    decode_access_token,
    hash_token,
    issue_access_token,
    new_opaque_token,
)
from atlas_gql.auth.viewer import Viewer
from atlas_gql.config import Settings
from atlas_gql.db.driver import DriverStatement, fetch_outside_transaction
from atlas_gql.db.session import ReadSession
from atlas_gql.db.utils import execute_transaction
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
    actor: Actor | None = None,
) -> IssuedTokens:
    """Open a session for the user: a Session row, a first refresh token and an access token,
    recording the actor's address and user agent. Flushes; the caller's transaction commits."""
    now = datetime.now(UTC)
    user_agent = actor.user_agent if actor is not None else None
    session = Session(
        user_id=user_id,
        token_hash=hash_token(new_opaque_token()),
        ip_address=actor.ip_address if actor is not None else None,
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


# Built once, with bound parameters: every request authenticated by a session runs it, and
# building the statement (and its cache key) costs more than running it.
_LIVE_SESSION = live_session(
    user_id=sa.bindparam("user_id", type_=sa.Uuid),
    session_id=sa.bindparam("session_id", type_=sa.Uuid),
)

_LIVE_SESSION_ON_DRIVER = DriverStatement.of(_LIVE_SESSION)


async def load_viewer_for_session(
    *, db: ReadSession, user_id: uuid.UUID, session_id: uuid.UUID
) -> Viewer | None:
    """The viewer when the session is live and the user active, else None; one SQL statement
    (`rules.live_session`, the check the compiled read path folds into its statement too)."""
    parameters = {"user_id": user_id, "session_id": session_id}
    row = (await db.execute(_LIVE_SESSION, parameters)).one_or_none()
    return None if row is None else _viewer_of(row, session_id)


def _viewer_of(row: Sequence[Any], session_id: uuid.UUID) -> Viewer:
    """The viewer of a `_LIVE_SESSION` row."""
    return Viewer(
        user_id=row[0],
        session_id=session_id,
        email=row[1],
        roles=frozenset(RoleName(name) for name in row[2] or ()),
        permissions=frozenset(PermissionName(name) for name in row[3] or ()),
    )


def _session_ended() -> Unauthenticated:
    """The refusal of a token whose session, or user, is not valid any more."""
    return Unauthenticated("The session has ended; sign in again.", reason="SESSION_ENDED")


async def authenticate_access_token(*, db: ReadSession, settings: Settings, token: str) -> Viewer:
    """Resolve a bearer token to a viewer; UNAUTHENTICATED when the token, session or user
    is not valid any more (logout, revocation and deactivation take effect at once)."""
    claims = decode_access_token(token, settings=settings)
    viewer = await load_viewer_for_session(
        db=db, user_id=claims.user_id, session_id=claims.session_id
    )
    if viewer is None:
        raise _session_ended()
    return viewer


async def authenticate_access_token_alone(
    *, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, token: str
) -> Viewer:
    """`authenticate_access_token` as one statement of its own, in autocommit on the driver's
    connection (no ORM session: `db.driver`), for an operation whose own transaction starts
    later (a mutation) or that holds none (a subscription)."""
    claims = decode_access_token(token, settings=settings)
    parameters = {"user_id": claims.user_id, "session_id": claims.session_id}
    rows = await fetch_outside_transaction(sessionmaker, _LIVE_SESSION_ON_DRIVER, parameters)
    if not rows:
        raise _session_ended()
    return _viewer_of(rows[0], claims.session_id)


REFRESH_REFUSED_MESSAGE = "The refresh token is invalid or has expired; sign in again."


@dataclass(frozen=True)
class Refreshed:
    user: User
    tokens: IssuedTokens


async def revoke_sessions(
    *,
    db: AsyncSession,
    reason: str,
    session_ids: list[uuid.UUID] | None = None,
    user_id: uuid.UUID | None = None,
    except_session_id: uuid.UUID | None = None,
) -> list[uuid.UUID]:
    """Revoke live sessions (by id, or every one of a user) and their unused refresh tokens;
    the ids revoked. Access tokens of these sessions stop working on their next request.
    The caller's transaction commits."""
    conditions: list[Any] = [col(Session.revoked_at).is_(None)]
    if session_ids is not None:
        conditions.append(col(Session.id).in_(session_ids))
    if user_id is not None:
        conditions.append(col(Session.user_id) == user_id)
    if session_ids is None and user_id is None:
        raise ValueError("revoke_sessions needs session_ids or user_id")
    if except_session_id is not None:
        conditions.append(col(Session.id) != except_session_id)
    revoked = list(
        (
            await db.execute(
                sa.update(Session)
                .where(*conditions)
                .values(revoked_at=sa.func.now(), revoked_reason=reason)
                .returning(col(Session.id))
            )
        ).scalars()
    )
    if revoked:
        await db.execute(
            sa.update(RefreshToken)
            .where(
                col(RefreshToken.session_id).in_(revoked),
                col(RefreshToken.used_at).is_(None),
                col(RefreshToken.revoked_at).is_(None),
            )
            .values(revoked_at=sa.func.now())
        )
    return revoked


async def refresh_session(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    actor: Actor,
    refresh_token: str,
) -> Refreshed:
    """Trade a refresh token for a new access token and a new refresh token of the same
    session. Each refresh token works once: presenting a used one again revokes the whole
    session (it was stolen, or the client is replaying) and answers UNAUTHENTICATED.

    It runs in a transaction of its own: the revocation must be stored although the call
    fails (`execute_transaction` commits what `_rotate` did, then the refusal is raised)."""
    refreshed = await execute_transaction(
        sessionmaker,
        functools.partial(_rotate, settings=settings, actor=actor, refresh_token=refresh_token),
    )
    if refreshed is None:
        raise Unauthenticated(REFRESH_REFUSED_MESSAGE)
    return refreshed


async def _rotate(
    db: AsyncSession, *, settings: Settings, actor: Actor, refresh_token: str
) -> Refreshed | None:
    """The rotation; None when the token was used before (its session is revoked, and that
    is to be committed). Other refusals raise (nothing is kept)."""
    token_hash = hash_token(refresh_token)
    # Race-safe claim: of two concurrent refreshes with one token, exactly one gets the row
    # (the other's UPDATE waits on the row lock, then finds used_at set).
    claimed = (
        await db.execute(
            sa.update(RefreshToken)
            .where(
                col(RefreshToken.token_hash) == token_hash,
                col(RefreshToken.used_at).is_(None),
                col(RefreshToken.revoked_at).is_(None),
                col(RefreshToken.expires_at) > sa.func.now(),
            )
            .values(used_at=sa.func.now())
            .returning(col(RefreshToken.session_id), col(RefreshToken.user_id))
        )
    ).one_or_none()
    if claimed is None:
        known = await db.scalar(
            sa.select(RefreshToken).where(col(RefreshToken.token_hash) == token_hash)
        )
        if known is None or known.used_at is None:
            raise Unauthenticated(REFRESH_REFUSED_MESSAGE)
        session_id, user_id = known.session_id, known.user_id
        await revoke_sessions(db=db, session_ids=[session_id], reason="refresh_token_reuse")
        actor.record(db, "auth.refresh_reuse_detected", ("Session", session_id), user_id=user_id)
        return None
    session_id, user_id = claimed[0], claimed[1]
    row = (
        await db.execute(
            sa.select(Session, User)
            .join(User, col(User.id) == col(Session.user_id))
            .where(
                col(Session.id) == session_id,
                col(Session.revoked_at).is_(None),
                col(Session.expires_at) > sa.func.now(),
                col(User.is_active).is_(True),
            )
        )
    ).one_or_none()
    if row is None:
        raise Unauthenticated(REFRESH_REFUSED_MESSAGE)  # the claim is rolled back
    session, user = row[0], row[1]
    now = datetime.now(UTC)
    # Sliding expiry: an active session lives ATLAS_REFRESH_TOKEN_TTL past its last refresh.
    session.expires_at = now + timedelta(seconds=settings.atlas_refresh_token_ttl)
    session.last_used_at = now
    new_refresh_token = new_opaque_token()
    db.add(
        RefreshToken(
            session_id=session_id,
            user_id=user_id,
            token_hash=hash_token(new_refresh_token),
            expires_at=session.expires_at,
        )
    )
    access_token, expires_at = issue_access_token(
        settings=settings, user_id=user_id, session_id=session_id, now=now
    )
    await db.flush()
    return Refreshed(
        user=user, tokens=IssuedTokens(access_token, expires_at, new_refresh_token, session_id)
    )
