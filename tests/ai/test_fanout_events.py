"""Events that carry a message (MessageCreated, the final events) rendered once per group when
the selection reads only what the event holds (`graph/fanout.py` `plain_selection`), and by
Strawberry for each subscriber otherwise. That the shared payloads equal Strawberry's own is
tested in test_fanout.py (`test_a_shared_frame_equals_strawberrys_own_rendering`: its
document is plain, so every event of it is shared on the WebSocket, none over graphql-sse)."""

from __future__ import annotations

from typing import Any

from atlas_gql.graph.fanout import SharedFrames
from tests.ai.conftest import AIServer
from tests.ai.fake_openai import Behaviour
from tests.ai.test_fanout import DELTAS, Socket, deltas, frames_of, socket, subscribed

# Plain: every field below the root is an attribute of the event or its message.
PLAIN = """
subscription($threadId: ID!) {
  threadEvents(threadId: $threadId) {
    __typename
    ... on MessageCreated { sequence messageId message { role status content createdAt } }
    ... on MessageDelta { sequence delta }
    ... on MessageCompleted { sequence message { status content outputTokens completedAt } }
  }
}
"""

# Not plain for MessageCreated and MessageCompleted: `files` and `parent` have resolvers (they
# read the database, with the subscriber's context).
RESOLVED = """
subscription($threadId: ID!) {
  threadEvents(threadId: $threadId) {
    __typename
    ... on MessageCreated { sequence message { status files { id } parent { role } } }
    ... on MessageDelta { sequence delta }
    ... on MessageCompleted { sequence message { status files { id } } }
  }
}
"""


async def reply_events(
    ai: AIServer, thread_id: str, query: str, sockets: list[Socket], *, others: int = 0
) -> list[list[dict[str, Any]]]:
    """Subscribe each socket (besides `others` subscriptions of the thread), send a message,
    and return each socket's events up to the reply's end."""
    for index, ws in enumerate(sockets):
        await ws.subscribe(f"op{index}", thread_id, query=query)
    await subscribed(ai, thread_id, others + len(sockets))
    ai.fake.then(Behaviour(deltas=DELTAS))
    assert "errors" not in await ai.send(thread_id)
    return [await ws.until_final(f"op{index}") for index, ws in enumerate(sockets)]


def counts(frames: SharedFrames) -> tuple[int, int]:
    return frames.executions, frames.fallbacks


async def test_plain_events_are_rendered_once_for_all_subscribers(ai: AIServer) -> None:
    thread_id = await ai.new_thread()
    frames = frames_of(ai)
    async with (
        socket(ai, ai.people.member) as first,
        socket(ai, ai.people.viewer) as second,
        socket(ai, ai.people.manager) as third,
    ):
        executions, fallbacks = counts(frames)
        events = await reply_events(ai, thread_id, PLAIN, [first, second, third])
    assert events[0] == events[1] == events[2]
    kinds = [event["__typename"] for event in events[0]]
    assert kinds.count("MessageCreated") == 2  # the question and the reply
    assert kinds[-1] == "MessageCompleted"
    assert "".join(event["delta"] for event in deltas(events[0])) == "".join(DELTAS)
    # One rendering per event for the three subscribers: two MessageCreated, the deltas, the
    # MessageCompleted (the deltas' template probes count as one).
    assert frames.executions - executions == len(events[0])
    assert frames.fallbacks == fallbacks


async def test_events_read_with_resolvers_are_rendered_per_subscriber(ai: AIServer) -> None:
    thread_id = await ai.new_thread()
    frames = frames_of(ai)
    async with socket(ai, ai.people.member) as first, socket(ai, ai.people.viewer) as second:
        executions, fallbacks = counts(frames)
        events = await reply_events(ai, thread_id, RESOLVED, [first, second])
    assert events[0] == events[1]
    created = [event for event in events[0] if event["__typename"] == "MessageCreated"]
    assert [event["message"]["files"] for event in created] == [[], []]
    assert created[1]["message"]["parent"] == {"role": "USER"}
    # Only the deltas were shared; each subscriber's other events fell back to Strawberry.
    others = len(events[0]) - len(deltas(events[0]))
    assert frames.executions - executions == len(deltas(events[0]))
    assert frames.fallbacks - fallbacks == 2 * others
