"""Issue 15 part 1: the message tree. regenerateMessage, editMessage, selectBranch,
Message.parent/siblings/siblingIndex, Thread.activeLeaf, Thread.messages as the active
path; the model receives exactly the branch it answers (the fake OpenAI records it)."""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa
from sqlmodel import col

from atlas_gql.ai.models import Message, MessageStatus
from atlas_gql.ids import encode_global_id
from atlas_gql.logs.models import ActivityLog, ApiUsageLog, ErrorLog
from tests.ai.conftest import AIServer, StartServer
from tests.ai.fake_openai import Behaviour
from tests.ai.test_replies import rows, uuid_of
from tests.conftest import error_codes
from tests.live import wait_until

REGENERATE = """
mutation($id: ID!) {
  regenerateMessage(input: {messageId: $id}) { id role status parent { id } siblingIndex }
}
"""
EDIT = """
mutation($id: ID!, $content: String!) {
  editMessage(input: {messageId: $id, content: $content}) {
    userMessage { id content parent { id } siblings { id } siblingIndex }
    assistantMessage { id status }
    afterSequence
  }
}
"""
SELECT_BRANCH = """
mutation($id: ID!) {
  selectBranch(input: {messageId: $id}) { id activeLeaf { id } }
}
"""
BRANCH = """
query($id: ID!) {
  thread(id: $id) {
    openaiThreadId
    activeLeaf { id }
    messages(first: 50) {
      totalCount
      edges { node { id role content status parent { id } siblingIndex siblings { id } } }
    }
  }
}
"""
# The same without the tree's new fields: the compiled read path answers it.
PATH_ONLY = """
query($id: ID!) {
  thread(id: $id) { activeLeaf { id } messages(first: 50) { totalCount edges { node { id } } } }
}
"""
REPLY = ("Hello", ", ", "this ", "is ", "ATLAS", ".")
REPLY_TEXT = "".join(REPLY)


async def exchange(ai: AIServer, thread_id: str, content: str) -> dict[str, Any]:
    """Send a message and wait for its reply to end; the sendMessage payload."""
    async with ai.client.subscribe(
        ai.people.member, thread_id, after_sequence=None
    ) as subscription:
        body = await ai.send(thread_id, content)
        assert "errors" not in body, body
        await subscription.until_final()
    payload: dict[str, Any] = body["data"]["sendMessage"]
    return payload


async def branch(ai: AIServer, thread_id: str) -> dict[str, Any]:
    thread: dict[str, Any] = (
        await ai.client.data(BRANCH, {"id": thread_id}, token=ai.people.member)
    )["thread"]
    return thread


def contents(thread: dict[str, Any]) -> list[str]:
    return [edge["node"]["content"] for edge in thread["messages"]["edges"]]


