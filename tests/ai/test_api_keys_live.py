"""Personal API keys on a real uvicorn against the fake OpenAI: a key authenticates a
WebSocket subscription and a reply, its usage appears under `apiUsage(groupBy: API_KEY)`;
revoking it (or deactivating its user) ends its open subscription; a bad key never gets a
socket."""

from __future__ import annotations

import uuid
from typing import Any

from atlas_gql.auth.account import create_user_account
from atlas_gql.ids import encode_global_id
from tests.ai.conftest import AIServer
from tests.ai.test_access import subscription_error_code
from tests.auth.test_live_auth import connection_init
from tests.conftest import SEED_PASSWORD, error_codes

CREATE_KEY = """
mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) { secret apiKey { id } } }
"""
REVOKE_KEY = "mutation($id: ID!) { revokeApiKey(input: {id: $id}) { revokedAt } }"
USAGE = """
query($filter: ApiUsageFilter) {
  apiUsage(groupBy: API_KEY, filter: $filter) { key requests inputTokens outputTokens }
}
"""
ADD_MEMBER = """
mutation($projectId: ID!, $userId: ID!) {
  addProjectMember(projectId: $projectId, userId: $userId, role: MEMBER) { id }
}
"""


async def create_key(ai: AIServer, token: str, **fields: Any) -> tuple[str, str]:
    """(secret, global id) of a new key made with a signed-in session."""
    data = await ai.client.data(CREATE_KEY, {"input": {"name": "live", **fields}}, token=token)
    created = data["createApiKey"]
    return created["secret"], created["apiKey"]["id"]


async def test_a_key_subscribes_sends_and_its_usage_is_grouped_by_key(ai: AIServer) -> None:
    secret, key_id = await create_key(ai, ai.people.member, scopes=["USE_AI"])
    thread_id = await ai.new_thread(token=secret)
    async with ai.client.subscribe(secret, thread_id) as subscription:
        sent = await ai.send(thread_id, "Hello from a script", token=secret)
        assert "errors" not in sent, sent
        events = await subscription.until_final()
    assert events[-1]["__typename"] == "MessageCompleted"
    assert len(ai.fake.calls("/v1/responses")) == 1

    # The key's owner reads the usage of the key, keyed by its global id.
    mine = await ai.client.data(USAGE, {"filter": {"apiKeyId": key_id}}, token=ai.people.member)
    assert [bucket["key"] for bucket in mine["apiUsage"]] == [key_id]
    assert mine["apiUsage"][0]["requests"] == 1
    assert mine["apiUsage"][0]["outputTokens"] > 0
    # Grouped without a filter, the key's bucket sits beside the session's.
    everything = await ai.client.data(USAGE, {}, token=ai.people.member)
    keys = {bucket["key"]: bucket["requests"] for bucket in everything["apiUsage"]}
    assert keys[key_id] == 1
    # Another user reads neither the key's usage nor a bucket of it.
    other = await ai.client.data(USAGE, {"filter": {"apiKeyId": key_id}}, token=ai.people.outsider)
    assert other["apiUsage"] == []
    malformed = await ai.client.gql(USAGE, {"filter": {"apiKeyId": "nope"}}, token=secret)
    assert error_codes(malformed) == ["BAD_USER_INPUT"]


async def test_revoking_a_key_ends_its_open_subscription(ai: AIServer) -> None:
    secret, key_id = await create_key(ai, ai.people.member, scopes=["READ"])
    thread_id = await ai.new_thread()
    async with ai.client.subscribe(secret, thread_id) as subscription:
        revoked = await ai.client.data(REVOKE_KEY, {"id": key_id}, token=ai.people.member)
        assert revoked["revokeApiKey"]["revokedAt"] is not None
        # The next exchange in the thread checks the subscriber again.
        assert "errors" not in await ai.send(thread_id, token=ai.people.member)
        message = await subscription.message()
    assert subscription_error_code(message) == "UNAUTHENTICATED"
    assert await connection_init(ai.server, secret) == 4403


async def test_deactivating_the_user_ends_a_key_subscription(ai: AIServer) -> None:
    runtime = ai.server.app.state.atlas["runtime"]
    async with runtime.sessionmaker() as db:
        user = await create_user_account(
            db=db,
            email=f"key-live-{uuid.uuid4().hex[:8]}@example.com",
            password=SEED_PASSWORD,
            bcrypt_rounds=4,
        )
        await db.commit()
    user_id = encode_global_id("User", user.id)
    await ai.client.data(
        ADD_MEMBER, {"projectId": ai.people.project_id, "userId": user_id}, token=ai.people.admin
    )
    secret, _ = await create_key(ai, await ai.server.sign_in(user.email))
    thread_id = await ai.new_thread()
    async with ai.client.subscribe(secret, thread_id) as subscription:
        deactivated = await ai.client.data(
            "mutation($id: ID!) { updateUser(id: $id, input: {isActive: false}) { isActive } }",
            {"id": user_id},
            token=ai.people.admin,
        )
        assert deactivated == {"updateUser": {"isActive": False}}
        assert "errors" not in await ai.send(thread_id, token=ai.people.member)
        message = await subscription.message()
    assert subscription_error_code(message) == "UNAUTHENTICATED"


async def test_a_bad_key_never_gets_a_socket(ai: AIServer) -> None:
    secret, _ = await create_key(ai, ai.people.member)
    assert await connection_init(ai.server, secret) == "connection_ack"
    for bad in ("atlas_sk_", "atlas_sk_" + "A" * 43, secret[:-1] + "!"):
        assert await connection_init(ai.server, bad) == 4403
