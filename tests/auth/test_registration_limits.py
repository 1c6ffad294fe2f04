"""Registration (issue 10 parts 3 and 5): ATLAS_REGISTRATION open | approval | closed,
limits per address and for everyone counted before bcrypt, and a taken email answered the
same way, after the same work, whichever account it is."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncSession

from atlas_gql.auth import account
from atlas_gql.auth.passwords import hash_password
from tests.auth.conftest import REGISTER
from tests.conftest import GraphQLClient, error_codes

CREATE_ASSISTANT = 'mutation { createAssistant(input: {name: "Mine"}) { id } }'
APPROVE = "mutation($id: ID!) { approveUser(id: $id) { id approvedAt roles { name } } }"
PENDING = (
    "{ users(first: 50, filter: {awaitingApproval: true}) { edges { node { email approvedAt } } } }"
)


def fresh_email() -> str:
    return f"reg-{uuid.uuid4().hex[:10]}@example.com"


async def register(gql: GraphQLClient, email: str, password: str = "a-good-password") -> Any:
    return await gql(REGISTER, {"email": email, "password": password})


async def users_named(db: AsyncSession, email: str) -> int:
    statement = sa.text("SELECT count(*) FROM users WHERE lower(email) = lower(:email)")
    return int((await db.execute(statement, {"email": email})).scalar_one())


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The passwords `register` hashed (our own bcrypt wrapper, counted)."""
    calls: list[str] = []

    async def counting(password: str, **kwargs: Any) -> str:
        calls.append(password)
        return await hash_password(password, **kwargs)

    monkeypatch.setattr("atlas_gql.auth.account.hash_password", counting)
    return calls


async def test_closed_registration_is_forbidden_and_writes_nothing(
    make_gql: Any, db: AsyncSession, hashes: list[str]
) -> None:
    gql = await make_gql(atlas_registration="closed")
    email = fresh_email()
    body = await register(gql, email)
    assert error_codes(body) == ["FORBIDDEN"]
    assert "administrator" in body["errors"][0]["message"]
    assert await users_named(db, email) == 0
    assert hashes == []


async def test_under_approval_an_account_signs_in_but_may_not_use_ai_until_approved(
    make_gql: Any, db: AsyncSession, sign_in: Any
) -> None:
    gql = await make_gql(atlas_registration="approval", atlas_bcrypt_rounds=4)
    email = fresh_email()
    payload = (await register(gql, email))["data"]["register"]
    assert payload["user"]["roles"] == []
    assert payload["user"]["permissions"] == []
    token = payload["accessToken"]
    me = (await gql("{ me { email approvedAt permissions } }", token=token))["data"]["me"]
    assert me == {"email": email, "approvedAt": None, "permissions": []}
    assert error_codes(await gql(CREATE_ASSISTANT, token=token)) == ["FORBIDDEN"]
    admin = await sign_in("admin@example.com")
    pending = (await gql(PENDING, token=admin))["data"]["users"]["edges"]
    assert {"email": email, "approvedAt": None} in [edge["node"] for edge in pending]
    # Only MANAGE_USERS approves.
    user_id = payload["user"]["id"]
    assert error_codes(await gql(APPROVE, {"id": user_id}, token=token)) == ["FORBIDDEN"]
    approved = (await gql(APPROVE, {"id": user_id}, token=admin))["data"]["approveUser"]
    assert approved["roles"] == [{"name": "USER"}]
    assert approved["approvedAt"] is not None
    # Again: nothing changes.
    again = (await gql(APPROVE, {"id": user_id}, token=admin))["data"]["approveUser"]
    assert again["approvedAt"] == approved["approvedAt"]
    assert "errors" not in await gql(CREATE_ASSISTANT, token=token)
    actions = (
        await db.execute(
            sa.text(
                "SELECT action, details FROM activity_logs WHERE entity_id = :id "
                "AND action IN ('auth.register', 'user.approve') ORDER BY created_at"
            ),
            {"id": str(approved_id(user_id))},
        )
    ).all()
    assert [row.action for row in actions] == ["auth.register", "user.approve"]
    assert actions[0].details == {"email": email, "awaitingApproval": True}


def approved_id(global_id: str) -> uuid.UUID:
    from atlas_gql.ids import decode_global_id

    return decode_global_id(global_id)[1]


