"""Signing in: tokens, `me`, bad tokens, no account enumeration, activity rows."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import bcrypt
import jwt
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from atlas_gql.auth.account import find_user_by_email
from atlas_gql.auth.sessions import start_session
from atlas_gql.auth.tokens import issue_access_token
from atlas_gql.config import Settings
from tests.auth.conftest import ME, login, signed_in
from tests.conftest import SEED_PASSWORD, GraphQLClient, error_codes

REFUSED = "Invalid email or password."


async def test_seeded_admin_logs_in_and_me_shows_roles_and_permissions(
    gql: GraphQLClient,
) -> None:
    payload = await signed_in(gql, "admin@example.com", SEED_PASSWORD)
    assert payload["user"]["email"] == "admin@example.com"
    assert payload["refreshToken"]
    assert payload["accessToken"]
    body = await gql(ME, token=payload["accessToken"])
    me = body["data"]["me"]
    assert me["email"] == "admin@example.com"
    assert [role["name"] for role in me["roles"]] == ["ADMIN"]
    assert sorted(me["permissions"]) == ["CREATE_PROJECT", "MANAGE_USERS", "USE_AI"]


async def test_login_email_is_case_insensitive(gql: GraphQLClient) -> None:
    payload = await signed_in(gql, "  USER@Example.COM ", SEED_PASSWORD)
    assert payload["user"]["email"] == "user@example.com"


async def test_me_is_null_without_token(gql: GraphQLClient) -> None:
    assert await gql(ME) == {"data": {"me": None}}


async def test_access_token_claims_and_lifetime(gql: GraphQLClient, settings: Settings) -> None:
    payload = await signed_in(gql, "user@example.com", SEED_PASSWORD)
    header = jwt.get_unverified_header(payload["accessToken"])
    claims = jwt.decode(payload["accessToken"], options={"verify_signature": False})
    assert header["alg"] == "HS256"
    assert {"exp", "iat", "iss", "aud", "sub", "sid", "typ"} <= claims.keys()
    assert 0 < claims["exp"] - claims["iat"] <= 3600
    assert claims["exp"] - claims["iat"] == settings.atlas_access_token_ttl
    expires_at = datetime.fromisoformat(payload["accessTokenExpiresAt"])
    assert expires_at.timestamp() == claims["exp"]


def _unsigned(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        raw = json.dumps(value).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


async def test_malformed_forged_none_and_expired_tokens_are_unauthenticated(
    gql: GraphQLClient, db: AsyncSession, settings: Settings
) -> None:
    user = await find_user_by_email(db=db, email="user@example.com")
    assert user is not None
    tokens = await start_session(db=db, settings=settings, user_id=user.id)
    await db.commit()
    claims = jwt.decode(tokens.access_token, options={"verify_signature": False})
    forged = jwt.encode(claims, "not-the-server-secret-" + "y" * 30, algorithm="HS256")
    expired, _ = issue_access_token(
        settings=settings,
        user_id=user.id,
        session_id=tokens.session_id,
        now=datetime.now(UTC) - timedelta(hours=2),
    )
    wrong_audience = jwt.encode(
        {**claims, "aud": "someone-else"}, settings.atlas_jwt_secret, algorithm="HS256"
    )
    for bad in ["not-a-jwt", forged, _unsigned(claims), expired, wrong_audience]:
        body = await gql(ME, token=bad)
        assert error_codes(body) == ["UNAUTHENTICATED"], (bad, body)
        assert body["data"] == {"me": None}
    assert (await gql(ME, token=tokens.access_token))["data"]["me"]["id"]


async def test_unknown_email_and_wrong_password_give_identical_errors(
    gql: GraphQLClient, db: AsyncSession
) -> None:
    unknown = await login(gql, f"nobody-{uuid.uuid4().hex[:8]}@example.com", SEED_PASSWORD)
    wrong = await login(gql, "admin@example.com", "wrong-password-123")
    assert unknown["data"] == wrong["data"] == {"login": None}
    assert unknown["errors"][0]["message"] == wrong["errors"][0]["message"] == REFUSED
    assert unknown["errors"][0]["extensions"] == wrong["errors"][0]["extensions"]
    assert unknown["errors"][0]["extensions"] == {"code": "UNAUTHENTICATED"}
    absurd = await login(gql, "x" * 5000 + "@example.com", "whatever-password")
    assert absurd["errors"][0]["message"] == REFUSED
    assert absurd["errors"][0]["extensions"] == {"code": "UNAUTHENTICATED"}


async def test_unknown_email_and_wrong_password_cost_the_same_check(
    make_gql: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Same time either way, said without a clock: each refused attempt spends exactly one
    # bcrypt check, at the cost of the server's own hashes (a real hash or the dummy one).
    # The times themselves are measured by bench/login_timing.py.
    checks: list[int] = []
    real_checkpw = bcrypt.checkpw

    def counted_checkpw(password: bytes, hashed: bytes) -> bool:
        checks.append(int(hashed.split(b"$")[2]))  # "$2b$<cost>$<salt+hash>"
        return real_checkpw(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counted_checkpw)
    gql = await make_gql(atlas_login_max_failures=100)
    settings = Settings(_env_file=None)
    costs = {}
    for label, email in (
        ("unknown", f"ghost-{uuid.uuid4().hex[:6]}@example.com"),
        ("wrong password", "pm@example.com"),
    ):
        checks.clear()
        body = await login(gql, email, "wrong-password-1")
        assert error_codes(body) == ["UNAUTHENTICATED"]
        costs[label] = list(checks)
    assert costs == {
        "unknown": [settings.atlas_bcrypt_rounds],
        "wrong password": [settings.atlas_bcrypt_rounds],
    }


async def test_deactivated_user_cannot_log_in(
    gql: GraphQLClient, db: AsyncSession, sign_in: Any
) -> None:
    user = await find_user_by_email(db=db, email="pm@example.com")
    assert user is not None
    await db.execute(sa.text("UPDATE users SET is_active = false WHERE id = :id"), {"id": user.id})
    await db.commit()
    body = await login(gql, "pm@example.com", SEED_PASSWORD)
    assert error_codes(body) == ["UNAUTHENTICATED"]
    assert body["errors"][0]["message"] == REFUSED


async def test_login_activity_rows_hold_address_agent_and_never_the_password(
    gql: GraphQLClient, db: AsyncSession
) -> None:
    ghost = f"ghost-{uuid.uuid4().hex[:8]}@example.com"
    await login(gql, ghost, "the-secret-attempt")
    await login(gql, "user@example.com", "another-secret-attempt")
    payload = await signed_in(gql, "user@example.com", SEED_PASSWORD)
    rows = (
        await db.execute(
            sa.text(
                "SELECT action, user_id, entity_type, entity_id, ip_address, user_agent, details "
                "FROM activity_logs WHERE action LIKE 'auth.login%' ORDER BY created_at, action"
            )
        )
    ).all()
    failed = [row for row in rows if row.action == "auth.login_failed"]
    succeeded = [row for row in rows if row.action == "auth.login"]
    assert len(failed) == 2
    assert len(succeeded) == 1
    by_email = {row.details["email"]: row for row in failed}
    assert by_email[ghost].user_id is None
    user_row = by_email["user@example.com"]
    assert user_row.user_id is not None
    assert succeeded[0].user_id == user_row.user_id
    claims = jwt.decode(payload["accessToken"], options={"verify_signature": False})
    assert succeeded[0].entity_type == "Session"
    assert succeeded[0].entity_id == claims["sid"]
    for row in rows:
        assert row.ip_address == "203.0.113.7"
        assert row.user_agent
        assert "python-httpx" in row.user_agent
    assert "secret-attempt" not in str([row.details for row in rows])
    last_login = (
        await db.execute(
            sa.text("SELECT last_login_at FROM users WHERE email = 'user@example.com'")
        )
    ).scalar_one()
    assert last_login is not None