async def test_regenerate_streams_a_sibling_answered_from_its_branch(ai: AIServer) -> None:
    thread_id = await ai.new_thread()
    await exchange(ai, thread_id, "First question")
    second = await exchange(ai, thread_id, "Second question")
    old_reply = second["assistantMessage"]["id"]

    ai.fake.then(Behaviour(deltas=("Another ", "answer")))
    async with ai.client.subscribe(
        ai.people.member, thread_id, after_sequence=None
    ) as subscription:
        body = await ai.client.gql(REGENERATE, {"id": old_reply}, token=ai.people.member)
        assert "errors" not in body, body
        reply = body["data"]["regenerateMessage"]
        assert reply["status"] == "IN_PROGRESS"
        assert reply["role"] == "ASSISTANT"
        assert reply["parent"]["id"] == second["userMessage"]["id"]
        assert reply["siblingIndex"] == 1
        events = await subscription.until_final()

    # One MessageCreated (the question is not new), the deltas, the final event.
    kinds = [event["__typename"] for event in events]
    assert kinds[0] == "MessageCreated"
    assert kinds.count("MessageCreated") == 1
    assert kinds[-1] == "MessageCompleted"
    assert events[-1]["message"]["content"] == "Another answer"

    # The model saw the branch up to the question, without the reply it replaces, and not
    # in the conversation (which holds the old reply).
    assert ai.fake.model_inputs[-1] == [
        ("user", "First question"),
        ("assistant", REPLY_TEXT),
        ("user", "Second question"),
    ]
    call = ai.fake.calls("/v1/responses")[-1]
    assert "conversation" not in call.body

    thread = await branch(ai, thread_id)
    assert contents(thread) == ["First question", REPLY_TEXT, "Second question", "Another answer"]
    last = thread["messages"]["edges"][-1]["node"]
    assert thread["activeLeaf"]["id"] == last["id"] == reply["id"]
    assert [sibling["id"] for sibling in last["siblings"]] == [old_reply, reply["id"]]
    assert last["siblingIndex"] == 1
    assert thread["messages"]["edges"][0]["node"]["parent"] is None

    # Counted as any reply: a usage row and an activity row.
    [usage] = await rows(
        ai, sa.select(ApiUsageLog).where(col(ApiUsageLog.message_id) == uuid_of(reply["id"]))
    )
    assert (usage.input_tokens, usage.output_tokens) == (21, 9)
    actions = await rows(
        ai,
        sa.select(col(ActivityLog.action)).where(
            col(ActivityLog.entity_id) == str(uuid_of(reply["id"]))
        ),
    )
    assert actions == ["message.regenerate"]

    # Going on from the new branch: its history again, as input.
    await exchange(ai, thread_id, "Third question")
    assert ai.fake.model_inputs[-1] == [
        ("user", "First question"),
        ("assistant", REPLY_TEXT),
        ("user", "Second question"),
        ("assistant", "Another answer"),
        ("user", "Third question"),
    ]
    assert "conversation" not in ai.fake.calls("/v1/responses")[-1].body

    # Back to the first branch: its leaf is the old reply, and the next message goes on in
    # the thread's conversation, which holds exactly that branch.
    selected = await ai.client.data(SELECT_BRANCH, {"id": old_reply}, token=ai.people.member)
    assert selected["selectBranch"]["activeLeaf"]["id"] == old_reply
    assert contents(await branch(ai, thread_id)) == [
        "First question", REPLY_TEXT, "Second question", REPLY_TEXT,
    ]  # fmt: skip
    await exchange(ai, thread_id, "Back on the main line")
    call = ai.fake.calls("/v1/responses")[-1]
    assert call.body["conversation"] == thread["openaiThreadId"]
    assert ai.fake.model_inputs[-1] == [
        ("user", "First question"),
        ("assistant", REPLY_TEXT),
        ("user", "Second question"),
        ("assistant", REPLY_TEXT),
        ("user", "Back on the main line"),
    ]


async def test_edit_adds_a_sibling_question_and_keeps_the_old_branch(ai: AIServer) -> None:
    thread_id = await ai.new_thread()
    first = await exchange(ai, thread_id, "Original question")
    second = await exchange(ai, thread_id, "Follow-up")
    original = first["userMessage"]["id"]

    async with ai.client.subscribe(
        ai.people.member, thread_id, after_sequence=None
    ) as subscription:
        body = await ai.client.gql(
            EDIT, {"id": original, "content": "Edited question"}, token=ai.people.member
        )
        assert "errors" not in body, body
        payload = body["data"]["editMessage"]
        events = await subscription.until_final()
    question = payload["userMessage"]
    assert question["content"] == "Edited question"
    assert question["parent"] is None
    assert [sibling["id"] for sibling in question["siblings"]] == [original, question["id"]]
    assert question["siblingIndex"] == 1
    assert payload["assistantMessage"]["status"] == "IN_PROGRESS"
    kinds = [event["__typename"] for event in events]
    assert kinds[:2] == ["MessageCreated", "MessageCreated"]
    assert kinds[-1] == "MessageCompleted"
    assert all(event["sequence"] > payload["afterSequence"] for event in events)

    # The model saw only the edited question: the old branch is not in its history.
    assert ai.fake.model_inputs[-1] == [("user", "Edited question")]
    assert "conversation" not in ai.fake.calls("/v1/responses")[-1].body
    assert contents(await branch(ai, thread_id)) == ["Edited question", REPLY_TEXT]

    # The old branch stays: selecting its first message shows its newest leaf.
    selected = await ai.client.data(SELECT_BRANCH, {"id": original}, token=ai.people.member)
    assert selected["selectBranch"]["activeLeaf"]["id"] == second["assistantMessage"]["id"]
    thread = await branch(ai, thread_id)
    assert contents(thread) == ["Original question", REPLY_TEXT, "Follow-up", REPLY_TEXT]
    assert thread["messages"]["totalCount"] == 4
    # The compiled read path lists the same branch.
    path = (await ai.client.data(PATH_ONLY, {"id": thread_id}, token=ai.people.member))["thread"]
    assert [edge["node"]["id"] for edge in path["messages"]["edges"]] == [
        edge["node"]["id"] for edge in thread["messages"]["edges"]
    ]
    assert path["messages"]["totalCount"] == 4
    assert path["activeLeaf"] == thread["activeLeaf"]


