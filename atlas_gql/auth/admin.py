"""User administration (MANAGE_USERS): list, create, rename, deactivate, grant and withdraw
global roles, approve registrations, set a user's own limits (token budget, message rate)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import sqlalchemy as sa
from pydantic import AfterValidator, Field
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from atlas_gql.auth.account import DisplayName, create_user_account
from atlas_gql.auth.actor import Actor
from atlas_gql.auth.models import PermissionName, Role, RoleName, User, UserRole
from atlas_gql.auth.sessions import revoke_sessions
from atlas_gql.config import TEXT_LIMITS, Settings
from atlas_gql.db.inputs import Command, PartialUpdate, camel_case, check_length
from atlas_gql.db.pagination import Ordering, Page, PageRequest, paginate
from atlas_gql.db.session import ReadSession, stored
from atlas_gql.errors import BadInput, Conflict, NotFound

# Oldest first; the id breaks ties (the seed creates its users in one transaction).
USER_ORDERING = Ordering(sort=col(User.created_at), id=col(User.id))


def _search_term(search: str | None) -> str | None:
    check_length(search, field="search", limit=TEXT_LIMITS.search)
    return search.strip() or None if search is not None else None


class UserFilter(Command):
    """Narrows `list_users`: a substring of email or name, a global role, the active flag."""

    search: Annotated[str | None, AfterValidator(_search_term)] = None
    role: RoleName | None = None
    is_active: bool | None = None
    # True: only accounts awaiting approval; False: only approved ones.
    awaiting_approval: bool | None = None


class UserCreate(Command):
    email: str
    password: str
    name: DisplayName = None
    # USER when None; duplicates are ignored.
    roles: tuple[RoleName, ...] | None = None


class UserUpdate(PartialUpdate):
    """`name`: a blank or null name clears it; `is_active`: false deactivates (null refused)."""

    not_null = frozenset({"is_active"})
    name: DisplayName = None
    is_active: bool | None = None


async def list_users(
    *, db: ReadSession, actor: Actor, request: PageRequest, filter: UserFilter
) -> Page[User]:
    """Users oldest first (MANAGE_USERS), filtered; keyset-paginated."""
    actor.require(PermissionName.MANAGE_USERS)
    statement = sa.select(User)
    if filter.search is not None:
        escaped = filter.search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = f"%{escaped}%"
        statement = statement.where(
            sa.or_(
                col(User.email).ilike(pattern, escape="\\"),
                col(User.name).ilike(pattern, escape="\\"),
            )
        )
    if filter.role is not None:
        statement = statement.where(
            sa.exists()
            .where(col(UserRole.user_id) == col(User.id))
            .where(col(UserRole.role_id) == col(Role.id))
            .where(col(Role.name) == filter.role.value)
        )
    if filter.is_active is not None:
        statement = statement.where(col(User.is_active).is_(filter.is_active))
    if filter.awaiting_approval is not None:
        approved_at = col(User.approved_at)
        statement = statement.where(
            approved_at.is_(None) if filter.awaiting_approval else approved_at.is_not(None)
        )
    return await paginate(db, statement, ordering=USER_ORDERING, request=request)


async def create_user(
    *, db: AsyncSession, settings: Settings, actor: Actor, data: UserCreate
) -> User:
    """An administrator (MANAGE_USERS) creates an account; roles default to USER."""
    actor.require(PermissionName.MANAGE_USERS)
    roles = list(dict.fromkeys(data.roles)) if data.roles is not None else [RoleName.USER]
    user = await create_user_account(
        db=db,
        email=data.email,
        password=data.password,
        name=data.name,
        roles=roles,
        bcrypt_rounds=settings.atlas_bcrypt_rounds,
    )
    actor.record(
        db,
        "user.create",
        user,
        details={"email": user.email, "roles": [role.value for role in roles]},
    )
    return await stored(db, user)


async def _user_for_update(db: AsyncSession, user_id: uuid.UUID) -> User:
    user = (
        await db.execute(sa.select(User).where(col(User.id) == user_id).with_for_update())
    ).scalar_one_or_none()
    if user is None:
        raise NotFound("No such user.")
    return user


async def update_user(
    *, db: AsyncSession, actor: Actor, user_id: uuid.UUID, data: UserUpdate
) -> User:
    """Rename, deactivate or reactivate a user (MANAGE_USERS). Deactivation ends every
    session of the user at once; nobody deactivates themself."""
    actor.require(PermissionName.MANAGE_USERS)
    if data.is_active is False and user_id == actor.user_id:
        raise Conflict("You cannot deactivate your own account.", field="isActive")
    user = await _user_for_update(db, user_id)
    changed = data.apply(user)
    if changed:
        details: dict[str, Any] = {"changes": _camel(changed)}
        action = "user.update"
        if changed.get("is_active") is False:
            action = "user.deactivate"
            revoked = await revoke_sessions(db=db, user_id=user.id, reason="user_deactivated")
            details["changes"]["sessionsEnded"] = len(revoked)
        actor.record(db, action, user, details=details)
        return await stored(db, user)
    return user


def _camel(changed: dict[str, Any]) -> dict[str, Any]:
    return {camel_case(name): value for name, value in changed.items()}


# The largest own limits an administrator may set (GraphQL's Int holds the budget).
MAX_MONTHLY_TOKEN_BUDGET = 2**31 - 1
MAX_MESSAGES_PER_MINUTE = 10_000


class UserLimitsUpdate(PartialUpdate):
    """A user's own limits; null returns a limit to the setting's default."""

    monthly_token_budget: Annotated[int | None, Field(ge=0, le=MAX_MONTHLY_TOKEN_BUDGET)] = None
    messages_per_minute: Annotated[int | None, Field(ge=1, le=MAX_MESSAGES_PER_MINUTE)] = None


async def set_user_limits(
    *, db: AsyncSession, actor: Actor, user_id: uuid.UUID, data: UserLimitsUpdate
) -> User:
    """Set or clear a user's own monthly token budget and message rate (MANAGE_USERS); they
    apply to the user's next message."""
    actor.require(PermissionName.MANAGE_USERS)
    user = await _user_for_update(db, user_id)
    changed = data.apply(user)
    if changed:
        actor.record(db, "user.limits", user, details={"changes": _camel(changed)})
        return await stored(db, user)
    return user


