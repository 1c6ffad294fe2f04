"""Account rules: registration, sign-in, password changes and user administration."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from email_validator import EmailNotValidError, validate_email
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from atlas_gql.auth.models import (
    PermissionName,
    RefreshToken,
    Role,
    RoleName,
    User,
    UserRole,
)
from atlas_gql.auth.passwords import (
    BCRYPT_ROUNDS,
    hash_password,
    validate_password,
    verify_password,
)
from atlas_gql.auth.ratelimit import (
    LOGIN_FAILED_ACTION,
    LoginLimiter,
    account_key,
    settle_attempt,
)
from atlas_gql.auth.sessions import IssuedTokens, refresh_session, revoke_sessions, start_session
from atlas_gql.auth.tokens import hash_token
from atlas_gql.auth.viewer import Viewer
from atlas_gql.config import Settings
from atlas_gql.db.pagination import Ordering, Page, PageRequest, paginate
from atlas_gql.db.session import ReadSession
from atlas_gql.errors import BadInput, Conflict, Forbidden, NotFound, Unauthenticated
from atlas_gql.logs.audit import record_activity

LOGIN_REFUSED_MESSAGE = "Invalid email or password."
MAX_NAME_LENGTH = 200
MAX_EMAIL_LENGTH = 320
MAX_SEARCH_LENGTH = 200
# Oldest first; the id breaks ties (the seed creates its users in one transaction).
USER_ORDERING = Ordering(
    sort=col(User.created_at),
    id=col(User.id),
)


def normalize_email(email: str, *, field: str = "email") -> str:
    """A syntactically valid address, domain lower-cased; BAD_USER_INPUT otherwise."""
    try:
        result = validate_email(email.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise BadInput(f"Invalid email address: {exc}", field=field) from None
    return result.normalized


async def find_user_by_email(*, db: ReadSession, email: str) -> User | None:
    """Case-insensitive lookup (served by the unique index on lower(email))."""
    statement = sa.select(User).where(sa.func.lower(col(User.email)) == email.strip().lower())
    return (await db.execute(statement)).scalar_one_or_none()


async def create_user_account(
    *,
    db: AsyncSession,
    email: str,
    password: str,
    name: str | None = None,
    roles: Iterable[RoleName] = (RoleName.USER,),
    bcrypt_rounds: int = BCRYPT_ROUNDS,
) -> User:
    """Insert a user with hashed password and global roles; CONFLICT when the email is taken.
    The caller commits."""
    normalized = normalize_email(email)
    if name is not None and len(name.strip()) > MAX_NAME_LENGTH:
        raise BadInput(f"The name must be at most {MAX_NAME_LENGTH} characters.", field="name")
    password_hash = await hash_password(password, rounds=bcrypt_rounds)
    if await find_user_by_email(db=db, email=normalized) is not None:
        raise Conflict("An account with this email already exists.", field="email")
    user = User(email=normalized, name=(name or "").strip() or None, password_hash=password_hash)
    db.add(user)
    try:
        await db.flush()
    except IntegrityError:
        # Another request registered the same address between the check and the insert.
        await db.rollback()
        raise Conflict("An account with this email already exists.", field="email") from None
    role_names = [role.value for role in roles]
    if role_names:
        role_ids = (
            (await db.execute(sa.select(col(Role.id)).where(col(Role.name).in_(role_names))))
            .scalars()
            .all()
        )  # type: ignore[attr-defined]
        if len(role_ids) != len(set(role_names)):
            raise BadInput("Unknown role; has the database been seeded?", field="role")
        await db.execute(
            insert(UserRole)
            .values([{"user_id": user.id, "role_id": role_id} for role_id in role_ids])
            .on_conflict_do_nothing(index_elements=["user_id", "role_id"])
        )
    return user


@dataclass(frozen=True)
class SignedIn:
    """A user and the tokens of the session just opened for them."""

    user: User
    tokens: IssuedTokens


def _require_permission(viewer: Viewer, permission: PermissionName) -> None:
    if not viewer.has_permission(permission):
        raise Forbidden(f"This requires the {permission.value} permission.")


def _clean_name(name: str | None) -> str | None:
    cleaned = (name or "").strip() or None
    if cleaned is not None and len(cleaned) > MAX_NAME_LENGTH:
        raise BadInput(f"The name must be at most {MAX_NAME_LENGTH} characters.", field="name")
    return cleaned


async def register(
    *,
    db: AsyncSession,
    settings: Settings,
    email: str,
    password: str,
    name: str | None = None,
    ip_address: str | None = None,
    user_agent: str | None = None,
) -> SignedIn:
    """Create an account with the USER role and sign it in; CONFLICT when the email (in any
    case) is taken, BAD_USER_INPUT for a malformed email or an unfit password."""
    user = await create_user_account(
        db=db,
        email=email,
        password=password,
        name=_clean_name(name),
        roles=(RoleName.USER,),
        bcrypt_rounds=settings.atlas_bcrypt_rounds,
    )
    tokens = await start_session(
        db=db, settings=settings, user_id=user.id, ip_address=ip_address, user_agent=user_agent
    )
    user.last_login_at = datetime.now(UTC)
    record_activity(
        db=db,
        action="auth.register",
        user_id=user.id,
        entity_type="User",
        entity_id=user.id,
        ip_address=ip_address,
        user_agent=user_agent,
        details={"email": user.email},
    )
    await db.commit()
    await db.refresh(user)
    return SignedIn(user=user, tokens=tokens)


async def login(
    *,
    db: AsyncSession,
    settings: Settings,
    limiter: LoginLimiter,
    email: str,
    password: str,
    ip_address: str | None = None,
    user_agent: str | None = None,
) -> SignedIn:
    """Sign in with email and password. An unknown email, a wrong password and a deactivated
    account give the same UNAUTHENTICATED error after the same bcrypt work; too many recent
    failures (or attempts in flight) for the account or the address give RATE_LIMITED."""
    # No stored address is longer than 320 characters; a longer one is kept short in the log.
    attempted = account_key(email)[:MAX_EMAIL_LENGTH]
    # Counted before the password check, so concurrent attempts cannot exceed the limit.
    attempt = await limiter.reserve(
        db=db, email=attempted, ip_address=ip_address, user_agent=user_agent
    )
    user = (
        await find_user_by_email(db=db, email=attempted)
        if len(email.strip()) <= MAX_EMAIL_LENGTH
        else None
    )
    # End the transaction: the connection goes back to the pool during bcrypt.
    await db.commit()
    password_matches = await verify_password(
        password,
        user.password_hash if user is not None else None,
        dummy_rounds=settings.atlas_bcrypt_rounds,
    )
    if user is None or not password_matches or not user.is_active:
        reason = (
            "unknown_email"
            if user is None
            else "wrong_password"
            if not password_matches
            else "inactive"
        )
        # The reservation stands as the failure.
        await settle_attempt(
            db=db,
            attempt=attempt,
            action=LOGIN_FAILED_ACTION,
            user_id=user.id if user is not None else None,
            entity_type="User" if user is not None else None,
            entity_id=user.id if user is not None else None,
            details={"email": attempted, "reason": reason},
        )
        await db.commit()
        raise Unauthenticated(LOGIN_REFUSED_MESSAGE)
    tokens = await start_session(
        db=db, settings=settings, user_id=user.id, ip_address=ip_address, user_agent=user_agent
    )
    user.last_login_at = datetime.now(UTC)
    await settle_attempt(
        db=db,
        attempt=attempt,
        action="auth.login",
        user_id=user.id,
        entity_type="Session",
        entity_id=tokens.session_id,
    )
    await db.commit()
    await limiter.release(attempt)
    await db.refresh(user)
    return SignedIn(user=user, tokens=tokens)


async def refresh(
    *,
    db: AsyncSession,
    settings: Settings,
    refresh_token: str,
    ip_address: str | None = None,
    user_agent: str | None = None,
) -> SignedIn:
    """Rotate a refresh token (see `sessions.refresh_session`)."""
    refreshed = await refresh_session(
        db=db,
        settings=settings,
        refresh_token=refresh_token,
        ip_address=ip_address,
        user_agent=user_agent,
    )
    return SignedIn(user=refreshed.user, tokens=refreshed.tokens)


async def logout(
    *,
    db: AsyncSession,
    viewer: Viewer,
    refresh_token: str | None = None,
    all_sessions: bool = False,
    ip_address: str | None = None,
    user_agent: str | None = None,
) -> bool:
    """End the viewer's current session (or the session of `refresh_token`, when it is one
    of the viewer's), or every session of the viewer with `all_sessions`. Access tokens of
    ended sessions stop working at once."""
    if all_sessions:
        revoked = await revoke_sessions(db=db, user_id=viewer.user_id, reason="logout_all")
    else:
        session_id = viewer.session_id
        if refresh_token:
            owner = (
                await db.execute(
                    sa.select(col(RefreshToken.session_id)).where(
                        col(RefreshToken.token_hash) == hash_token(refresh_token),
                        col(RefreshToken.user_id) == viewer.user_id,
                    )
                )
            ).scalar_one_or_none()
            if owner is None:
                raise BadInput("This refresh token is not one of yours.", field="refreshToken")
            session_id = owner
        revoked = await revoke_sessions(db=db, session_ids=[session_id], reason="logout")
    record_activity(
        db=db,
        action="auth.logout",
        user_id=viewer.user_id,
        entity_type="Session",
        entity_id=viewer.session_id,
        ip_address=ip_address,
        user_agent=user_agent,
        details={"allSessions": all_sessions, "sessionsEnded": len(revoked)},
    )
    await db.commit()
    return True


async def change_password(
    *,
    db: AsyncSession,
    settings: Settings,
    limiter: LoginLimiter,
    viewer: Viewer,
    current_password: str,
    new_password: str,
    ip_address: str | None = None,
    user_agent: str | None = None,
) -> bool:
    """Replace the viewer's password and end every other session of theirs. A wrong current
    password is BAD_USER_INPUT and counts as a failed sign-in (so it cannot be brute-forced
    around the login limits)."""
    validate_password(new_password, field="newPassword")
    user = await db.get(User, viewer.user_id)
    if user is None:
        raise Unauthenticated()
    attempt = await limiter.reserve(
        db=db,
        email=user.email,
        ip_address=ip_address,
        user_agent=user_agent,
        user_id=user.id,
    )
    # No transaction (and no pooled connection) is held during the two bcrypt calls.
    await db.commit()
    if not await verify_password(current_password, user.password_hash):
        await settle_attempt(
            db=db,
            attempt=attempt,
            action=LOGIN_FAILED_ACTION,
            user_id=user.id,
            entity_type="User",
            entity_id=user.id,
            details={"email": account_key(user.email), "reason": "wrong_current_password"},
        )
        await db.commit()
        raise BadInput("The current password is incorrect.", field="currentPassword")
    new_hash = await hash_password(new_password, rounds=settings.atlas_bcrypt_rounds)
    user.password_hash = new_hash
    revoked = await revoke_sessions(
        db=db, user_id=user.id, except_session_id=viewer.session_id, reason="password_change"
    )
    await settle_attempt(
        db=db,
        attempt=attempt,
        action="auth.password_change",
        user_id=user.id,
        entity_type="User",
        entity_id=user.id,
        details={"sessionsEnded": len(revoked)},
    )
    await db.commit()
    await limiter.release(attempt)
    return True


async def create_user(
    *,
    db: AsyncSession,
    settings: Settings,
    viewer: Viewer,
    email: str,
    password: str,
    name: str | None = None,
    roles: Sequence[RoleName] | None = None,
    ip_address: str | None = None,
    user_agent: str | None = None,
) -> User:
    """An administrator (MANAGE_USERS) creates an account; roles default to USER."""
    _require_permission(viewer, PermissionName.MANAGE_USERS)
    role_names = list(dict.fromkeys(roles)) if roles is not None else [RoleName.USER]
    user = await create_user_account(
        db=db,
        email=email,
        password=password,
        name=_clean_name(name),
        roles=role_names,
        bcrypt_rounds=settings.atlas_bcrypt_rounds,
    )
    record_activity(
        db=db,
        action="user.create",
        user_id=viewer.user_id,
        entity_type="User",
        entity_id=user.id,
        ip_address=ip_address,
        user_agent=user_agent,
        details={"email": user.email, "roles": [role.value for role in role_names]},
    )
    await db.commit()
    await db.refresh(user)
    return user


async def _user_for_update(db: AsyncSession, user_id: uuid.UUID) -> User:
    user = (
        await db.execute(sa.select(User).where(col(User.id) == user_id).with_for_update())
    ).scalar_one_or_none()
    if user is None:
        raise NotFound("No such user.")
    return user


async def update_user(
    *,
    db: AsyncSession,
    viewer: Viewer,
    user_id: uuid.UUID,
    name: str | None = None,
    is_active: bool | None = None,
    ip_address: str | None = None,
    user_agent: str | None = None,
) -> User:
    """Rename (an empty name clears it), deactivate or reactivate a user (MANAGE_USERS).
    Deactivation ends every session of the user at once; nobody deactivates themself."""
    _require_permission(viewer, PermissionName.MANAGE_USERS)
    if is_active is False and user_id == viewer.user_id:
        raise Conflict("You cannot deactivate your own account.", field="isActive")
    user = await _user_for_update(db, user_id)
    changes: dict[str, Any] = {}
    if name is not None:
        cleaned = _clean_name(name)
        if cleaned != user.name:
            user.name = cleaned
            changes["name"] = cleaned
    if is_active is not None and is_active != user.is_active:
        user.is_active = is_active
        changes["isActive"] = is_active
    if changes:
        action = "user.update"
        if changes.get("isActive") is False:
            action = "user.deactivate"
            revoked = await revoke_sessions(db=db, user_id=user.id, reason="user_deactivated")
            changes["sessionsEnded"] = len(revoked)
        record_activity(
            db=db,
            action=action,
            user_id=viewer.user_id,
            entity_type="User",
            entity_id=user.id,
            ip_address=ip_address,
            user_agent=user_agent,
            details={"changes": changes},
        )
    await db.commit()
    await db.refresh(user)
    return user


async def _role_id(db: ReadSession, role: RoleName) -> uuid.UUID:
    role_id = (
        await db.execute(sa.select(col(Role.id)).where(col(Role.name) == role.value))
    ).scalar_one_or_none()
    if role_id is None:
        raise BadInput("Unknown role; has the database been seeded?", field="role")
    return role_id


async def assign_role(
    *,
    db: AsyncSession,
    viewer: Viewer,
    user_id: uuid.UUID,
    role: RoleName,
    ip_address: str | None = None,
    user_agent: str | None = None,
) -> User:
    """Grant a global role (MANAGE_USERS); granting one the user holds changes nothing.
    Takes effect on the user's next request."""
    _require_permission(viewer, PermissionName.MANAGE_USERS)
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
        record_activity(
            db=db,
            action="role.assign",
            user_id=viewer.user_id,
            entity_type="User",
            entity_id=user.id,
            ip_address=ip_address,
            user_agent=user_agent,
            details={"role": role.value},
        )
    await db.commit()
    return user


