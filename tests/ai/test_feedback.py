"""Feedback on replies (issue 15 part 3): `rateMessage`, `Message.viewerRating` and
`Message.ratings` (batched), and the `feedback` list of administrators and project managers
(ASGI app, rolled-back transaction)."""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlmodel import col

from atlas_gql.ai.models import Assistant, Message, MessageRole, MessageStatus, Thread
from atlas_gql.auth.account import find_user_by_email
from atlas_gql.config import TEXT_LIMITS
from atlas_gql.ids import decode_id_of, encode_global_id
from atlas_gql.logs.models import ActivityLog
from tests.ai.conftest import People, make_people
from tests.conftest import GraphQLClient, counting_statements, error_codes

RATE = """mutation($input: RateMessageInput!) {
  rateMessage(input: $input) { id viewerRating ratings { up down } }
}"""
FEEDBACK = """query($filter: FeedbackFilter, $first: Int) {
  feedback(first: $first, filter: $filter) {
    totalCount
    nodes { id rating comment model author { email } assistant { name }
            message { id content } createdAt updatedAt }
  }
}"""


@dataclass
class Replies:
    people: People
    thread: Thread
    question: str
    replies: list[str]  # global ids, oldest first (the last one is gpt-4o's)
    running: str
    personal: str  # a reply in the member's personal thread
    assistant: uuid.UUID


@pytest.fixture
async def replies(
    db: AsyncSession, sessionmaker: async_sessionmaker[AsyncSession], sign_in: Any
) -> Replies:
    people = await make_people(sessionmaker, sign_in)
    member = await find_user_by_email(db=db, email="user@example.com")
    assert member is not None
    assistant_id = decode_id_of(people.assistant_id, "Assistant")
    assistant = await db.get(Assistant, assistant_id)
    assert assistant is not None
    thread = Thread(
        title="Rated", project_id=people.project_uuid, assistant_id=assistant_id,
        created_by_id=member.id,
    )  # fmt: skip
    personal = Thread(title="Mine", assistant_id=assistant_id, created_by_id=member.id)
    db.add_all([thread, personal])
    await db.flush()
    now = datetime.now(UTC)

    def message(thread_id: uuid.UUID, role: MessageRole, n: int, **extra: Any) -> Message:
        values = {"status": MessageStatus.COMPLETED, **extra}
        return Message(
            thread_id=thread_id, user_id=member.id, role=role, content=f"message {n}",
            created_at=now + timedelta(milliseconds=n), **values,
        )  # fmt: skip

    question = message(thread.id, MessageRole.USER, 0)
    answers = [
        message(thread.id, MessageRole.ASSISTANT, n, assistant_id=assistant_id,
                model="gpt-4o" if n == 6 else "gpt-4o-mini")
        for n in range(1, 7)
    ]  # fmt: skip
    running = message(
        thread.id, MessageRole.ASSISTANT, 7, assistant_id=assistant_id,
        status=MessageStatus.IN_PROGRESS,
    )  # fmt: skip
    own = message(personal.id, MessageRole.ASSISTANT, 8, assistant_id=assistant_id)
    # A chain (issue 15's message tree): `thread.messages` is the path to the active leaf.
    chain = [question, *answers, running]
    for parent, child in itertools.pairwise(chain):
        child.parent_id = parent.id
    thread.active_leaf_id = running.id
    personal.active_leaf_id = own.id
    db.add_all([question, *answers, running, own])
    await db.commit()
    return Replies(
        people=people,
        thread=thread,
        question=encode_global_id("Message", question.id),
        replies=[encode_global_id("Message", answer.id) for answer in answers],
        running=encode_global_id("Message", running.id),
        personal=encode_global_id("Message", own.id),
        assistant=assistant_id,
    )


async def _rate(
    gql: GraphQLClient, token: str, message_id: str, rating: str | None, comment: Any = None
) -> dict[str, Any]:
    return await gql(
        RATE,
        {"input": {"messageId": message_id, "rating": rating, "comment": comment}},
        token=token,
    )


