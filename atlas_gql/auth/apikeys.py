"""Personal API keys (issue 15 part 5; docs/api-keys.md): creating one (its secret is shown
once), listing and revoking them, and resolving a request's `Authorization: Bearer atlas_sk_…`
to a viewer: the key's user, narrowed by the key's scopes (`Viewer.for_api_key`).

A key is checked on every request, as a session is (`rules.live_api_key`, one statement): it
stops working at once when revoked, expired, or its user deactivated. Its `last_used_at` is
written at most once per ATLAS_API_KEY_LAST_USED_INTERVAL, not on every request."""

from __future__ import annotations

import functools
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import sqlalchemy as sa
from pydantic import AfterValidator
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from atlas_gql.auth.actor import Actor
from atlas_gql.auth.models import ApiKey, ApiKeyScope, PermissionName, RoleName, User
from atlas_gql.auth.rules import live_api_key
from atlas_gql.auth.tokens import hash_token
from atlas_gql.auth.viewer import Viewer
from atlas_gql.config import TEXT_LIMITS, Settings
from atlas_gql.db.inputs import Command, check_length
from atlas_gql.db.pagination import Ordering, Page, PageRequest, paginate
from atlas_gql.db.session import ReadSession
from atlas_gql.db.tables import table_of
from atlas_gql.db.utils import execute_transaction
from atlas_gql.errors import BadInput, Conflict, Forbidden, NotFound, Unauthenticated

SECRET_PREFIX = "atlas_sk_"
# What lists show of a secret: the marker and this many characters of the random part.
SHOWN_CHARACTERS = 8
# `atlas_sk_` + 256 random bits, URL-safe base64 without padding (43 characters).
_WELL_FORMED = re.compile(r"atlas_sk_[A-Za-z0-9_-]{43}")
REFUSED_MESSAGE = "The API key is invalid, expired or revoked, or its user is deactivated."

API_KEY_ORDERING = Ordering(sort=col(ApiKey.created_at), id=col(ApiKey.id), descending=True)


def is_api_key(token: str) -> bool:
    """Whether a bearer token is meant as a personal API key (rather than an access token)."""
    return token.startswith(SECRET_PREFIX)


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def _name(name: str) -> str:
    cleaned = name.strip()
    if not cleaned:
        raise BadInput("`name` must not be empty.", field="name")
    check_length(cleaned, field="name", limit=TEXT_LIMITS.api_key_name)
    return cleaned


def _expiry(expires_at: datetime | None) -> datetime | None:
    if expires_at is None:
        return None
    if expires_at.tzinfo is None or expires_at.utcoffset() is None:
        raise BadInput(
            "`expiresAt` needs a time zone offset (e.g. 2027-01-01T00:00:00Z).", field="expiresAt"
        )
    if expires_at <= datetime.now(UTC):
        raise BadInput("`expiresAt` must be in the future.", field="expiresAt")
    return expires_at


class ApiKeyCreate(Command):
    name: Annotated[str, AfterValidator(_name)]
    # Null: never expires (until revoked).
    expires_at: Annotated[datetime | None, AfterValidator(_expiry)] = None
    # None: every scope the user may hold (see `create_api_key`).
    scopes: tuple[ApiKeyScope, ...] | None = None


@dataclass(frozen=True)
class CreatedApiKey:
    """A new key and its secret: the only time the secret exists outside the client."""

    secret: str
    api_key: ApiKey


def scopes_for(viewer: Viewer, asked: tuple[ApiKeyScope, ...] | None) -> list[ApiKeyScope]:
    """The scopes a new key gets: all the user may hold when none are asked for (ADMIN only
    for an administrator), READ always (every answer reads); ADMIN asked by a
    non-administrator is FORBIDDEN."""
    if asked is None:
        chosen = {ApiKeyScope.READ, ApiKeyScope.WRITE, ApiKeyScope.USE_AI}
        if viewer.is_admin:
            chosen.add(ApiKeyScope.ADMIN)
    else:
        chosen = {ApiKeyScope.READ, *asked}
        if ApiKeyScope.ADMIN in chosen and not viewer.is_admin:
            raise Forbidden("Only administrators may create keys with the ADMIN scope.")
    return [scope for scope in ApiKeyScope if scope in chosen]


async def create_api_key(
    *, db: AsyncSession, actor: Actor, settings: Settings, data: ApiKeyCreate
) -> CreatedApiKey:
    """A new key of the viewer (a signed-in session only: keys cannot make keys); CONFLICT
    past ATLAS_API_KEYS_PER_USER live keys."""
    viewer = actor.viewer_required
    _ = actor.require_session("create API keys")
    scopes = scopes_for(viewer, data.scopes)
    # Serialises the viewer's key creations, so the count below cannot be raced past.
    await db.execute(
        sa.select(col(User.id)).where(col(User.id) == viewer.user_id).with_for_update()
    )
    live = (
        await db.execute(
            sa.select(sa.func.count()).where(
                col(ApiKey.user_id) == viewer.user_id, col(ApiKey.revoked_at).is_(None)
            )
        )
    ).scalar_one()
    if live >= settings.atlas_api_keys_per_user:
        raise Conflict(
            f"You hold {live} API keys, the most allowed (ATLAS_API_KEYS_PER_USER); revoke one "
            "first."
        )
    secret = new_secret()
    key = ApiKey(
        user_id=viewer.user_id,
        name=data.name,
        prefix=secret[: len(SECRET_PREFIX) + SHOWN_CHARACTERS],
        secret_hash=hash_token(secret),
        scopes=[scope.value for scope in scopes],
        expires_at=data.expires_at,
    )
    db.add(key)
    await db.flush()
    actor.record(
        db,
        "api_key.create",
        key,
        details={
            "name": key.name,
            "prefix": key.prefix,
            "scopes": key.scopes,
            "expiresAt": key.expires_at.isoformat() if key.expires_at else None,
        },
    )
    await db.flush()
    await db.refresh(key)
    return CreatedApiKey(secret=secret, api_key=key)


