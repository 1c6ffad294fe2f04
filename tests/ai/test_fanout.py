"""Streaming at scale (issue 14 parts 1, 3, 4, 5; issue 10 part 4.3), on a live server with real
WebSockets: deltas rendered once per group of subscribers and written as shared frames with
each operation's own id; access re-checked in one statement per exchange for all subscribers
of a thread, and periodically, so a logout (or an API key's revocation), a deactivation or a
removal from the project ends an open subscription mid-reply, made with a session or a key; a
socket that does not read is closed with 1013 without slowing the others, and reconnects with
`afterSequence` to get the rest exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets
from websockets.typing import Subprotocol

from atlas_gql.ai.events import delta_event
from atlas_gql.graph.fanout import SharedFrames
from atlas_gql.ids import decode_id_of
from tests.ai.conftest import AIServer, StartServer
from tests.ai.fake_openai import Behaviour
from tests.ai.test_api_keys_live import REVOKE_KEY, create_key
from tests.ai.test_rights_live import change_role, new_member
from tests.auth.test_live_auth import connection_init
from tests.live import EVENTS_SUBSCRIPTION, HANG_GUARD, wait_until

DELTAS = ("One ", "two ", "three ", "four ", "five ", "six.")

# Another document for the same events: its own group, its own rendering.
ALIASED = """
subscription($threadId: ID!) {
  events: threadEvents(threadId: $threadId) {
    __typename
    ... on MessageDelta { n: sequence text: delta message { id } }
    ... on MessageCompleted { done: message { status } }
  }
}
"""


def frames_of(ai: AIServer) -> SharedFrames:
    frames: SharedFrames = ai.server.app.state.atlas["graphql"].frames
    return frames


class Socket:
    """A raw graphql-transport-ws connection: several operations, every frame seen."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def subscribe(
        self, operation_id: str, thread_id: str, *, query: str = EVENTS_SUBSCRIPTION, **more: Any
    ) -> None:
        variables = {"threadId": thread_id, **more}
        message = {"query": query, "variables": variables}
        await self.ws.send(
            json.dumps({"id": operation_id, "type": "subscribe", "payload": message})
        )

    async def message(self) -> dict[str, Any]:
        while True:
            message: dict[str, Any] = json.loads(await asyncio.wait_for(self.ws.recv(), HANG_GUARD))
            if message["type"] == "ping":
                await self.ws.send(json.dumps({"type": "pong"}))
                continue
            return message

    async def until_final(self, operation_id: str) -> list[dict[str, Any]]:
        events = []
        while True:
            message = await self.message()
            assert message["id"] == operation_id, message
            assert message["type"] == "next", message
            assert "errors" not in message["payload"], message
            event = next(iter(message["payload"]["data"].values()))
            events.append(event)
            if event["__typename"] == "MessageCompleted":
                return events


@contextlib.asynccontextmanager
async def socket(ai: AIServer, token: str, **options: Any) -> AsyncIterator[Socket]:
    async with websockets.connect(
        ai.server.ws_url, subprotocols=[Subprotocol("graphql-transport-ws")], **options
    ) as ws:
        await ws.send(
            json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"}})
        )
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        yield Socket(ws)


async def subscribed(ai: AIServer, thread_id: str, count: int) -> None:
    """Wait until this worker's broker holds `count` subscriptions of the thread."""
    thread_uuid = decode_id_of(thread_id, "Thread")
    await wait_until(lambda: ai.server.listeners.current(thread_uuid) >= count)


