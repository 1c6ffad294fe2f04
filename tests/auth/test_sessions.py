"""Sessions: refresh-token rotation and reuse detection, logout, password change."""

from __future__ import annotations

import jwt
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from atlas_gql.auth.tokens import hash_token
from tests.auth.conftest import ME, REFRESH, login, signed_in
from tests.conftest import SEED_PASSWORD, GraphQLClient, error_codes

LOGOUT = """
mutation Logout($token: String, $all: Boolean) {
  logout(refreshToken: $token, allSessions: $all)
}
"""

CHANGE_PASSWORD = """
mutation Change($current: String!, $new: String!) {
  changePassword(input: {currentPassword: $current, newPassword: $new})
}
"""


def session_id_of(access_token: str) -> str:
    claims = jwt.decode(access_token, options={"verify_signature": False})
    return str(claims["sid"])


async def refresh(gql: GraphQLClient, token: str) -> dict[str, object]:
    return await gql(REFRESH, {"token": token})


async def test_refresh_rotates_tokens_in_the_same_session(gql: GraphQLClient) -> None:
    first = await signed_in(gql, "user@example.com", SEED_PASSWORD)
    body = await refresh(gql, first["refreshToken"])
    second = body["data"]["refreshSession"]  # type: ignore[index]
    assert second["refreshToken"] != first["refreshToken"]
    assert second["user"]["email"] == "user@example.com"
    assert session_id_of(second["accessToken"]) == session_id_of(first["accessToken"])
    assert (await gql(ME, token=second["accessToken"]))["data"]["me"]["email"]
    third = (await refresh(gql, second["refreshToken"]))["data"]["refreshSession"]  # type: ignore[index]
    assert third["refreshToken"] not in {first["refreshToken"], second["refreshToken"]}


async def test_reused_refresh_token_revokes_the_whole_session(
    gql: GraphQLClient, db: AsyncSession
) -> None:
    first = await signed_in(gql, "user@example.com", SEED_PASSWORD)
    second = (await refresh(gql, first["refreshToken"]))["data"]["refreshSession"]  # type: ignore[index]
    replay = await refresh(gql, first["refreshToken"])
    assert error_codes(replay) == ["UNAUTHENTICATED"]
    assert replay["data"] == {"refreshSession": None}
    # The newest tokens of that session stop working at once.
    assert error_codes(await gql(ME, token=second["accessToken"])) == ["UNAUTHENTICATED"]
    assert error_codes(await refresh(gql, second["refreshToken"])) == ["UNAUTHENTICATED"]
    session = (
        await db.execute(
            sa.text("SELECT revoked_at, revoked_reason FROM sessions WHERE id = :id"),
            {"id": session_id_of(first["accessToken"])},
        )
    ).one()
    assert session.revoked_at is not None
    assert session.revoked_reason == "refresh_token_reuse"
    logged = (
        await db.execute(
            sa.text(
                "SELECT entity_type, entity_id, ip_address FROM activity_logs "
                "WHERE action = 'auth.refresh_reuse_detected'"
            )
        )
    ).one()
    assert logged.entity_type == "Session"
    assert logged.entity_id == session_id_of(first["accessToken"])
    assert logged.ip_address == "203.0.113.7"


async def test_other_sessions_survive_a_reuse(gql: GraphQLClient) -> None:
    stolen = await signed_in(gql, "user@example.com", SEED_PASSWORD)
    other = await signed_in(gql, "user@example.com", SEED_PASSWORD)
    await refresh(gql, stolen["refreshToken"])
    await refresh(gql, stolen["refreshToken"])
    assert (await gql(ME, token=other["accessToken"]))["data"]["me"]["email"]


async def test_unknown_expired_and_revoked_refresh_tokens_are_refused(
    gql: GraphQLClient, db: AsyncSession
) -> None:
    assert error_codes(await refresh(gql, "made-up-token")) == ["UNAUTHENTICATED"]
    expiring = await signed_in(gql, "user@example.com", SEED_PASSWORD)
    await db.execute(
        sa.text(
            "UPDATE refresh_tokens SET expires_at = now() - interval '1 second' "
            "WHERE token_hash = :hash"
        ),
        {"hash": hash_token(expiring["refreshToken"])},
    )
    await db.commit()
    assert error_codes(await refresh(gql, expiring["refreshToken"])) == ["UNAUTHENTICATED"]
    logged_out = await signed_in(gql, "user@example.com", SEED_PASSWORD)
    assert (await gql(LOGOUT, token=logged_out["accessToken"]))["data"] == {"logout": True}
    assert error_codes(await refresh(gql, logged_out["refreshToken"])) == ["UNAUTHENTICATED"]


async def test_refresh_tokens_are_stored_only_as_hashes(
    gql: GraphQLClient, db: AsyncSession
) -> None:
    payload = await signed_in(gql, "user@example.com", SEED_PASSWORD)
    rotated = (await refresh(gql, payload["refreshToken"]))["data"]["refreshSession"]  # type: ignore[index]
    rows = (
        await db.execute(
            sa.text(
                "SELECT token_hash, used_at FROM refresh_tokens WHERE session_id = :sid "
                "ORDER BY created_at, used_at NULLS LAST"
            ),
            {"sid": session_id_of(payload["accessToken"])},
        )
    ).all()
    stored = {row.token_hash for row in rows}
    assert stored == {hash_token(payload["refreshToken"]), hash_token(rotated["refreshToken"])}
    dump = str((await db.execute(sa.text("SELECT * FROM refresh_tokens"))).all())
    dump += str((await db.execute(sa.text("SELECT * FROM sessions"))).all())
    for token in (payload["refreshToken"], rotated["refreshToken"]):
        assert token not in dump
    used = {row.token_hash: row.used_at for row in rows}
    assert used[hash_token(payload["refreshToken"])] is not None
    assert used[hash_token(rotated["refreshToken"])] is None