async def test_wrong_viewer_and_bad_ids_are_refused(ai: AIServer) -> None:
    thread_id = await ai.new_thread()
    sent = await exchange(ai, thread_id, "A question")
    question, reply = sent["userMessage"]["id"], sent["assistantMessage"]["id"]
    people = ai.people

    async def codes(document: str, variables: dict[str, Any], token: str) -> list[str]:
        return error_codes(await ai.client.gql(document, variables, token=token))

    # Someone who does not see the thread: NOT_FOUND, as for any hidden message.
    assert await codes(REGENERATE, {"id": reply}, people.outsider) == ["NOT_FOUND"]
    assert await codes(EDIT, {"id": question, "content": "x"}, people.outsider) == ["NOT_FOUND"]
    assert await codes(SELECT_BRANCH, {"id": question}, people.outsider) == ["NOT_FOUND"]
    # A VIEWER reads the thread but may not post or switch what it shows.
    assert await codes(REGENERATE, {"id": reply}, people.viewer) == ["FORBIDDEN"]
    assert await codes(EDIT, {"id": question, "content": "x"}, people.viewer) == ["FORBIDDEN"]
    assert await codes(SELECT_BRANCH, {"id": question}, people.viewer) == ["FORBIDDEN"]
    # The wrong kind of message, empty text, ids of another type or malformed.
    assert await codes(REGENERATE, {"id": question}, people.member) == ["BAD_USER_INPUT"]
    assert await codes(EDIT, {"id": reply, "content": "x"}, people.member) == ["BAD_USER_INPUT"]
    assert await codes(EDIT, {"id": question, "content": "  "}, people.member) == ["BAD_USER_INPUT"]
    assert await codes(REGENERATE, {"id": thread_id}, people.member) == ["BAD_USER_INPUT"]
    assert await codes(SELECT_BRANCH, {"id": "not-an-id"}, people.member) == ["BAD_USER_INPUT"]
    missing = encode_global_id("Message", uuid_of(thread_id))
    assert await codes(REGENERATE, {"id": missing}, people.member) == ["NOT_FOUND"]

    # Nothing was stored by the refusals: the thread still holds its two messages.
    stored = await rows(ai, sa.select(Message).where(col(Message.thread_id) == uuid_of(thread_id)))
    assert len(stored) == 2
    thread = await branch(ai, thread_id)
    assert thread["activeLeaf"]["id"] == reply


