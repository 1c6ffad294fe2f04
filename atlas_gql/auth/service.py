"""Account rules: creating users, normalising and validating emails."""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from email_validator import EmailNotValidError, validate_email
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from atlas_gql.auth.models import Role, RoleName, User, UserRole
from atlas_gql.auth.passwords import hash_password
from atlas_gql.errors import BadInput, Conflict


def normalize_email(email: str, *, field: str = "email") -> str:
    """A syntactically valid address, domain lower-cased; BAD_USER_INPUT otherwise."""
    try:
        result = validate_email(email.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise BadInput(f"Invalid email address: {exc}", field=field) from None
    return result.normalized


async def find_user_by_email(*, db: AsyncSession, email: str) -> User | None:
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
) -> User:
    """Insert a user with hashed password and global roles; CONFLICT when the email is taken.
    The caller commits."""
    normalized = normalize_email(email)
    if name is not None and len(name.strip()) > 200:
        raise BadInput("The name must be at most 200 characters.", field="name")
    password_hash = await hash_password(password)
    if await find_user_by_email(db=db, email=normalized) is not None:
        raise Conflict("An account with this email already exists.", field="email")
    user = User(email=normalized, name=(name or "").strip() or None, password_hash=password_hash)
    db.add(user)
    await db.flush()
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