async def test_anyone_who_sees_the_thread_rates_a_reply(
    gql: GraphQLClient, replies: Replies, db: AsyncSession
) -> None:
    people, reply = replies.people, replies.replies[0]
    body = await _rate(gql, people.member, reply, "UP", "  Spot on.  ")
    assert body["data"]["rateMessage"] == {
        "id": reply, "viewerRating": "UP", "ratings": {"up": 1, "down": 0},
    }  # fmt: skip
    # A project VIEWER reads the thread, so rates too.
    body = await _rate(gql, people.viewer, reply, "DOWN")
    assert body["data"]["rateMessage"]["ratings"] == {"up": 1, "down": 1}
    assert body["data"]["rateMessage"]["viewerRating"] == "DOWN"
    # Rating again replaces the viewer's rating; null clears it.
    body = await _rate(gql, people.member, reply, "DOWN", "Changed my mind")
    assert body["data"]["rateMessage"]["ratings"] == {"up": 0, "down": 2}
    body = await _rate(gql, people.member, reply, None)
    assert body["data"]["rateMessage"] == {
        "id": reply, "viewerRating": None, "ratings": {"up": 0, "down": 1},
    }  # fmt: skip
    # Each viewer reads their own rating.
    read = await gql(
        "query($id: ID!) { node(id: $id) { ... on Message { viewerRating ratings { down } } } }",
        {"id": reply},
        token=people.viewer,
    )
    assert read["data"]["node"] == {"viewerRating": "DOWN", "ratings": {"down": 1}}

    actions = (
        await db.execute(
            sa.select(col(ActivityLog.action), col(ActivityLog.details))
            .where(col(ActivityLog.entity_id) == str(decode_id_of(reply, "Message")))
            .order_by(col(ActivityLog.created_at), col(ActivityLog.id))
        )
    ).all()
    assert [action for action, _ in actions] == [
        "message.rate", "message.rate", "message.rate", "message.unrate",
    ]  # fmt: skip
    assert actions[0][1] == {"rating": "UP", "comment": True}


async def test_rating_refuses_bad_input_and_wrong_viewers(
    gql: GraphQLClient, replies: Replies
) -> None:
    people, reply = replies.people, replies.replies[0]
    cases = [
        (people.member, replies.question, "UP", None, "BAD_USER_INPUT"),  # not a reply
        (people.member, replies.running, "UP", None, "CONFLICT"),  # still running
        (people.member, reply, "UP", "x" * (TEXT_LIMITS.rating_comment + 1), "BAD_USER_INPUT"),
        (people.member, "not-an-id", "UP", None, "BAD_USER_INPUT"),
        (people.outsider, reply, "UP", None, "NOT_FOUND"),  # cannot see the thread
        (people.manager, replies.personal, "UP", None, "NOT_FOUND"),  # someone's own thread
    ]
    for token, message_id, rating, comment, code in cases:
        body = await _rate(gql, token, message_id, rating, comment)
        assert error_codes(body) == [code], (message_id, body)
    body = await gql(RATE, {"input": {"messageId": reply, "rating": "UP"}})
    assert error_codes(body) == ["UNAUTHENTICATED"]
    body = await gql(RATE, {"input": {"messageId": reply, "rating": "MEH"}}, token=people.member)
    assert body["errors"], body
    # Nothing was stored.
    read = await gql(
        "query($id: ID!) { node(id: $id) { ... on Message { ratings { up down } } } }",
        {"id": reply},
        token=people.member,
    )
    assert read["data"]["node"]["ratings"] == {"up": 0, "down": 0}