async def test_a_running_reply_makes_branching_a_conflict(ai: AIServer) -> None:
    thread_id = await ai.new_thread()
    sent = await exchange(ai, thread_id, "A question")
    ai.fake.gates["complete"] = gate = asyncio.Event()
    async with ai.client.subscribe(
        ai.people.member, thread_id, after_sequence=None
    ) as subscription:
        body = await ai.client.gql(
            REGENERATE, {"id": sent["assistantMessage"]["id"]}, token=ai.people.member
        )
        assert "errors" not in body, body
        # The new reply runs (held before its end): another branch must wait.
        for document, variables in (
            (REGENERATE, {"id": sent["assistantMessage"]["id"]}),
            (EDIT, {"id": sent["userMessage"]["id"], "content": "Other"}),
        ):
            refused = await ai.client.gql(document, variables, token=ai.people.member)
            assert error_codes(refused) == ["CONFLICT"]
        gate.set()
        events = await subscription.until_final()
    assert events[-1]["__typename"] == "MessageCompleted"


async def test_an_upstream_failure_fails_the_new_reply_only(ai: AIServer) -> None:
    thread_id = await ai.new_thread()
    sent = await exchange(ai, thread_id, "A question")
    old_reply = sent["assistantMessage"]["id"]
    ai.fake.then(Behaviour(kind="http_error", status=400))
    async with ai.client.subscribe(
        ai.people.member, thread_id, after_sequence=None
    ) as subscription:
        body = await ai.client.gql(REGENERATE, {"id": old_reply}, token=ai.people.member)
        assert "errors" not in body, body
        events = await subscription.until_final()
    new_reply = body["data"]["regenerateMessage"]["id"]
    assert events[-1]["__typename"] == "MessageFailed"
    assert events[-1]["message"]["status"] == "FAILED"
    [failed] = await rows(ai, sa.select(Message).where(col(Message.id) == uuid_of(new_reply)))
    assert failed.status is MessageStatus.FAILED
    [kept] = await rows(ai, sa.select(Message).where(col(Message.id) == uuid_of(old_reply)))
    assert (kept.status, kept.content) == (MessageStatus.COMPLETED, REPLY_TEXT)
    errors = await rows(ai, sa.select(ErrorLog).where(col(ErrorLog.path).contains(new_reply)))
    assert len(errors) == 1
    # The failed reply is the branch shown; the old one is one arrow away.
    thread = await branch(ai, thread_id)
    last = thread["messages"]["edges"][-1]["node"]
    assert last["id"] == new_reply
    assert [sibling["id"] for sibling in last["siblings"]] == [old_reply, new_reply]


async def test_chat_adapter_sends_the_branch_as_messages(start_ai_server: StartServer) -> None:
    ai = await start_ai_server(atlas_openai_api="chat")
    thread_id = await ai.new_thread()
    first = await exchange(ai, thread_id, "One")
    await exchange(ai, thread_id, "Two")
    body = await ai.client.gql(
        EDIT, {"id": first["userMessage"]["id"], "content": "Uno"}, token=ai.people.member
    )
    assert "errors" not in body, body
    assert body["data"]["editMessage"]["userMessage"]["siblingIndex"] == 1

    async def answered() -> bool:
        return len(ai.fake.model_inputs) == 3

    await wait_until(answered)
    assert ai.fake.model_inputs[1] == [("user", "One"), ("assistant", REPLY_TEXT), ("user", "Two")]
    assert ai.fake.model_inputs[2] == [("user", "Uno")]


async def test_a_regenerated_reply_is_cancelled_as_any_reply(ai: AIServer) -> None:
    thread_id = await ai.new_thread()
    sent = await exchange(ai, thread_id, "A question")
    ai.fake.gates["complete"] = asyncio.Event()
    async with ai.client.subscribe(
        ai.people.member, thread_id, after_sequence=None
    ) as subscription:
        body = await ai.client.data(
            REGENERATE, {"id": sent["assistantMessage"]["id"]}, token=ai.people.member
        )
        reply = body["regenerateMessage"]["id"]
        cancelled = await ai.client.data(
            "mutation($id: ID!) { cancelMessage(id: $id) { id status } }",
            {"id": reply},
            token=ai.people.member,
        )
        assert cancelled["cancelMessage"] == {"id": reply, "status": "CANCELLED"}
        events = await subscription.until_final()
    assert events[-1]["__typename"] == "MessageCancelled"
    assert events[-1]["message"]["id"] == reply
    ai.fake.gates["complete"].set()
