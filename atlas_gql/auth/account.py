"""A person's own account: registration, sign-in, token refresh, sign-out, password change;
and the account primitives the admin rules and the CLI share.

Transactions: the work of a successful call joins the operation's session (`db`), which the
operation boundary commits. What must hold even though the operation fails runs in short
transactions of its own (`execute_transaction` on `sessionmaker`): the login limiter's
attempt rows and their failure outcome, and the session revoked on refresh-token reuse. No
transaction, and no pooled connection, is held while bcrypt runs.

Size: a little over 400 lines on purpose: the account's commands share the sign-in
primitives (password check against a dummy hash, limiter reservations, token issue) and must
time and fail alike; admin.py already holds what administrators do."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import sqlalchemy as sa
from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from atlas_gql.auth import buckets
from atlas_gql.auth.actor import Actor
from atlas_gql.auth.models import RefreshToken, Role, RoleName, User, UserRole
from atlas_gql.auth.passwords import (
    BCRYPT_ROUNDS,
    hash_password,
    validate_password,
    verify_password,
)
from atlas_gql.auth.ratelimit import (
    LOGIN_FAILED_ACTION,
    LoginAttempt,
    LoginLimiter,
    account_key,
    settle_attempt,
)
from atlas_gql.auth.sessions import IssuedTokens, refresh_session, revoke_sessions, start_session
from atlas_gql.auth.tokens import hash_token
from atlas_gql.config import TEXT_LIMITS, RegistrationMode, Settings
from atlas_gql.db.inputs import Command, check_length
from atlas_gql.db.session import ReadSession, after_commit, stored
from atlas_gql.db.utils import execute_transaction
from atlas_gql.errors import BadInput, Conflict, Forbidden, Unauthenticated

LOGIN_REFUSED_MESSAGE = "Invalid email or password."
REGISTRATION_CLOSED_MESSAGE = (
    "Registration is closed on this server; ask an administrator for an account."
)
REGISTRATION_LIMITED_MESSAGE = "Too many new accounts; try again later."
EMAIL_TAKEN_MESSAGE = "An account with this email already exists."


def normalize_email(email: str, *, field: str = "email") -> str:
    """A syntactically valid address, domain lower-cased; BAD_USER_INPUT otherwise."""
    try:
        result = validate_email(email.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise BadInput(f"Invalid email address: {exc}", field=field) from None
    return result.normalized


def clean_display_name(name: str | None) -> str | None:
    """A display name trimmed (blank becomes null), at most 200 characters."""
    cleaned = (name or "").strip() or None
    if cleaned is not None and len(cleaned) > TEXT_LIMITS.name:
        raise BadInput(f"The name must be at most {TEXT_LIMITS.name} characters.", field="name")
    return cleaned


DisplayName = Annotated[str | None, AfterValidator(clean_display_name)]


class Registration(Command):
    email: str
    password: str
    name: DisplayName = None


class Credentials(Command):
    email: str
    password: str


class PasswordChange(Command):
    current_password: str
    new_password: str


@dataclass(frozen=True)
class SignedIn:
    """A user and the tokens of the session just opened for them."""

    user: User
    tokens: IssuedTokens


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
    approved: bool = True,
) -> User:
    """Insert a user with hashed password and global roles (approved now, unless `approved`
    is false: a registration awaiting approval); CONFLICT when the email is taken. The
    password is hashed before the email is looked up, so a taken email costs the same bcrypt
    work as a free one. Flushes; the caller's transaction commits."""
    normalized = normalize_email(email)
    name = clean_display_name(name)
    password_hash = await hash_password(password, rounds=bcrypt_rounds)
    if await find_user_by_email(db=db, email=normalized) is not None:
        raise Conflict(EMAIL_TAKEN_MESSAGE, field="email")
    user = User(
        email=normalized,
        name=name,
        password_hash=password_hash,
        approved_at=datetime.now(UTC) if approved else None,
    )
    try:
        async with db.begin_nested():
            db.add(user)
            await db.flush()
    except IntegrityError:
        # Another request registered the same address between the check and the insert.
        raise Conflict(EMAIL_TAKEN_MESSAGE, field="email") from None
    role_names = [role.value for role in roles]
    if role_names:
        role_ids = (
            (await db.execute(sa.select(col(Role.id)).where(col(Role.name).in_(role_names))))
            .scalars()
            .all()
        )
        if len(role_ids) != len(set(role_names)):
            raise BadInput("Unknown role; has the database been seeded?", field="role")
        await db.execute(
            insert(UserRole)
            .values([{"user_id": user.id, "role_id": role_id} for role_id in role_ids])
            .on_conflict_do_nothing(index_elements=["user_id", "role_id"])
        )
    return user


