"""Idle subscriptions on a live server (issue 14 part 5): what an idle WebSocket keeps is light
(a lazy broker backlog, uvicorn's queue and events without deques, no connection_init task),
and the protocol stays exact around it: a socket without `connection_init` is closed 4408; many
operations on one socket idle, then all receive a reply, then complete; a socket that goes away
while its operations are idle leaves nothing registered; an idle subscription that was
merged-and-dropped (its backlog emptied) takes later events in order. An idle socket's task
awaits no HTTP middleware (the app's entry serves the GraphQL WebSocket in one frame)."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta
from typing import Any

import websockets
from websockets.typing import Subprotocol

from atlas_gql.ai.events import delta_event
from atlas_gql.ids import decode_id_of
from tests.ai.conftest import AIServer
from tests.ai.fake_openai import Behaviour
from tests.ai.test_fanout import DELTAS, deltas, socket, subscribed
from tests.graph.test_websocket_limits import closed_with
from tests.live import wait_until


async def test_a_socket_without_connection_init_is_closed_4408(ai: AIServer) -> None:
    view = ai.server.app.state.atlas["graphql"]
    view.connection_init_wait_timeout = timedelta(seconds=0.2)
    async with websockets.connect(
        ai.server.ws_url, subprotocols=[Subprotocol("graphql-transport-ws")]
    ) as ws:
        assert await closed_with(ws) == (4408, "Connection initialisation timeout")


async def test_a_socket_initialised_in_time_is_served(ai: AIServer) -> None:
    """connection_init before the deadline: acknowledged, and the operations run (the
    deadline's timer is gone, not merely late)."""
    view = ai.server.app.state.atlas["graphql"]
    view.connection_init_wait_timeout = timedelta(seconds=1)
    thread_id = await ai.new_thread()
    ai.fake.then(Behaviour(deltas=DELTAS))
    async with socket(ai, ai.people.member) as ws:
        await ws.subscribe("a", thread_id, after=None)
        await subscribed(ai, thread_id, 1)
        assert "errors" not in await ai.send(thread_id)
        events = await ws.until_final("a")
        # Past the deadline now (the reply's start checks access): still open, still served.
        await ws.ws.send(json.dumps({"type": "ping"}))
        assert (await ws.message())["type"] == "pong"
    assert "".join(event["delta"] for event in deltas(events)) == "".join(DELTAS)


async def test_many_idle_operations_on_one_socket_receive_a_reply_then_complete(
    ai: AIServer,
) -> None:
    thread_id = await ai.new_thread()
    thread_uuid = decode_id_of(thread_id, "Thread")
    ai.fake.then(Behaviour(deltas=DELTAS))
    ids = [f"op-{index}" for index in range(12)]
    async with socket(ai, ai.people.member) as ws:
        for operation_id in ids:
            await ws.subscribe(operation_id, thread_id, after=None)
        await subscribed(ai, thread_id, len(ids))
        assert "errors" not in await ai.send(thread_id)
        seen: dict[str, list[dict[str, Any]]] = {operation_id: [] for operation_id in ids}
        while not all(
            events and events[-1]["__typename"] == "MessageCompleted" for events in seen.values()
        ):
            message = await ws.message()
            assert message["type"] == "next", message
            seen[message["id"]].append(message["payload"]["data"]["threadEvents"])
        for operation_id in ids:
            await ws.ws.send(json.dumps({"id": operation_id, "type": "complete"}))
        await wait_until(lambda: ai.server.listeners.current(thread_uuid) == 0)
        # The socket stays open and usable after its operations completed.
        await ws.ws.send(json.dumps({"type": "ping"}))
        assert (await ws.message())["type"] == "pong"
    texts = {"".join(event["delta"] for event in deltas(events)) for events in seen.values()}
    assert texts == {"".join(DELTAS)}
    assert ai.server.services.ai.broker.backlogs(thread_uuid) == []


async def test_a_socket_closed_while_its_operations_are_idle_leaves_nothing(
    ai: AIServer,
) -> None:
    thread_id = await ai.new_thread()
    thread_uuid = decode_id_of(thread_id, "Thread")
    frames = ai.server.app.state.atlas["graphql"].frames
    groups = len(frames.groups)
    async with socket(ai, ai.people.member) as ws:
        await ws.subscribe("a", thread_id, after=None)
        await ws.subscribe("b", thread_id, after=0)
        await subscribed(ai, thread_id, 2)
    await wait_until(lambda: ai.server.listeners.current(thread_uuid) == 0)
    assert ai.server.services.ai.broker.backlogs(thread_uuid) == []
    assert len(ai.server.services.ai.watches) == 0
    assert len(frames.groups) == groups


async def test_an_idle_subscription_takes_queued_then_direct_events_in_order(
    ai: AIServer,
) -> None:
    """Events queued while the reader is busy, then events while it is idle again (its backlog
    dropped): every delta once, in order, whichever path it took."""
    thread_id = await ai.new_thread()
    thread_uuid = decode_id_of(thread_id, "Thread")
    broker = ai.server.services.ai.broker
    message_id = uuid.uuid4()
    async with socket(ai, ai.people.member) as ws:
        await ws.subscribe("a", thread_id, after=None)
        await subscribed(ai, thread_id, 1)
        expected: list[tuple[int, str]] = []
        for round_ in range(3):
            # Published back to back, without yielding: the reader wakes once for several.
            for index in range(5):
                sequence = 100 * (round_ + 1) + index
                text = f"{round_}.{index} "
                expected.append((sequence, text))
                await broker.publish(
                    thread_uuid,
                    delta_event(sequence, thread_id=thread_uuid, message_id=message_id, delta=text),
                )
            received: list[tuple[int, str]] = []
            while not received or received[-1][0] != expected[-1][0]:
                event = (await ws.message())["payload"]["data"]["threadEvents"]
                received.append((event["sequence"], event["delta"]))
            current = expected[-5:]
            # Merged or not, the text and the last number are exact, numbers increasing.
            assert "".join(text for _, text in received) == "".join(text for _, text in current)
            numbers = [number for number, _ in received]
            assert numbers == sorted(set(numbers))
            assert broker.backlogs(thread_uuid) == [0]


def awaited_chain(task: asyncio.Task[Any]) -> list[str]:
    """The qualified names of the coroutines and generators a task is suspended in, outermost
    first (each one's `cr_await`, `ag_await` or `gi_yieldfrom`)."""
    names: list[str] = []
    current: Any = task.get_coro()
    while current is not None:
        code = (
            getattr(current, "cr_code", None)
            or getattr(current, "ag_code", None)
            or getattr(current, "gi_code", None)
        )
        if code is None:
            break
        names.append(code.co_qualname)
        current = (
            getattr(current, "cr_await", None)
            or getattr(current, "ag_await", None)
            or getattr(current, "gi_yieldfrom", None)
        )
    return names


async def test_an_idle_socket_holds_no_http_middleware(ai: AIServer) -> None:
    """What an idle WebSocket's task keeps for the connection's life: the app's entry, then
    Strawberry's view and handler; none of the HTTP chain (error and exception middlewares,
    CORS, body guards, observability, routing)."""
    thread_id = await ai.new_thread()
    async with socket(ai, ai.people.member) as ws:
        await ws.subscribe("a", thread_id, after=None)
        await subscribed(ai, thread_id, 1)
        chains = [
            chain
            for task in asyncio.all_tasks()
            if (chain := awaited_chain(task)) and chain[0].endswith("run_asgi")
        ]
        assert len(chains) == 1, chains
        # (The tests' uvicorn keeps its ProxyHeadersMiddleware in front; `atlas-gql serve`
        # turns it off.)
        chain = chains[0][chains[0].index("AtlasApp.__call__") :]
        assert chain[1:] == ["AsyncBaseHTTPView.run", "BaseGraphQLTransportWSHandler.handle"]
        # Still served.
        await ws.ws.send(json.dumps({"type": "ping"}))
        assert (await ws.message())["type"] == "pong"