def deltas(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [event for event in events if event["__typename"] == "MessageDelta"]


# -- render once ---------------------------------------------------------------------------------


async def test_subscribers_of_one_document_share_one_rendering_per_delta(ai: AIServer) -> None:
    thread_id = await ai.new_thread()
    frames = frames_of(ai)
    ai.fake.then(Behaviour(deltas=DELTAS))
    async with (
        socket(ai, ai.people.member) as first,
        socket(ai, ai.people.viewer) as second,
        socket(ai, ai.people.manager) as third,
    ):
        # Same document and threadId; `after` differs, which does not split the group.
        await first.subscribe("a", thread_id, after=None)
        await second.subscribe("b", thread_id, after=0)
        await second.subscribe("c", thread_id, query=ALIASED)
        await third.subscribe("only-id", thread_id)
        await subscribed(ai, thread_id, 4)
        executions, templated = frames.executions, frames.templated
        assert "errors" not in await ai.send(thread_id)
        a = await first.until_final("a")
        # Two operations on one socket: frames interleave, each with its own id.
        seen: dict[str, list[dict[str, Any]]] = {"b": [], "c": []}
        while not all(
            events and events[-1]["__typename"] == "MessageCompleted" for events in seen.values()
        ):
            message = await second.message()
            assert message["type"] == "next", message
            assert "errors" not in message["payload"], message
            seen[message["id"]].append(next(iter(message["payload"]["data"].values())))
        only = await third.until_final("only-id")
    b, c = seen["b"], seen["c"]
    texts = [event["delta"] for event in deltas(a)]
    assert "".join(texts) == "".join(DELTAS)
    assert deltas(b) == deltas(a) == deltas(only)
    assert [(event["n"], event["text"], event["message"]) for event in deltas(c)] == [
        (event["sequence"], event["delta"], None) for event in deltas(a)
    ]
    # One execution per event and group (two documents), however many subscribers: the
    # deltas, and the events carrying a message, as both documents read only what the event
    # holds (tests/ai/test_fanout_events.py).
    assert frames.executions - executions == 2 * len(a)
    # Each of them filled into its group's template of the message (graphql-core ran only for
    # the probes that made and checked it).
    assert frames.templated - templated == 2 * len(texts)
    assert frames.shared >= 2 * len(texts)
    # The per-message events took Strawberry's path, with the same ids and numbers.
    assert [event["sequence"] for event in a] == sorted({event["sequence"] for event in a})


async def test_one_template_serves_every_reply_of_a_group(ai: AIServer) -> None:
    """The deltas' template is made at the group's first delta (the probes) and filled for
    every reply after it, each delta with its own message's id (reply start: no graphql-core
    run at a reply's first delta)."""
    thread_id = await ai.new_thread()
    frames = frames_of(ai)
    async with socket(ai, ai.people.member) as client:
        await client.subscribe("a", thread_id)
        await subscribed(ai, thread_id, 1)
        replies = []
        for texts in (DELTAS, ("Second ", "reply.")):
            ai.fake.then(Behaviour(deltas=texts))
            templated = frames.templated
            assert "errors" not in await ai.send(thread_id)
            replies.append(await client.until_final("a"))
            assert frames.templated - templated == len(texts)
            # The thread's one group (made at its first event) holds one template.
            assert [
                len(group.templates)
                for key, group in frames.groups.items()
                if decode_id_of(thread_id, "Thread") in key
            ] == [1]
    for events in replies:
        [reply_id] = [
            event["message"]["id"]
            for event in events
            if event["__typename"] == "MessageCreated" and event["message"]["role"] == "ASSISTANT"
        ]
        assert [event["messageId"] for event in deltas(events)] == [reply_id] * len(deltas(events))
    assert replies[0][-1]["messageId"] != replies[1][-1]["messageId"]
    assert "".join(event["delta"] for event in deltas(replies[1])) == "Second reply."


async def test_a_shared_frame_equals_strawberrys_own_rendering(ai: AIServer) -> None:
    """The same document over graphql-sse (Strawberry renders each event itself) and over the
    WebSocket (shared frames) gives the same payloads."""
    thread_id = await ai.new_thread()
    ai.fake.delta_permits = asyncio.Semaphore(0)
    ai.fake.then(Behaviour(deltas=DELTAS))
    body = {"query": EVENTS_SUBSCRIPTION, "variables": {"threadId": thread_id, "after": None}}
    headers = {"Authorization": f"Bearer {ai.people.member}", "Accept": "text/event-stream"}
    sse_payloads: list[dict[str, Any]] = []
    async with (
        httpx.AsyncClient(base_url=ai.server.http_url, timeout=30) as client,
        client.stream("POST", "/graphql", json=body, headers=headers) as response,
        socket(ai, ai.people.member) as ws,
    ):
        await ws.subscribe("ws", thread_id, after=None)
        await subscribed(ai, thread_id, 2)
        assert "errors" not in await ai.send(thread_id)
        for _ in DELTAS:
            ai.fake.delta_permits.release()
        ws_events = await ws.until_final("ws")
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                payload = json.loads(line[len("data: ") :])
                sse_payloads.append(payload)
                if payload["data"]["threadEvents"]["__typename"] == "MessageCompleted":
                    break
    assert [payload["data"]["threadEvents"] for payload in sse_payloads] == ws_events
    assert len(deltas(ws_events)) == len(DELTAS)


async def test_completing_one_operation_stops_only_its_frames(ai: AIServer) -> None:
    thread_id = await ai.new_thread()
    ai.fake.delta_permits = asyncio.Semaphore(0)
    ai.fake.then(Behaviour(deltas=DELTAS))
    async with socket(ai, ai.people.member) as ws:
        await ws.subscribe("stays", thread_id, after=None)
        await ws.subscribe("leaves", thread_id, after=None)
        await subscribed(ai, thread_id, 2)
        assert "errors" not in await ai.send(thread_id)
        ai.fake.delta_permits.release()
        firsts: dict[str, list[str]] = {"stays": [], "leaves": []}
        while not all(any(kind == "MessageDelta" for kind in kinds) for kinds in firsts.values()):
            message = await ws.message()
            assert message["type"] == "next", message
            firsts[message["id"]].append(message["payload"]["data"]["threadEvents"]["__typename"])
        await ws.ws.send(json.dumps({"id": "leaves", "type": "complete"}))
        thread_uuid = decode_id_of(thread_id, "Thread")
        await wait_until(lambda: ai.server.listeners.current(thread_uuid) == 1)
        for _ in DELTAS[1:]:
            ai.fake.delta_permits.release()
        rest = await ws.until_final("stays")  # asserts every frame is for "stays"
    assert "".join(event["delta"] for event in deltas(rest)) == "".join(DELTAS[1:])


async def test_a_subscriber_keeping_up_gets_each_delta_written_at_once(ai: AIServer) -> None:
    """While a subscription's reader waits with nothing queued, the publisher writes each
    delta's shared frame to the socket itself: every delta its own frame (nothing merged,
    nothing held back), in order, for every subscriber."""
    thread_id = await ai.new_thread()
    thread_uuid = decode_id_of(thread_id, "Thread")
    broker = ai.server.services.ai.broker
    frames = frames_of(ai)
    message_id = uuid.uuid4()
    async with socket(ai, ai.people.member) as first, socket(ai, ai.people.viewer) as second:
        await first.subscribe("a", thread_id, after=None)
        await second.subscribe("b", thread_id, after=None)
        await subscribed(ai, thread_id, 2)
        direct = frames.direct
        received: dict[str, list[tuple[int, str]]] = {"a": [], "b": []}
        for index, text in enumerate(DELTAS, start=500):
            await broker.publish(
                thread_uuid,
                delta_event(index, thread_id=thread_uuid, message_id=message_id, delta=text),
            )
            for ws in (first, second):
                message = await ws.message()
                event = message["payload"]["data"]["threadEvents"]
                received[message["id"]].append((event["sequence"], event["delta"]))
    expected = [(index, text) for index, text in enumerate(DELTAS, start=500)]
    assert received == {"a": expected, "b": expected}
    assert frames.direct - direct == 2 * len(DELTAS)
    assert broker.backlogs(thread_uuid) == []


async def test_a_slow_reader_gets_merged_deltas_with_the_exact_text(ai: AIServer) -> None:
    """A client that pauses reading: its socket stops taking frames, deltas queue for it and
    reach it merged (each numbered as the last delta it covers), the text exactly the same."""
    thread_id = await ai.new_thread()
    thread_uuid = decode_id_of(thread_id, "Thread")
    broker = ai.server.services.ai.broker
    message_id = uuid.uuid4()
    published: list[tuple[int, str]] = []
    async with socket(ai, ai.people.member, compression=None, max_queue=1) as slow:
        await slow.subscribe("s", thread_id, after=None)
        await subscribed(ai, thread_id, 1)
        sequence = 1000
        # Until 40 deltas wait in its queue (the socket's buffers are full); far below the
        # backlog that closes it (ATLAS_SUBSCRIBER_BACKLOG).
        while max(broker.backlogs(thread_uuid)) < 40:
            assert sequence < 3000, "the socket never filled up"
            sequence += 1
            text = f"{sequence}:" + "y" * 8_000
            published.append((sequence, text))
            await broker.publish(
                thread_uuid,
                delta_event(sequence, thread_id=thread_uuid, message_id=message_id, delta=text),
            )
            await asyncio.sleep(0)
        got: list[tuple[int, str]] = []
        while not got or got[-1][0] < sequence:
            event = (await slow.message())["payload"]["data"]["threadEvents"]
            got.append((event["sequence"], event["delta"]))
    sequences = [number for number, _ in got]
    assert sequences == sorted(set(sequences))
    assert set(sequences) <= {number for number, _ in published}
    assert len(got) < len(published)
    assert "".join(text for _, text in got) == "".join(text for _, text in published)


# -- batched access re-checks ----------------------------------------------------------------------


async def test_a_new_exchange_is_checked_once_for_all_subscribers(
    start_ai_server: StartServer,
) -> None:
    ai = await start_ai_server(atlas_subscription_recheck=0)
    watches = ai.server.services.ai.watches
    thread_id = await ai.new_thread()
    async with contextlib.AsyncExitStack() as stack:
        # Not the sender (the member): their own subscriptions are vouched for (next test).
        subscriptions = [
            await stack.enter_async_context(ai.client.subscribe(ai.people.manager, thread_id))
            for _ in range(12)
        ]
        statements = watches.statements
        assert "errors" not in await ai.send(thread_id)
        finals = await asyncio.gather(*(s.until_final() for s in subscriptions))
    assert {events[-1]["__typename"] for events in finals} == {"MessageCompleted"}
    # Two MessageCreated (the question, the reply), one exchange: one statement for twelve
    # subscribers.
    assert watches.statements - statements == 1


async def test_the_senders_own_credential_is_not_checked_again_at_their_exchange(
    start_ai_server: StartServer,
) -> None:
    """sendMessage checked its sender's session and right to the thread in the transaction
    that stored the exchange (ai/watch.py `vouch`): their own subscriptions cost no statement
    at that exchange; another session of the same person, or anyone else, is checked."""
    ai = await start_ai_server(atlas_subscription_recheck=0)
    watches = ai.server.services.ai.watches
    thread_id = await ai.new_thread()

    async def statements_of_one_exchange(*tokens: str) -> int:
        async with contextlib.AsyncExitStack() as stack:
            # Live events only: a replay of the exchanges before would be checked anew.
            subscriptions = [
                await stack.enter_async_context(
                    ai.client.subscribe(token, thread_id, after_sequence=None)
                )
                for token in tokens
            ]
            before = watches.statements
            assert "errors" not in await ai.send(thread_id)
            finals = await asyncio.gather(*(s.until_final() for s in subscriptions))
        assert {events[-1]["__typename"] for events in finals} == {"MessageCompleted"}
        return watches.statements - before

    assert await statements_of_one_exchange(ai.people.member, ai.people.member) == 0
    another_session = await ai.server.sign_in("user@example.com")
    assert await statements_of_one_exchange(ai.people.member, another_session) == 1
    assert await statements_of_one_exchange(ai.people.member, ai.people.viewer) == 1


async def test_a_sender_who_logged_out_is_stopped_at_their_next_exchange(
    start_ai_server: StartServer,
) -> None:
    """What the sender vouches for is their credential at the send: a session that ended
    since stops its subscription at the next exchange (sent by someone else)."""
    ai = await start_ai_server(atlas_subscription_recheck=0)
    thread_id = await ai.new_thread()
    token, _ = await new_member(ai, "MEMBER")
    async with ai.client.subscribe(token, thread_id) as own:
        assert "errors" not in await ai.send(thread_id, token=token)
        assert (await own.until_final())[-1]["__typename"] == "MessageCompleted"
        assert (await ai.client.data(LOGOUT, token=token))["logout"] is True
        assert "errors" not in await ai.send(thread_id)
        ended = await own.message()
    assert ended["type"] == "next", ended
    assert ended["payload"]["data"] is None
    assert ended["payload"]["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


LOGOUT = "mutation { logout(allSessions: true) }"
DEACTIVATE = "mutation($id: ID!) { updateUser(id: $id, input: {isActive: false}) { isActive } }"


@pytest.mark.parametrize("credential", ["session", "api_key"])
@pytest.mark.parametrize("revocation", ["logout", "deactivation", "removal"])
async def test_revocation_ends_an_open_subscription_mid_reply(
    start_ai_server: StartServer, revocation: str, credential: str
) -> None:
    """A subscription made with a session or with an API key (the same batched check, issue 10
    part 4.3); for a key, `logout` is the key's revocation."""
    ai = await start_ai_server(atlas_subscription_recheck=0.2)
    token, user_id = await new_member(ai, "MEMBER")
    secret, key_id = await create_key(ai, token, scopes=["READ"])
    thread_id = await ai.new_thread()
    ai.fake.delta_permits = asyncio.Semaphore(0)
    ai.fake.then(Behaviour(deltas=DELTAS))
    async with socket(ai, token if credential == "session" else secret) as ws:
        await ws.subscribe("1", thread_id, after=None)
        await subscribed(ai, thread_id, 1)
        assert "errors" not in await ai.send(thread_id)
        ai.fake.delta_permits.release()
        kinds = []
        while "MessageDelta" not in kinds:
            message = await ws.message()
            kinds.append(message["payload"]["data"]["threadEvents"]["__typename"])
        if revocation == "logout" and credential == "api_key":
            revoked = await ai.client.data(REVOKE_KEY, {"id": key_id}, token=token)
            assert revoked["revokeApiKey"]["revokedAt"] is not None
            expected = "UNAUTHENTICATED"
        elif revocation == "logout":
            assert (await ai.client.data(LOGOUT, token=token))["logout"] is True
            expected = "UNAUTHENTICATED"
        elif revocation == "deactivation":
            await ai.client.data(DEACTIVATE, {"id": user_id}, token=ai.people.admin)
            expected = "UNAUTHENTICATED"
        else:
            await change_role(ai, user_id, None)
            expected = "NOT_FOUND"
        # The periodic check ends it with the documented error, then `complete`, while the
        # reply is still running (no permit released since).
        ended = await ws.message()
        assert (ended["type"], ended["id"]) == ("next", "1"), ended
        assert ended["payload"]["data"] is None
        extensions = ended["payload"]["errors"][0]["extensions"]
        assert extensions["code"] == expected
        if credential == "api_key" and expected == "UNAUTHENTICATED":
            # Told as a request with the key is now: the key is refused.
            assert extensions["reason"] == "API_KEY_INVALID"
        assert await ws.message() == {"id": "1", "type": "complete"}
        for _ in DELTAS[1:]:
            ai.fake.delta_permits.release()
        # The reply goes on for others; this socket gets nothing more (a ping's pong comes
        # next).
        thread_uuid = decode_id_of(thread_id, "Thread")
        await wait_until(lambda: ai.server.listeners.current(thread_uuid) == 0)
        await ws.ws.send(json.dumps({"type": "ping"}))
        assert await ws.message() == {"type": "pong"}
    if credential == "api_key" and expected == "UNAUTHENTICATED":
        assert await connection_init(ai.server, secret) == 4403


# -- backpressure ---------------------------------------------------------------------------------


async def test_a_socket_that_does_not_read_is_closed_1013_and_resumes_exactly(
    start_ai_server: StartServer,
) -> None:
    ai = await start_ai_server(atlas_subscriber_backlog=16)
    thread_id = await ai.new_thread()
    thread_uuid = decode_id_of(thread_id, "Thread")
    message_id = uuid.uuid4()
    broker = ai.server.services.ai.broker
    chunk = "x" * 32_000
    published: list[str] = []
    # The stalled client takes a few frames into its queue and stops reading (no compression:
    # the bytes fill TCP's buffers, then the server's).
    async with (
        socket(ai, ai.people.member, compression=None) as reader,
        socket(ai, ai.people.member, compression=None, max_queue=4) as stalled,
    ):
        await reader.subscribe("r", thread_id, after=None)
        await stalled.subscribe("s", thread_id, after=None)
        await subscribed(ai, thread_id, 2)
        received: list[dict[str, Any]] = []

        async def read_all() -> None:
            while True:
                message = await reader.message()
                received.append(message["payload"]["data"]["threadEvents"])

        reading = asyncio.create_task(read_all())
        sequence = 1000
        # Publish until the stalled subscription is dropped (the broker forgets it).
        while len(broker.backlogs(thread_uuid)) == 2:
            sequence += 1
            text = f"{sequence}:{chunk}"
            published.append(text)
            await broker.publish(
                thread_uuid,
                delta_event(sequence, thread_id=thread_uuid, message_id=message_id, delta=text),
            )
            await asyncio.sleep(0)
        last_published = sequence
        # The reader was never held up: it gets every delta, in order (merged if it ever fell
        # MERGE_AFTER behind on this busy loop: the same text).
        await wait_until(lambda: bool(received) and received[-1]["sequence"] == sequence)
        reading.cancel()
        numbers = [event["sequence"] for event in received]
        assert numbers == sorted(set(numbers))
        assert "".join(event["delta"] for event in received) == "".join(published)
        # The stalled client reads at last: frames up to a consistent point, then 1013.
        got: list[dict[str, Any]] = []
        code = None
        while code is None:
            try:
                message = await stalled.message()
            except websockets.ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd is not None else None
                break
            assert message["type"] == "next", message
            got.append(message["payload"]["data"]["threadEvents"])
        assert code == 1013
    sequences = [event["sequence"] for event in got]
    assert sequences
    assert sequences == sorted(set(sequences))
    # It reconnects with afterSequence: the rest, exactly once (merged or not, same text).
    async with ai.client.subscribe(
        ai.people.member, thread_id, after_sequence=sequences[-1]
    ) as again:
        rest: list[dict[str, Any]] = []
        while not rest or rest[-1]["sequence"] < last_published:
            rest.append(await again.event())
    assert [event["sequence"] for event in rest] == sorted({e["sequence"] for e in rest})
    assert rest[0]["sequence"] > sequences[-1]
    assert "".join(event["delta"] for event in got + rest) == "".join(published)