async def test_logout_ends_the_access_token_at_once(gql: GraphQLClient, db: AsyncSession) -> None:
    payload = await signed_in(gql, "user@example.com", SEED_PASSWORD)
    other = await signed_in(gql, "user@example.com", SEED_PASSWORD)
    assert (await gql(LOGOUT, token=payload["accessToken"]))["data"] == {"logout": True}
    assert error_codes(await gql(ME, token=payload["accessToken"])) == ["UNAUTHENTICATED"]
    assert (await gql(ME, token=other["accessToken"]))["data"]["me"]["email"]
    row = (
        await db.execute(
            sa.text(
                "SELECT user_id, entity_id, details FROM activity_logs WHERE action = 'auth.logout'"
            )
        )
    ).one()
    assert row.entity_id == session_id_of(payload["accessToken"])
    assert row.details == {"allSessions": False, "sessionsEnded": 1}


async def test_logout_all_sessions(gql: GraphQLClient) -> None:
    sessions = [await signed_in(gql, "pm@example.com", SEED_PASSWORD) for _ in range(3)]
    bystander = await signed_in(gql, "user@example.com", SEED_PASSWORD)
    body = await gql(LOGOUT, {"all": True}, token=sessions[0]["accessToken"])
    assert body["data"] == {"logout": True}
    for session in sessions:
        assert error_codes(await gql(ME, token=session["accessToken"])) == ["UNAUTHENTICATED"]
        assert error_codes(await refresh(gql, session["refreshToken"])) == ["UNAUTHENTICATED"]
    assert (await gql(ME, token=bystander["accessToken"]))["data"]["me"]["email"]


async def test_logout_of_another_session_by_its_refresh_token(gql: GraphQLClient) -> None:
    phone = await signed_in(gql, "pm@example.com", SEED_PASSWORD)
    laptop = await signed_in(gql, "pm@example.com", SEED_PASSWORD)
    stranger = await signed_in(gql, "user@example.com", SEED_PASSWORD)
    body = await gql(LOGOUT, {"token": phone["refreshToken"]}, token=laptop["accessToken"])
    assert body["data"] == {"logout": True}
    assert error_codes(await gql(ME, token=phone["accessToken"])) == ["UNAUTHENTICATED"]
    assert (await gql(ME, token=laptop["accessToken"]))["data"]["me"]["email"]
    # Someone else's refresh token is not yours to end.
    body = await gql(LOGOUT, {"token": stranger["refreshToken"]}, token=laptop["accessToken"])
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert (await gql(ME, token=stranger["accessToken"]))["data"]["me"]["email"]


async def test_logout_and_change_password_need_a_viewer(gql: GraphQLClient) -> None:
    assert error_codes(await gql(LOGOUT)) == ["UNAUTHENTICATED"]
    body = await gql(CHANGE_PASSWORD, {"current": SEED_PASSWORD, "new": "a-new-password-1"})
    assert error_codes(body) == ["UNAUTHENTICATED"]


async def test_change_password_ends_every_other_session(
    gql: GraphQLClient, db: AsyncSession
) -> None:
    current = await signed_in(gql, "pm@example.com", SEED_PASSWORD)
    other = await signed_in(gql, "pm@example.com", SEED_PASSWORD)
    body = await gql(
        CHANGE_PASSWORD,
        {"current": SEED_PASSWORD, "new": "brand-new-password-9"},
        token=current["accessToken"],
    )
    assert body["data"] == {"changePassword": True}
    assert (await gql(ME, token=current["accessToken"]))["data"]["me"]["email"]
    assert error_codes(await gql(ME, token=other["accessToken"])) == ["UNAUTHENTICATED"]
    assert error_codes(await refresh(gql, other["refreshToken"])) == ["UNAUTHENTICATED"]
    assert await signed_in(gql, "pm@example.com", "brand-new-password-9")
    old = await login(gql, "pm@example.com", SEED_PASSWORD)
    assert error_codes(old) == ["UNAUTHENTICATED"]
    row = (
        await db.execute(
            sa.text("SELECT details FROM activity_logs WHERE action = 'auth.password_change'")
        )
    ).one()
    assert row.details == {"sessionsEnded": 1}


async def test_change_password_refuses_wrong_current_and_unfit_new(
    gql: GraphQLClient, db: AsyncSession
) -> None:
    session = await signed_in(gql, "pm@example.com", SEED_PASSWORD)
    wrong = await gql(
        CHANGE_PASSWORD,
        {"current": "not-my-password", "new": "brand-new-password-9"},
        token=session["accessToken"],
    )
    assert error_codes(wrong) == ["BAD_USER_INPUT"]
    assert wrong["errors"][0]["extensions"]["field"] == "currentPassword"
    short = await gql(
        CHANGE_PASSWORD, {"current": SEED_PASSWORD, "new": "short"}, token=session["accessToken"]
    )
    assert error_codes(short) == ["BAD_USER_INPUT"]
    assert short["errors"][0]["extensions"]["field"] == "newPassword"
    assert await signed_in(gql, "pm@example.com", SEED_PASSWORD)
    failed = (
        await db.execute(
            sa.text("SELECT details FROM activity_logs WHERE action = 'auth.login_failed'")
        )
    ).scalar_one()
    assert failed == {"email": "pm@example.com", "reason": "wrong_current_password"}
