"""Personal API keys over HTTP (docs/api-keys.md): create, list, revoke; `Bearer atlas_sk_…`
acting as the user narrowed by the key's scopes; refused keys; the compiled read path."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from atlas_gql.auth.account import create_user_account
from atlas_gql.auth.models import ApiKey, RoleName
from atlas_gql.ids import decode_id_of, encode_global_id
from tests.conftest import GraphQLClient, counting_statements, error_codes

CREATE = """
mutation($input: CreateApiKeyInput!) {
  createApiKey(input: $input) {
    secret
    apiKey { id name prefix scopes createdAt expiresAt lastUsedAt revokedAt user { email } }
  }
}
"""
LIST = """
query($userId: ID, $all: Boolean) {
  apiKeys(userId: $userId, includeRevoked: $all) {
    totalCount nodes { id name prefix scopes lastUsedAt revokedAt }
  }
}
"""
REVOKE = "mutation($id: ID!) { revokeApiKey(input: {id: $id}) { id revokedAt } }"
ME = "{ me { email } }"
PROJECTS = "{ projects(first: 5) { totalCount nodes { name } } }"
CREATE_PROJECT = 'mutation { createProject(input: {name: "By key"}) { name } }'
SEND = """
mutation($threadId: ID!) {
  sendMessage(input: {threadId: $threadId, content: "hi"}) { userMessage { id } }
}
"""
USERS = "{ users(first: 1) { totalCount } }"


async def create_key(
    gql: GraphQLClient, token: str, *, name: str = "ci", **fields: Any
) -> dict[str, Any]:
    body = await gql(CREATE, {"input": {"name": name, **fields}}, token=token)
    assert "errors" not in body, body
    created: dict[str, Any] = body["data"]["createApiKey"]
    return created


async def new_user(db: AsyncSession, *roles: RoleName) -> str:
    email = f"keys-{uuid.uuid4().hex[:10]}@example.com"
    await create_user_account(
        db=db,
        email=email,
        password="key-password-1",
        roles=roles or (RoleName.USER,),
        bcrypt_rounds=4,
    )
    await db.commit()
    return email


class TestCreate:
    async def test_the_secret_is_shown_once_and_stored_as_a_hash(
        self, gql: GraphQLClient, sign_in: Any, db: AsyncSession
    ) -> None:
        token = await sign_in("user@example.com")
        created = await create_key(gql, token, name="  laptop script  ")
        secret, key = created["secret"], created["apiKey"]
        assert secret.startswith("atlas_sk_")
        assert len(secret) == len("atlas_sk_") + 43
        assert key["prefix"] == secret[:17]
        assert key["name"] == "laptop script"
        # Omitted scopes: everything a USER may do (no ADMIN).
        assert key["scopes"] == ["READ", "WRITE", "USE_AI"]
        assert key["user"] == {"email": "user@example.com"}
        assert key["lastUsedAt"] is None
        assert key["revokedAt"] is None
        row = await db.get(ApiKey, decode_id_of(key["id"], "ApiKey"))
        assert row is not None
        assert row.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
        assert secret not in {row.prefix, row.secret_hash, row.name}
        listed = (await gql(LIST, token=token))["data"]["apiKeys"]
        assert key["id"] in [node["id"] for node in listed["nodes"]]
        assert secret not in str(listed)

    async def test_an_administrator_key_gets_admin_unless_narrowed(
        self, gql: GraphQLClient, sign_in: Any
    ) -> None:
        token = await sign_in("admin@example.com")
        assert (await create_key(gql, token))["apiKey"]["scopes"] == [
            "READ",
            "WRITE",
            "USE_AI",
            "ADMIN",
        ]
        narrowed = await create_key(gql, token, scopes=["USE_AI"])
        assert narrowed["apiKey"]["scopes"] == ["READ", "USE_AI"]

    async def test_refusals(self, gql: GraphQLClient, sign_in: Any) -> None:
        token = await sign_in("user@example.com")
        past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
        cases = [
            ({"name": "   "}, "BAD_USER_INPUT"),
            ({"name": "x" * 101}, "BAD_USER_INPUT"),
            ({"name": "old", "expiresAt": past}, "BAD_USER_INPUT"),
            ({"name": "naive", "expiresAt": "2099-01-01T00:00:00"}, "BAD_USER_INPUT"),
            ({"name": "boss", "scopes": ["ADMIN"]}, "FORBIDDEN"),
        ]
        for fields, code in cases:
            body = await gql(CREATE, {"input": fields}, token=token)
            assert body["data"] == {"createApiKey": None}, fields
            assert error_codes(body) == [code], (fields, body)
        anonymous = await gql(CREATE, {"input": {"name": "anon"}})
        assert error_codes(anonymous) == ["UNAUTHENTICATED"]

    async def test_at_most_the_configured_number_of_live_keys(
        self, make_gql: Any, sign_in: Any, db: AsyncSession
    ) -> None:
        gql = await make_gql(atlas_api_keys_per_user=2)
        token = await sign_in(await new_user(db))
        first = await create_key(gql, token)
        await create_key(gql, token)
        body = await gql(CREATE, {"input": {"name": "third"}}, token=token)
        assert error_codes(body) == ["CONFLICT"]
        await gql(REVOKE, {"id": first["apiKey"]["id"]}, token=token)
        await create_key(gql, token, name="after a revocation")


class TestAuthenticate:
    async def test_a_key_acts_as_its_user_and_records_its_use(
        self, gql: GraphQLClient, sign_in: Any
    ) -> None:
        token = await sign_in("user@example.com")
        created = await create_key(gql, token)
        assert (await gql(ME, token=created["secret"]))["data"] == {
            "me": {"email": "user@example.com"}
        }
        listed = (await gql(LIST, token=token))["data"]["apiKeys"]["nodes"]
        used = next(node for node in listed if node["id"] == created["apiKey"]["id"])
        assert used["lastUsedAt"] is not None

    async def test_last_use_is_written_at_most_once_per_interval(
        self, gql: GraphQLClient, sign_in: Any, db: AsyncSession
    ) -> None:
        token = await sign_in("user@example.com")
        created = await create_key(gql, token)
        key_id = decode_id_of(created["apiKey"]["id"], "ApiKey")
        await gql(ME, token=created["secret"])
        first = await _last_used(db, key_id)
        await gql(ME, token=created["secret"])
        assert await _last_used(db, key_id) == first
        # Older than the interval: the next request writes it again.
        await db.execute(
            sa.update(ApiKey)
            .where(col(ApiKey.id) == key_id)
            .values(last_used_at=sa.func.now() - timedelta(minutes=5))
        )
        await db.commit()
        stale = await _last_used(db, key_id)
        await gql(ME, token=created["secret"])
        refreshed = await _last_used(db, key_id)
        assert stale is not None
        assert refreshed is not None
        assert refreshed > stale

    async def test_malformed_and_unknown_keys_are_unauthenticated(self, gql: GraphQLClient) -> None:
        for secret in (
            "atlas_sk_",
            "atlas_sk_short",
            "atlas_sk_" + "A" * 43,  # well formed, unknown
            "atlas_sk_" + "!" * 43,
            "atlas_sk_" + "A" * 4000,
        ):
            response = await gql.post(ME, token=secret)
            assert response.status_code == 200, response.text
            body = response.json()
            assert error_codes(body) == ["UNAUTHENTICATED"], body
            assert body["errors"][0]["extensions"]["reason"] == "API_KEY_INVALID"

    async def test_a_revoked_key_stops_at_once(self, gql: GraphQLClient, sign_in: Any) -> None:
        token = await sign_in("user@example.com")
        created = await create_key(gql, token)
        secret, key_id = created["secret"], created["apiKey"]["id"]
        assert "errors" not in await gql(ME, token=secret)
        revoked = await gql(REVOKE, {"id": key_id}, token=token)
        assert revoked["data"]["revokeApiKey"]["revokedAt"] is not None
        assert error_codes(await gql(ME, token=secret)) == ["UNAUTHENTICATED"]
        # Revoking again answers the key as it is.
        again = await gql(REVOKE, {"id": key_id}, token=token)
        assert again["data"] == revoked["data"]
        live = (await gql(LIST, token=token))["data"]["apiKeys"]["nodes"]
        assert key_id not in [node["id"] for node in live]
        everything = (await gql(LIST, {"all": True}, token=token))["data"]["apiKeys"]["nodes"]
        assert key_id in [node["id"] for node in everything]

    async def test_an_expired_key_stops(
        self, gql: GraphQLClient, sign_in: Any, db: AsyncSession
    ) -> None:
        token = await sign_in("user@example.com")
        soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        created = await create_key(gql, token, expiresAt=soon)
        assert "errors" not in await gql(ME, token=created["secret"])
        await db.execute(
            sa.update(ApiKey)
            .where(col(ApiKey.id) == decode_id_of(created["apiKey"]["id"], "ApiKey"))
            .values(expires_at=sa.func.now() - timedelta(seconds=1))
        )
        await db.commit()
        assert error_codes(await gql(ME, token=created["secret"])) == ["UNAUTHENTICATED"]

    async def test_a_deactivated_user_key_stops(
        self, gql: GraphQLClient, sign_in: Any, db: AsyncSession
    ) -> None:
        email = await new_user(db)
        created = await create_key(gql, await sign_in(email))
        assert (await gql(ME, token=created["secret"]))["data"]["me"]["email"] == email
        # A key reads its user's keys.
        assert "errors" not in await gql(LIST, token=created["secret"])
        admin = await sign_in("admin@example.com")
        row = await _key_row(db, created["apiKey"]["id"])
        body = await gql(
            "mutation($id: ID!) { updateUser(id: $id, input: {isActive: false}) { isActive } }",
            {"id": encode_global_id("User", row.user_id)},
            token=admin,
        )
        assert body["data"] == {"updateUser": {"isActive": False}}
        assert error_codes(await gql(ME, token=created["secret"])) == ["UNAUTHENTICATED"]


class TestScopes:
    async def test_a_read_key_reads_but_cannot_write_or_use_ai(
        self, gql: GraphQLClient, sign_in: Any
    ) -> None:
        token = await sign_in("pm@example.com")
        read = (await create_key(gql, token, scopes=["READ"]))["secret"]
        assert (await gql(PROJECTS, token=read))["data"] == (await gql(PROJECTS, token=token))[
            "data"
        ]
        assert error_codes(await gql(CREATE_PROJECT, token=read)) == ["FORBIDDEN"]
        thread = encode_global_id("Thread", uuid.uuid4())
        sent = await gql(SEND, {"threadId": thread}, token=read)
        assert sent["data"] == {"sendMessage": None}
        assert error_codes(sent) == ["FORBIDDEN"]
        # The same user signed in may (the thread then does not exist).
        assert error_codes(await gql(SEND, {"threadId": thread}, token=token)) == ["NOT_FOUND"]
        rename = await gql(
            'mutation($id: ID!) { updateThread(id: $id, input: {title: "x"}) { id } }',
            {"id": thread},
            token=read,
        )
        assert error_codes(rename) == ["FORBIDDEN"]

    async def test_write_and_use_ai_scopes_let_through_their_own_mutations(
        self, gql: GraphQLClient, sign_in: Any
    ) -> None:
        token = await sign_in("pm@example.com")
        write = (await create_key(gql, token, scopes=["WRITE"]))["secret"]
        assert (await gql(CREATE_PROJECT, token=write))["data"] == {
            "createProject": {"name": "By key"}
        }
        thread = encode_global_id("Thread", uuid.uuid4())
        assert error_codes(await gql(SEND, {"threadId": thread}, token=write)) == ["FORBIDDEN"]
        use_ai = (await create_key(gql, token, scopes=["USE_AI"]))["secret"]
        assert error_codes(await gql(SEND, {"threadId": thread}, token=use_ai)) == ["NOT_FOUND"]
        assert error_codes(await gql(CREATE_PROJECT, token=use_ai)) == ["FORBIDDEN"]

    async def test_an_administrator_key_without_admin_is_not_an_administrator(
        self, gql: GraphQLClient, sign_in: Any
    ) -> None:
        token = await sign_in("admin@example.com")
        plain = (await create_key(gql, token, scopes=["READ", "WRITE", "USE_AI"]))["secret"]
        admin = (await create_key(gql, token, scopes=["ADMIN"]))["secret"]
        assert error_codes(await gql(USERS, token=plain)) == ["FORBIDDEN"]
        assert "errors" not in await gql(USERS, token=admin)
        # ADMIN sees every project; the narrowed key only those the admin belongs to.
        everything = (await gql(PROJECTS, token=admin))["data"]["projects"]["totalCount"]
        assert everything == (await gql(PROJECTS, token=token))["data"]["projects"]["totalCount"]
        assert (await gql(PROJECTS, token=plain))["data"]["projects"]["totalCount"] <= everything

    async def test_keys_cannot_manage_credentials(self, gql: GraphQLClient, sign_in: Any) -> None:
        token = await sign_in("user@example.com")
        created = await create_key(gql, token)
        secret = created["secret"]
        for document, variables in (
            (CREATE, {"input": {"name": "child"}}),
            (REVOKE, {"id": created["apiKey"]["id"]}),
            ("mutation { logout }", None),
            (
                'mutation { changePassword(input: {currentPassword: "a", '
                'newPassword: "bbbbbbbbbb"}) }',
                None,
            ),
        ):
            assert error_codes(await gql(document, variables, token=secret)) == ["FORBIDDEN"]
        assert "errors" not in await gql(ME, token=secret)

    async def test_a_key_has_its_own_message_rate(self, make_gql: Any, sign_in: Any) -> None:
        gql = await make_gql(atlas_api_key_messages_per_minute=1)
        token = await sign_in("user@example.com")
        first = (await create_key(gql, token, scopes=["USE_AI"]))["secret"]
        second = (await create_key(gql, token, scopes=["USE_AI"]))["secret"]
        thread = encode_global_id("Thread", uuid.uuid4())
        # The rate is taken before the thread is looked up.
        assert error_codes(await gql(SEND, {"threadId": thread}, token=first)) == ["NOT_FOUND"]
        limited = await gql(SEND, {"threadId": thread}, token=first)
        assert error_codes(limited) == ["RATE_LIMITED"]
        assert limited["errors"][0]["extensions"]["retryAfter"] >= 1
        # Another key, and the user signed in, have rates of their own.
        assert error_codes(await gql(SEND, {"threadId": thread}, token=second)) == ["NOT_FOUND"]
        assert error_codes(await gql(SEND, {"threadId": thread}, token=token)) == ["NOT_FOUND"]


class TestWhoSees:
    async def test_another_user_neither_sees_nor_revokes_a_key(
        self, gql: GraphQLClient, sign_in: Any, db: AsyncSession
    ) -> None:
        owner = await sign_in("user@example.com")
        created = await create_key(gql, owner)
        key_id, secret = created["apiKey"]["id"], created["secret"]
        other = await sign_in(await new_user(db))
        assert error_codes(await gql(REVOKE, {"id": key_id}, token=other)) == ["NOT_FOUND"]
        node = await gql("query($id: ID!) { node(id: $id) { id } }", {"id": key_id}, token=other)
        assert node["data"] == {"node": None}
        user_id = encode_global_id("User", (await _key_row(db, key_id)).user_id)
        listed = await gql(LIST, {"userId": user_id}, token=other)
        assert error_codes(listed) == ["FORBIDDEN"]
        assert "errors" not in await gql(ME, token=secret)
        malformed = await gql(REVOKE, {"id": "not-an-id"}, token=owner)
        assert error_codes(malformed) == ["BAD_USER_INPUT"]

    async def test_an_administrator_lists_and_revokes_anyones_keys(
        self, gql: GraphQLClient, sign_in: Any, db: AsyncSession
    ) -> None:
        owner = await sign_in("user@example.com")
        created = await create_key(gql, owner)
        key_id = created["apiKey"]["id"]
        admin = await sign_in("admin@example.com")
        user_id = encode_global_id("User", (await _key_row(db, key_id)).user_id)
        listed = (await gql(LIST, {"userId": user_id}, token=admin))["data"]["apiKeys"]
        assert key_id in [node["id"] for node in listed["nodes"]]
        node = await gql(
            "query($id: ID!) { node(id: $id) { ... on ApiKey { name } } }",
            {"id": key_id},
            token=admin,
        )
        assert node["data"] == {"node": {"name": "ci"}}
        revoked = await gql(REVOKE, {"id": key_id}, token=admin)
        assert revoked["data"]["revokeApiKey"]["revokedAt"] is not None
        assert error_codes(await gql(ME, token=created["secret"])) == ["UNAUTHENTICATED"]


class TestCompiledReads:
    async def test_key_requests_take_the_resolver_path_with_the_same_answer(
        self, gql: GraphQLClient, sign_in: Any, app: Any
    ) -> None:
        token = await sign_in("pm@example.com")
        secret = (await create_key(gql, token, scopes=["READ"]))["secret"]
        stats = app.state.atlas["runtime"].compiled_stats
        query = "{ projects(first: 10) { totalCount nodes { name members { totalCount } } } }"
        compiled_before = stats.compiled
        by_session = await gql(query, token=token)
        assert stats.compiled == compiled_before + 1
        fallback_before = stats.fallback_reasons["not eligible"]
        by_key = await gql(query, token=secret)
        assert stats.compiled == compiled_before + 1
        assert stats.fallback_reasons["not eligible"] == fallback_before + 1
        assert by_key == by_session
        assert by_key["data"]["projects"]["totalCount"] >= 1


async def _last_used(db: AsyncSession, key_id: uuid.UUID) -> datetime | None:
    return (
        await db.execute(sa.select(col(ApiKey.last_used_at)).where(col(ApiKey.id) == key_id))
    ).scalar_one()


async def _key_row(db: AsyncSession, global_id: str) -> ApiKey:
    row = await db.get(ApiKey, decode_id_of(global_id, "ApiKey"))
    assert row is not None
    return row


async def test_listing_costs_the_same_statements_whatever_the_page_size(
    gql: GraphQLClient, sign_in: Any, engine: Any
) -> None:
    token = await sign_in("pm@example.com")
    for number in range(6):
        await create_key(gql, token, name=f"key {number}")
    query = "query($n: Int) { apiKeys(first: $n) { totalCount nodes { name user { email } } } }"
    counts = []
    for size in (2, 6):
        with counting_statements(engine) as statements:
            body = await gql(query, {"n": size}, token=token)
        assert len(body["data"]["apiKeys"]["nodes"]) == size
        counts.append(len(statements))
    assert counts[0] == counts[1]