async def _approve(db: AsyncSession, actor: Actor, user: User, *, via: str) -> None:
    """Stamp `approved_at` on an account awaiting approval (no-op otherwise)."""
    if user.approved_at is not None:
        return
    user.approved_at = datetime.now(UTC)
    db.add(user)
    actor.record(db, "user.approve", user, details={"via": via})
    await db.flush()


async def approve_user(*, db: AsyncSession, actor: Actor, user_id: uuid.UUID) -> User:
    """Approve a registration awaiting approval (MANAGE_USERS): the account gets the USER
    role, so it may use AI from its next request. Approving an approved account changes
    nothing."""
    actor.require(PermissionName.MANAGE_USERS)
    user = await _user_for_update(db, user_id)
    if user.approved_at is None:
        await db.execute(
            insert(UserRole)
            .values(user_id=user.id, role_id=await _role_id(db, RoleName.USER))
            .on_conflict_do_nothing(index_elements=["user_id", "role_id"])
        )
        await _approve(db, actor, user, via="approveUser")
    return await stored(db, user)


async def _role_id(db: ReadSession, role: RoleName) -> uuid.UUID:
    role_id = (
        await db.execute(sa.select(col(Role.id)).where(col(Role.name) == role.value))
    ).scalar_one_or_none()
    if role_id is None:
        raise BadInput("Unknown role; has the database been seeded?", field="role")
    return role_id


async def assign_role(
    *, db: AsyncSession, actor: Actor, user_id: uuid.UUID, role: RoleName
) -> User:
    """Grant a global role (MANAGE_USERS); granting one the user holds changes nothing.
    Takes effect on the user's next request."""
    actor.require(PermissionName.MANAGE_USERS)
    user = await _user_for_update(db, user_id)
    inserted = (
        await db.execute(
            insert(UserRole)
            .values(user_id=user.id, role_id=await _role_id(db, role))
            .on_conflict_do_nothing(index_elements=["user_id", "role_id"])
            .returning(col(UserRole.id))
        )
    ).scalar_one_or_none()
    if inserted is not None:
        actor.record(db, "role.assign", user, details={"role": role.value})
    # Granting a role to an account awaiting approval is approving it.
    if user.approved_at is None:
        await _approve(db, actor, user, via="assignRole")
        return await stored(db, user)
    return user


async def revoke_role(
    *, db: AsyncSession, actor: Actor, user_id: uuid.UUID, role: RoleName
) -> User:
    """Withdraw a global role (MANAGE_USERS); an administrator cannot withdraw their own
    ADMIN role (CONFLICT), so the last one cannot lock everybody out."""
    actor.require(PermissionName.MANAGE_USERS)
    if user_id == actor.user_id and role is RoleName.ADMIN:
        raise Conflict("You cannot revoke your own ADMIN role.", field="role")
    user = await _user_for_update(db, user_id)
    deleted = (
        await db.execute(
            sa.delete(UserRole)
            .where(
                col(UserRole.user_id) == user.id,
                col(UserRole.role_id) == await _role_id(db, role),
            )
            .returning(col(UserRole.id))
        )
    ).scalar_one_or_none()
    if deleted is not None:
        actor.record(db, "role.revoke", user, details={"role": role.value})
    return user
