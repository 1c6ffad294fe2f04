"""Registration: a USER account, input checks, nothing half-written."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from tests.auth.conftest import ME, REGISTER, signed_in
from tests.conftest import GraphQLClient, error_codes


def fresh_email() -> str:
    return f"new-{uuid.uuid4().hex[:10]}@example.com"


async def users_named(db: AsyncSession, email: str) -> int:
    statement = sa.text("SELECT count(*) FROM users WHERE lower(email) = lower(:email)")
    return int((await db.execute(statement, {"email": email})).scalar_one())


async def register(gql: GraphQLClient, email: str, password: str, **extra: Any) -> dict[str, Any]:
    return await gql(REGISTER, {"email": email, "password": password, **extra})


async def test_register_gives_a_signed_in_user(gql: GraphQLClient, db: AsyncSession) -> None:
    email = fresh_email()
    body = await register(gql, email, "a-good-password", name="  Ada  ")
    payload = body["data"]["register"]
    assert payload["user"]["email"] == email
    assert payload["user"]["name"] == "Ada"
    assert [role["name"] for role in payload["user"]["roles"]] == ["USER"]
    assert payload["user"]["permissions"] == ["USE_AI"]
    me = (await gql(ME, token=payload["accessToken"]))["data"]["me"]
    assert me["email"] == email
    assert await signed_in(gql, email.upper(), "a-good-password")
    row = (
        await db.execute(
            sa.text(
                "SELECT user_id, entity_id, ip_address, details FROM activity_logs "
                "WHERE action = 'auth.register'"
            )
        )
    ).one()
    assert str(row.user_id) == row.entity_id
    assert row.details == {"email": email}
    assert row.ip_address == "203.0.113.7"
    stored = (
        await db.execute(sa.text("SELECT password_hash FROM users WHERE email = :e"), {"e": email})
    ).scalar_one()
    assert stored.startswith("$2b$")
    assert "a-good-password" not in stored


async def test_same_email_in_other_case_is_a_conflict(gql: GraphQLClient, db: AsyncSession) -> None:
    body = await register(gql, "ADMIN@EXAMPLE.COM", "a-good-password")
    assert error_codes(body) == ["CONFLICT"]
    assert body["errors"][0]["extensions"]["field"] == "email"
    email = fresh_email()
    assert "errors" not in await register(gql, email, "a-good-password")
    again = await register(gql, email.replace("new-", "NEW-"), "another-password")
    assert error_codes(again) == ["CONFLICT"]
    assert await users_named(db, email) == 1


async def test_short_password_and_malformed_email_are_bad_input(
    gql: GraphQLClient, db: AsyncSession
) -> None:
    email = fresh_email()
    short = await register(gql, email, "abc")
    assert error_codes(short) == ["BAD_USER_INPUT"]
    assert short["errors"][0]["extensions"]["field"] == "password"
    for malformed in ["not-an-email", "a@b", "two@@example.com", ""]:
        body = await register(gql, malformed, "a-good-password")
        assert error_codes(body) == ["BAD_USER_INPUT"], malformed
        assert body["errors"][0]["extensions"]["field"] == "email"
    assert await users_named(db, email) == 0


async def test_password_over_72_bytes_is_refused_not_truncated(
    gql: GraphQLClient, db: AsyncSession
) -> None:
    email = fresh_email()
    # 52 two-byte characters: 52 characters, 104 bytes in UTF-8.
    long_password = "é" * 52
    assert len(long_password.encode()) == 104
    body = await register(gql, email, long_password)
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert "72 bytes" in body["errors"][0]["message"]
    assert await users_named(db, email) == 0
    # Exactly 72 bytes is fine, and a longer password sharing those bytes does not sign in.
    exact = "é" * 36
    assert "errors" not in await register(gql, email, exact)
    login = await gql(
        "mutation($e: String!, $p: String!) { login(input: {email: $e, password: $p}) "
        "{ accessToken } }",
        {"e": email, "p": exact + "extra"},
    )
    assert error_codes(login) == ["UNAUTHENTICATED"]


async def test_failed_registration_leaves_no_rows(gql: GraphQLClient, db: AsyncSession) -> None:
    before = (
        await db.execute(
            sa.text("SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM sessions)")
        )
    ).one()
    await register(gql, fresh_email(), "short")
    await register(gql, "user@example.com", "a-good-password")
    await register(gql, fresh_email(), "a-good-password", name="x" * 201)
    after = (
        await db.execute(
            sa.text("SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM sessions)")
        )
    ).one()
    assert tuple(after) == tuple(before)