async def _open_session(
    db: AsyncSession, *, settings: Settings, actor: Actor, user: User
) -> IssuedTokens:
    tokens = await start_session(db=db, settings=settings, user_id=user.id, actor=actor)
    await db.execute(
        sa.update(User).where(col(User.id) == user.id).values(last_login_at=datetime.now(UTC))
    )
    return tokens


def registration_buckets(settings: Settings, actor: Actor) -> list[buckets.Bucket]:
    """What one registration takes: a token of its address's bucket and of the global one."""
    hour = 3600
    taken = [
        buckets.Bucket.per_period(
            "register:all", settings.atlas_registrations_per_hour_global, hour
        )
    ]
    if actor.ip_address:
        taken.append(
            buckets.Bucket.per_period(
                f"register:ip:{actor.ip_address}", settings.atlas_registrations_per_hour, hour
            )
        )
    return taken


async def register(
    *,
    db: AsyncSession,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    actor: Actor,
    data: Registration,
) -> SignedIn:
    """Create an account and sign it in. ATLAS_REGISTRATION decides: `open` gives it the USER
    role, `approval` no role until an administrator approves it (it signs in, but may not use
    AI), `closed` refuses (FORBIDDEN). Cheap checks come first (the mode, the email's syntax,
    the password's length), then the limits per address and for everyone (RATE_LIMITED), and
    only then bcrypt; a taken email (CONFLICT) costs the same work as a free one."""
    mode = settings.registration_mode
    if mode is RegistrationMode.CLOSED:
        raise Forbidden(REGISTRATION_CLOSED_MESSAGE)
    normalize_email(data.email)
    validate_password(data.password)
    # Counted whatever comes of it (a taken email included), in a transaction of its own.
    await buckets.take(
        sessionmaker=sessionmaker,
        buckets=registration_buckets(settings, actor),
        message=REGISTRATION_LIMITED_MESSAGE,
    )
    approved = mode is RegistrationMode.OPEN
    user = await create_user_account(
        db=db,
        email=data.email,
        password=data.password,
        name=data.name,
        roles=(RoleName.USER,) if approved else (),
        bcrypt_rounds=settings.atlas_bcrypt_rounds,
        approved=approved,
    )
    tokens = await _open_session(db, settings=settings, actor=actor, user=user)
    actor.record(
        db,
        "auth.register",
        user,
        user_id=user.id,
        details={"email": user.email, **({} if approved else {"awaitingApproval": True})},
    )
    return SignedIn(user=await stored(db, user), tokens=tokens)


async def _refuse_attempt(
    sessionmaker: async_sessionmaker[AsyncSession],
    attempt: LoginAttempt,
    *,
    user: User | None,
    details: dict[str, str],
) -> None:
    """Store the attempt as a failure, in a transaction of its own: it must count although
    the operation fails."""
    await execute_transaction(
        sessionmaker,
        functools.partial(
            settle_attempt,
            attempt=attempt,
            action=LOGIN_FAILED_ACTION,
            user_id=user.id if user is not None else None,
            entity_type="User" if user is not None else None,
            entity_id=user.id if user is not None else None,
            details=details,
        ),
    )