def _visible(viewer: Viewer) -> sa.ColumnElement[bool]:
    """A key is visible to its user and to holders of MANAGE_USERS."""
    if viewer.has_permission(PermissionName.MANAGE_USERS):
        return sa.true()
    return col(ApiKey.user_id) == viewer.user_id


async def list_api_keys(
    *,
    db: ReadSession,
    actor: Actor,
    user_id: uuid.UUID | None,
    include_revoked: bool,
    request: PageRequest,
) -> Page[ApiKey]:
    """A user's keys, newest first: the viewer's own, or (MANAGE_USERS) anyone's."""
    viewer = actor.viewer_required
    owner = user_id or viewer.user_id
    if owner != viewer.user_id:
        actor.require(PermissionName.MANAGE_USERS)
    statement = sa.select(ApiKey).where(col(ApiKey.user_id) == owner)
    if not include_revoked:
        statement = statement.where(col(ApiKey.revoked_at).is_(None))
    return await paginate(db, statement, ordering=API_KEY_ORDERING, request=request)


async def get_api_key(*, db: ReadSession, viewer: Viewer, key_id: uuid.UUID) -> ApiKey:
    """A key the viewer may see (theirs; anyone's for MANAGE_USERS); NOT_FOUND otherwise."""
    key = (
        await db.execute(
            sa.select(ApiKey)
            .where(col(ApiKey.id) == key_id, _visible(viewer))
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()
    if key is None:
        raise NotFound("API key not found.")
    return key


async def revoke_api_key(*, db: AsyncSession, actor: Actor, key_id: uuid.UUID) -> ApiKey:
    """Revoke a key (its user, or a MANAGE_USERS holder): it stops working at once, on open
    WebSockets at their next event. A revoked key is returned as it is."""
    viewer = actor.viewer_required
    _ = actor.require_session("revoke API keys")
    key = await get_api_key(db=db, viewer=viewer, key_id=key_id)
    if key.revoked_at is not None:
        return key
    revoked = (
        await db.execute(
            sa.update(ApiKey)
            .where(col(ApiKey.id) == key.id, col(ApiKey.revoked_at).is_(None))
            .values(revoked_at=sa.func.now())
            .returning(ApiKey)
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()
    actor.record(
        db,
        "api_key.revoke",
        key,
        details={"prefix": key.prefix, "userId": str(key.user_id)},
    )
    await db.flush()
    return revoked or await get_api_key(db=db, viewer=viewer, key_id=key_id)


def _viewer_of(row: Any) -> Viewer:
    return Viewer.for_api_key(
        user_id=row.id,
        email=row.email,
        roles=(RoleName(name) for name in row.role_names or ()),
        permissions=(PermissionName(name) for name in row.permission_names or ()),
        api_key_id=row.api_key_id,
        scopes=(ApiKeyScope(scope) for scope in row.scopes or ()),
    )


async def authenticate_api_key(
    *, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, secret: str
) -> Viewer:
    """The viewer of a key's secret, narrowed by its scopes, checked on a short session;
    UNAUTHENTICATED (reason API_KEY_INVALID) for a malformed, unknown, revoked or expired key
    or a deactivated user. Records the use, in a short transaction, when the last one is
    older than ATLAS_API_KEY_LAST_USED_INTERVAL."""
    if _WELL_FORMED.fullmatch(secret) is None:
        raise Unauthenticated(REFUSED_MESSAGE, reason="API_KEY_INVALID")
    keys = table_of(ApiKey)
    statement = live_api_key(keys.c.secret_hash == hash_token(secret)).add_columns(
        keys.c.last_used_at
    )
    async with sessionmaker() as db:
        row = (await db.execute(statement)).one_or_none()
    if row is None:
        raise Unauthenticated(REFUSED_MESSAGE, reason="API_KEY_INVALID")
    viewer = _viewer_of(row)
    interval = timedelta(seconds=settings.atlas_api_key_last_used_interval)
    if row.last_used_at is None or row.last_used_at < datetime.now(UTC) - interval:
        await execute_transaction(
            sessionmaker,
            functools.partial(_record_use, key_id=row.api_key_id, interval=interval),
            attempts=1,
        )
    return viewer


async def _record_use(db: AsyncSession, *, key_id: uuid.UUID, interval: timedelta) -> None:
    # Conditional, so concurrent requests of one key write the row once per interval.
    last_used = col(ApiKey.last_used_at)
    await db.execute(
        sa.update(ApiKey)
        .where(
            col(ApiKey.id) == key_id,
            sa.or_(last_used.is_(None), last_used < sa.func.now() - interval),
        )
        .values(last_used_at=sa.func.now())
    )
