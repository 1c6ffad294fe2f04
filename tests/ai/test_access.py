"""Who may read, post to and subscribe to a thread (live server, real WebSocket)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import websockets

from tests.ai.conftest import AIServer, signing_in_user
from tests.conftest import error_codes


def subscription_error_code(message: dict[str, Any]) -> str:
    """The code of a subscription refused by its resolver (a `next` carrying errors)."""
    assert message["type"] in {"next", "error"}, message
    errors = message["payload"]["errors"] if message["type"] == "next" else message["payload"]
    assert message["type"] == "error" or message["payload"]["data"] is None
    code: str = errors[0]["extensions"]["code"]
    return code


READ_THREAD = "query($id: ID!) { thread(id: $id) { id messages { totalCount } } }"
NODE = "query($id: ID!) { node(id: $id) { id } }"


async def test_outsider_cannot_read_post_or_subscribe(ai: AIServer) -> None:
    thread_id = await ai.new_thread()
    outsider = ai.people.outsider

    # A lookup answers null for a thread the viewer may not see (as node(id:) does).
    hidden = await ai.client.gql(READ_THREAD, {"id": thread_id}, token=outsider)
    assert hidden == {"data": {"thread": None}}
    assert (await ai.client.gql(NODE, {"id": thread_id}, token=outsider))["data"]["node"] is None
    threads = await ai.client.data(
        "{ threads(first: 100) { edges { node { id } } } }", token=outsider
    )
    assert thread_id not in [edge["node"]["id"] for edge in threads["threads"]["edges"]]
    assert error_codes(await ai.send(thread_id, token=outsider)) == ["NOT_FOUND"]

    async with ai.client.subscribe(outsider, thread_id, in_place=False) as subscription:
        message = await subscription.message()
    assert subscription_error_code(message) == "NOT_FOUND"
    assert ai.fake.calls("/v1/responses") == []


async def test_viewer_reads_and_subscribes_but_cannot_post(ai: AIServer) -> None:
    thread_id = await ai.new_thread()
    viewer = ai.people.viewer
    read = await ai.client.data(READ_THREAD, {"id": thread_id}, token=viewer)
    assert read["thread"]["id"] == thread_id
    assert error_codes(await ai.send(thread_id, token=viewer)) == ["FORBIDDEN"]

    async with ai.client.subscribe(viewer, thread_id) as subscription:
        assert "errors" not in await ai.send(thread_id, token=ai.people.member)
        events = await subscription.until_final()
    assert events[-1]["__typename"] == "MessageCompleted"


async def test_viewer_cannot_start_a_thread(ai: AIServer) -> None:
    body = await ai.client.gql(
        "mutation($input: CreateThreadInput!) { createThread(input: $input) { id } }",
        {"input": {"projectId": ai.people.project_id, "assistantId": ai.people.assistant_id}},
        token=ai.people.viewer,
    )
    assert error_codes(body) == ["FORBIDDEN"]


async def test_subscription_with_bad_token_is_refused(ai: AIServer) -> None:
    async with websockets.connect(ai.server.ws_url, subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        await ws.send(
            json.dumps({"type": "connection_init", "payload": {"Authorization": "Bearer forged"}})
        )
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4403


async def test_subscription_without_token_is_unauthenticated(ai: AIServer) -> None:
    thread_id = await ai.new_thread()
    async with ai.client.subscribe(None, thread_id, in_place=False) as subscription:
        message = await subscription.message()
    assert subscription_error_code(message) == "UNAUTHENTICATED"


async def test_sending_requires_use_ai(ai: AIServer) -> None:
    thread_id = await ai.new_thread()
    runtime = ai.server.app.state.atlas["runtime"]
    async with runtime.sessionmaker() as db:
        user = await signing_in_user(db, "no-ai", roles=())
        await db.commit()
    token = await ai.server.sign_in(user.email)
    assert error_codes(await ai.send(thread_id, token=token)) == ["FORBIDDEN"]


async def test_bad_message_input(ai: AIServer) -> None:
    thread_id = await ai.new_thread()
    too_long = "x" * (ai.server.settings.atlas_max_message_chars + 1)
    for content in ("", "   ", too_long):
        body = await ai.send(thread_id, content)
        assert error_codes(body) == ["BAD_USER_INPUT"]
        assert body["errors"][0]["extensions"]["field"] == "content"
    body = await ai.send("not-an-id")
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert ai.fake.calls("/v1/responses") == []


async def test_messages_are_nodes_only_for_those_who_see_the_thread(ai: AIServer) -> None:
    thread_id = await ai.new_thread()
    async with ai.client.subscribe(ai.people.member, thread_id) as subscription:
        payload = (await ai.send(thread_id))["data"]["sendMessage"]
        await subscription.until_final()
    query = "query($id: ID!) { node(id: $id) { id ... on Message { status content } } }"
    reply_id = payload["assistantMessage"]["id"]
    seen = await ai.client.data(query, {"id": reply_id}, token=ai.people.viewer)
    assert seen["node"] == {
        "id": reply_id,
        "status": "COMPLETED",
        "content": "Hello, this is ATLAS.",
    }
    hidden = await ai.client.data(query, {"id": reply_id}, token=ai.people.outsider)
    assert hidden["node"] is None


async def test_a_thread_whose_assistant_was_deleted_takes_no_message(ai: AIServer) -> None:
    pm = await ai.server.sign_in("pm@example.com")
    created = await ai.client.data(
        'mutation($p: ID!) { createAssistant(input: {name: "Short-lived", projectId: $p}) { id } }',
        {"p": ai.people.project_id},
        token=pm,
    )
    assistant_id = created["createAssistant"]["id"]
    thread = await ai.client.data(
        "mutation($i: CreateThreadInput!) { createThread(input: $i) { id } }",
        {"i": {"projectId": ai.people.project_id, "assistantId": assistant_id}},
        token=ai.people.member,
    )
    thread_id = thread["createThread"]["id"]
    deleted = await ai.client.data(
        "mutation($id: ID!) { deleteAssistant(id: $id) }", {"id": assistant_id}, token=pm
    )
    assert deleted["deleteAssistant"] == assistant_id
    kept = await ai.client.data(
        "query($id: ID!) { thread(id: $id) { id assistant { id } } }",
        {"id": thread_id},
        token=ai.people.member,
    )
    assert kept["thread"] == {"id": thread_id, "assistant": None}
    body = await ai.send(thread_id)
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert body["errors"][0]["extensions"]["field"] == "threadId"