async def revoke_role(
    *,
    db: AsyncSession,
    viewer: Viewer,
    user_id: uuid.UUID,
    role: RoleName,
    ip_address: str | None = None,
    user_agent: str | None = None,
) -> User:
    """Withdraw a global role (MANAGE_USERS); an administrator cannot withdraw their own
    ADMIN role (CONFLICT), so the last one cannot lock everybody out."""
    _require_permission(viewer, PermissionName.MANAGE_USERS)
    if user_id == viewer.user_id and role is RoleName.ADMIN:
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
        record_activity(
            db=db,
            action="role.revoke",
            user_id=viewer.user_id,
            entity_type="User",
            entity_id=user.id,
            ip_address=ip_address,
            user_agent=user_agent,
            details={"role": role.value},
        )
    await db.commit()
    return user


async def list_users(
    *,
    db: ReadSession,
    viewer: Viewer,
    request: PageRequest,
    search: str | None = None,
    role: RoleName | None = None,
    is_active: bool | None = None,
) -> Page[User]:
    """Users oldest first (MANAGE_USERS), filtered by a substring of email or name, a role
    and the active flag; keyset-paginated."""
    _require_permission(viewer, PermissionName.MANAGE_USERS)
    statement = sa.select(User)
    if search is not None and search.strip():
        if len(search) > MAX_SEARCH_LENGTH:
            raise BadInput(
                f"`search` must be at most {MAX_SEARCH_LENGTH} characters.", field="search"
            )
        escaped = search.strip().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = f"%{escaped}%"
        statement = statement.where(
            sa.or_(
                col(User.email).ilike(pattern, escape="\\"),
                col(User.name).ilike(pattern, escape="\\"),
            )
        )
    if role is not None:
        statement = statement.where(
            sa.exists()
            .where(col(UserRole.user_id) == col(User.id))
            .where(col(UserRole.role_id) == col(Role.id))
            .where(col(Role.name) == role.value)
        )
    if is_active is not None:
        statement = statement.where(col(User.is_active).is_(is_active))
    return await paginate(db, statement, ordering=USER_ORDERING, request=request)