async def test_granting_a_role_approves_too(make_gql: Any, sign_in: Any) -> None:
    gql = await make_gql(atlas_registration="approval", atlas_bcrypt_rounds=4)
    payload = (await register(gql, fresh_email()))["data"]["register"]
    admin = await sign_in("admin@example.com")
    granted = await gql(
        "mutation($id: ID!) { assignRole(userId: $id, role: PROJECT_MANAGER) "
        "{ approvedAt permissions } }",
        {"id": payload["user"]["id"]},
        token=admin,
    )
    user = granted["data"]["assignRole"]
    assert user["approvedAt"] is not None
    assert "USE_AI" in user["permissions"]


async def test_open_registration_is_approved_at_once(make_gql: Any) -> None:
    gql = await make_gql(atlas_registration="open", atlas_bcrypt_rounds=4)
    payload = (await register(gql, fresh_email()))["data"]["register"]
    assert payload["user"]["permissions"] == ["USE_AI"]
    me = await gql("{ me { approvedAt } }", token=payload["accessToken"])
    assert me["data"]["me"]["approvedAt"] is not None


async def test_registrations_per_address_are_limited_before_bcrypt(
    make_gql: Any, db: AsyncSession, hashes: list[str]
) -> None:
    limits = {"atlas_registrations_per_hour": 2, "atlas_bcrypt_rounds": 4}
    gql = await make_gql(ip="198.51.100.31", **limits)
    assert "errors" not in await register(gql, fresh_email())
    # A taken email counts as well: enumerating costs the same tokens as registering.
    assert error_codes(await register(gql, "user@example.com")) == ["CONFLICT"]
    hashed = len(hashes)
    email = fresh_email()
    limited = await register(gql, email)
    assert error_codes(limited) == ["RATE_LIMITED"]
    assert 0 < limited["errors"][0]["extensions"]["retryAfter"] <= 3600
    assert await users_named(db, email) == 0
    assert len(hashes) == hashed  # refused before bcrypt
    # Bad input is refused before the limit is even asked (and is not counted).
    assert error_codes(await register(gql, "not-an-email")) == ["BAD_USER_INPUT"]
    assert error_codes(await register(gql, fresh_email(), "short")) == ["BAD_USER_INPUT"]
    assert len(hashes) == hashed
    # Another address is not limited.
    elsewhere = await make_gql(ip="198.51.100.32", **limits)
    assert "errors" not in await register(elsewhere, email)


async def test_registrations_of_every_address_together_are_capped(
    make_gql: Any, db: AsyncSession
) -> None:
    limits = {
        "atlas_registrations_per_hour_global": 3,
        "atlas_registrations_per_hour": 100,
        "atlas_bcrypt_rounds": 4,
    }
    bodies = []
    for index in range(5):
        gql = await make_gql(ip=f"203.0.113.{60 + index}", **limits)
        bodies.append(await register(gql, fresh_email()))
    assert [error_codes(body) or ["OK"] for body in bodies] == [["OK"]] * 3 + [["RATE_LIMITED"]] * 2
    assert bodies[3]["errors"][0]["message"] == "Too many new accounts; try again later."


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    taken=st.sampled_from(["admin@example.com", "user@example.com", "pm@example.com"]),
    spelling=st.sampled_from(["lower", "upper", "title", "padded"]),
    password=st.text(
        alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]),
        min_size=8,
        max_size=20,
    ).filter(lambda text: len(text.encode()) <= 72 and "\x00" not in text),
)
async def test_a_taken_email_gets_one_answer_after_the_same_work(
    gql: GraphQLClient, hashes: list[str], taken: str, spelling: str, password: str
) -> None:
    """Whichever account, however it is spelled: the same CONFLICT shape (the code, the
    field, the message, no data), after the same bcrypt work as a free email."""
    email = {
        "lower": taken,
        "upper": taken.upper(),
        "title": taken.title(),
        "padded": f"  {taken} ",
    }[spelling]
    before = len(hashes)
    body = await register(gql, email, password)
    body.pop("extensions", None)  # the response's own request id
    assert body == {
        "data": {"register": None},
        "errors": [
            {
                "message": account.EMAIL_TAKEN_MESSAGE,
                "locations": body["errors"][0]["locations"],
                "path": ["register"],
                "extensions": {"code": "CONFLICT", "field": "email"},
            }
        ],
    }
    # One bcrypt hash, as for a free email (whose registration hashes once too).
    assert len(hashes) == before + 1
