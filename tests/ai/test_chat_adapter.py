"""ATLAS_OPENAI_API=chat: replies over Chat Completions streaming, history from ATLAS."""

from __future__ import annotations

from tests.ai.conftest import UPSTREAM_KEY, StartServer
from tests.ai.fake_openai import Behaviour


async def test_chat_adapter_streams_with_history(start_ai_server: StartServer) -> None:
    ai = await start_ai_server(atlas_openai_api="chat")
    thread_id = await ai.new_thread()
    for content in ("First question", "Second question"):
        async with ai.client.subscribe(ai.people.member, thread_id, after_sequence=None) as sub:
            body = await ai.send(thread_id, content)
            assert "errors" not in body, body
            events = await sub.until_final()
        final = events[-1]
        assert final["__typename"] == "MessageCompleted"
        deltas = [e["delta"] for e in events if e["__typename"] == "MessageDelta"]
        assert len(deltas) >= 3
        assert "".join(deltas) == final["message"]["content"] == "Hello, this is ATLAS."
        assert final["message"]["openaiMessageId"].startswith("chatcmpl-")
        assert (final["message"]["inputTokens"], final["message"]["outputTokens"]) == (21, 9)

    assert ai.fake.calls("/v1/conversations") == []
    assert ai.fake.calls("/v1/responses") == []
    first, second = ai.fake.calls("/v1/chat/completions")
    assert second.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert second.body["model"] == "gpt-4o-mini"
    assert second.body["stream"] is True
    assert second.body["stream_options"] == {"include_usage": True}
    roles = [(m["role"], m["content"]) for m in second.body["messages"]]
    assert roles[0][0] == "system"
    assert roles[0][1].startswith("You are a concise, friendly assistant")
    assert roles[1:] == [
        ("user", "First question"),
        ("assistant", "Hello, this is ATLAS."),
        ("user", "Second question"),
    ]
    assert len(first.body["messages"]) == 2
    thread = await ai.client.data(
        "query($id: ID!) { thread(id: $id) { openaiThreadId } }",
        {"id": thread_id},
        token=ai.people.member,
    )
    assert thread["thread"]["openaiThreadId"] is None


async def test_chat_adapter_failures(start_ai_server: StartServer) -> None:
    ai = await start_ai_server(atlas_openai_api="chat")
    ai.fake.then(
        *[Behaviour(kind="http_error", status=500)] * 3,
        Behaviour(kind="cut", deltas_before_failure=2),
        Behaviour(kind="incomplete", deltas_before_failure=3),
    )
    thread_id = await ai.new_thread()
    outcomes = []
    for _ in range(3):
        async with ai.client.subscribe(ai.people.member, thread_id, after_sequence=None) as sub:
            await ai.send(thread_id)
            final = (await sub.until_final())[-1]
        outcomes.append(
            (final["__typename"], final["message"]["status"], final["message"]["content"])
        )
    assert outcomes == [
        ("MessageFailed", "FAILED", ""),
        ("MessageFailed", "INCOMPLETE", "Hello, "),
        ("MessageFailed", "INCOMPLETE", "Hello, this "),
    ]