async def test_managers_and_admins_read_feedback_scoped_and_filtered(
    gql: GraphQLClient, replies: Replies
) -> None:
    people = replies.people
    first, second, gpt4o = replies.replies[0], replies.replies[1], replies.replies[5]
    await _rate(gql, people.member, first, "UP", "Great")
    await _rate(gql, people.viewer, first, "DOWN", "Wrong figures")
    await _rate(gql, people.member, gpt4o, "DOWN")
    await _rate(gql, people.member, replies.personal, "DOWN", "private")
    in_project = {"projectId": people.project_id}

    body = await gql(FEEDBACK, {"filter": in_project}, token=people.manager)
    assert "errors" not in body, body
    listed = body["data"]["feedback"]
    assert listed["totalCount"] == 3
    comments = {node["comment"] for node in listed["nodes"]}
    assert comments == {"Great", "Wrong figures", None}
    # (In this rolled-back transaction now() is one instant: no order to check.)
    top = next(node for node in listed["nodes"] if node["message"]["id"] == gpt4o)
    assert top["model"] == "gpt-4o"
    assert top["author"]["email"] == "user@example.com"
    assert top["assistant"]["name"]

    async def count(token: str, **filter: Any) -> int:
        body = await gql(FEEDBACK, {"filter": filter or None, "first": 100}, token=token)
        assert "errors" not in body, body
        return int(body["data"]["feedback"]["totalCount"])

    # Without projectId a manager reads their projects' ratings: not the personal thread's.
    manager_total = await count(people.manager)
    admin_total = await count(people.admin)
    assert admin_total >= manager_total + 1
    assert await count(people.manager, **in_project, rating="DOWN") == 2
    assert await count(people.manager, **in_project, model="gpt-4o") == 1
    assert await count(people.manager, **in_project, model="gpt-4o-mini", rating="UP") == 1
    assistant = encode_global_id("Assistant", replies.assistant)
    assert await count(people.manager, **in_project, assistantId=assistant) == 3
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert await count(people.manager, **in_project, **{"from": later}) == 0
    assert await count(people.manager, **in_project, to=later) == 3
    assert second not in {node["message"]["id"] for node in listed["nodes"]}

    refusals = [
        (people.member, in_project, "FORBIDDEN"),  # a MEMBER does not manage the project
        (people.member, None, "FORBIDDEN"),
        (people.viewer, None, "FORBIDDEN"),
        (people.outsider, in_project, "NOT_FOUND"),
        (people.manager, {**in_project, "from": later, "to": later}, "BAD_USER_INPUT"),
        (people.manager, {"from": "2026-01-01T00:00:00"}, "BAD_USER_INPUT"),  # no offset
    ]
    for token, filter, code in refusals:
        body = await gql(FEEDBACK, {"filter": filter}, token=token)
        assert error_codes(body) == [code], (filter, body)
        assert body["data"]["feedback"] is None

    # A Feedback id resolves through node(id:) for whoever reads it in `feedback`.
    node_query = "query($id: ID!) { node(id: $id) { ... on Feedback { rating comment } } }"
    feedback_id = top["id"]
    body = await gql(node_query, {"id": feedback_id}, token=people.manager)
    assert body["data"]["node"] == {"rating": "DOWN", "comment": None}
    body = await gql(node_query, {"id": feedback_id}, token=people.member)
    assert body["data"]["node"] is None


async def test_rating_fields_cost_the_same_statements_for_any_page(
    gql: GraphQLClient, replies: Replies, engine: AsyncEngine
) -> None:
    people = replies.people
    for reply in replies.replies:
        await _rate(gql, people.member, reply, "UP")
        await _rate(gql, people.viewer, reply, "DOWN")
    query = """query($id: ID!, $n: Int) { thread(id: $id) { messages(first: $n) {
      nodes { id viewerRating ratings { up down } } } } }"""
    thread_id = encode_global_id("Thread", replies.thread.id)
    counts = []
    for size in (2, 7):
        with counting_statements(engine) as statements:
            body = await gql(query, {"id": thread_id, "n": size}, token=people.member)
        assert "errors" not in body, body
        nodes = body["data"]["thread"]["messages"]["nodes"]
        assert len(nodes) == size
        assert nodes[1] == {"id": replies.replies[0], "viewerRating": "UP",
                            "ratings": {"up": 1, "down": 1}}  # fmt: skip
        assert nodes[0]["ratings"] == {"up": 0, "down": 0}  # the question
        counts.append(len(statements))
    assert counts[0] == counts[1]