async def _admit_attempt(
    db: AsyncSession,
    limiter: LoginLimiter,
    attempt: LoginAttempt,
    action: str,
    user: User,
    *,
    entity: tuple[str, uuid.UUID] | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Turn the attempt into its success row (`action`) in the operation's transaction, and
    give its reservation back once that is committed."""
    entity_type, entity_id = entity or ("User", user.id)
    await settle_attempt(
        db,
        attempt=attempt,
        action=action,
        user_id=user.id,
        entity_type=entity_type,
        entity_id=entity_id,
        details=details,
    )
    after_commit(db, functools.partial(limiter.release, attempt))


async def login(
    *,
    db: AsyncSession,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    limiter: LoginLimiter,
    actor: Actor,
    data: Credentials,
) -> SignedIn:
    """Sign in with email and password. An unknown email, a wrong password and a deactivated
    account give the same UNAUTHENTICATED error after the same bcrypt work; too many recent
    failures (or attempts in flight) for the account or the address give RATE_LIMITED."""
    # No stored address is longer than 320 characters; a longer one is kept short in the log.
    attempted = account_key(data.email)[: TEXT_LIMITS.email]
    # Counted (committed) before the password check, so concurrent attempts cannot exceed
    # the limit.
    attempt = await limiter.reserve(sessionmaker=sessionmaker, email=attempted, actor=actor)
    user: User | None = None
    if len(data.email.strip()) <= TEXT_LIMITS.email:
        # A short read of its own: no connection is held during bcrypt.
        async with sessionmaker() as short:
            user = await find_user_by_email(db=short, email=attempted)
    password_matches = await verify_password(
        data.password,
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
        await _refuse_attempt(
            sessionmaker, attempt, user=user, details={"email": attempted, "reason": reason}
        )
        raise Unauthenticated(LOGIN_REFUSED_MESSAGE)
    tokens = await _open_session(db, settings=settings, actor=actor, user=user)
    await _admit_attempt(
        db, limiter, attempt, "auth.login", user, entity=("Session", tokens.session_id)
    )
    return SignedIn(user=user, tokens=tokens)


async def refresh(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    actor: Actor,
    refresh_token: str,
) -> SignedIn:
    """Rotate a refresh token, in a transaction of its own (see `sessions.refresh_session`)."""
    check_length(refresh_token, field="refreshToken", limit=TEXT_LIMITS.token)
    refreshed = await refresh_session(
        sessionmaker=sessionmaker,
        settings=settings,
        actor=actor,
        refresh_token=refresh_token,
    )
    return SignedIn(user=refreshed.user, tokens=refreshed.tokens)


async def logout(
    *,
    db: AsyncSession,
    actor: Actor,
    refresh_token: str | None = None,
    all_sessions: bool = False,
) -> bool:
    """End the viewer's current session (or the session of `refresh_token`, when it is one
    of the viewer's), or every session of the viewer with `all_sessions`. Access tokens of
    ended sessions stop working at once."""
    viewer = actor.viewer_required
    current_session_id = actor.require_session("end sessions")
    check_length(refresh_token, field="refreshToken", limit=TEXT_LIMITS.token)
    if all_sessions:
        revoked = await revoke_sessions(db=db, user_id=viewer.user_id, reason="logout_all")
    else:
        session_id = current_session_id
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
    actor.record(
        db,
        "auth.logout",
        ("Session", current_session_id),
        details={"allSessions": all_sessions, "sessionsEnded": len(revoked)},
    )
    return True


async def change_password(
    *,
    db: AsyncSession,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    limiter: LoginLimiter,
    actor: Actor,
    data: PasswordChange,
) -> bool:
    """Replace the viewer's password and end every other session of theirs. A wrong current
    password is BAD_USER_INPUT and counts as a failed sign-in (so it cannot be brute-forced
    around the login limits)."""
    viewer = actor.viewer_required
    session_id = actor.require_session("change passwords")
    validate_password(data.new_password, field="newPassword")
    async with sessionmaker() as short:  # no connection is held during bcrypt
        user = await short.get(User, viewer.user_id)
    if user is None:
        raise Unauthenticated()
    attempt = await limiter.reserve(
        sessionmaker=sessionmaker, email=user.email, actor=actor, user_id=user.id
    )
    if not await verify_password(data.current_password, user.password_hash):
        await _refuse_attempt(
            sessionmaker,
            attempt,
            user=user,
            details={"email": account_key(user.email), "reason": "wrong_current_password"},
        )
        raise BadInput("The current password is incorrect.", field="currentPassword")
    new_hash = await hash_password(data.new_password, rounds=settings.atlas_bcrypt_rounds)
    await db.execute(sa.update(User).where(col(User.id) == user.id).values(password_hash=new_hash))
    revoked = await revoke_sessions(
        db=db, user_id=user.id, except_session_id=session_id, reason="password_change"
    )
    await _admit_attempt(
        db, limiter, attempt, "auth.password_change", user, details={"sessionsEnded": len(revoked)}
    )
    return True
