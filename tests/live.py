"""The live-server kit: ATLAS on a real uvicorn (in this process, on a free port) against its
own committed database, the fake OpenAI on loopback, and GraphQL over HTTP and
graphql-transport-ws clients. Every test that needs uvicorn or WebSockets uses these.

Deterministic waits: `AtlasClient.subscribe` returns once the server's broker has the
subscription in place (`Listeners`, the "subscribed" signal), the fake OpenAI paces deltas on
`delta_permits`, and `wait_until` polls a condition of the system under test with a deadline
(`HANG_GUARD`: only a hang meets it). The live database outlives each test, so the live-server
fixtures end the replies a test left running when its servers stop (`finish_leftover_replies`).
Fixtures here are registered for the whole suite by `pytest_plugins` in tests/conftest.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, cast

import httpx
import pytest
import sqlalchemy as sa
import uvicorn
import websockets
from sqlmodel import col
from websockets.typing import Subprotocol

from atlas_gql.ai.listening import Listeners
from atlas_gql.ai.models import Message, MessageStatus
from atlas_gql.app import create_app
from atlas_gql.auth.account import find_user_by_email
from atlas_gql.auth.sessions import start_session
from atlas_gql.config import Settings
from atlas_gql.db.engine import create_engine
from atlas_gql.db.url import DatabaseTarget
from atlas_gql.graph.services import Services
from atlas_gql.ids import decode_id_of
from atlas_gql.serving import WS_PROTOCOL
from tests.ai.fake_openai import FakeOpenAI
from tests.conftest import make_settings, migrated_and_seeded

EVENTS_SUBSCRIPTION = """
subscription Events($threadId: ID!, $after: Int) {
  threadEvents(threadId: $threadId, afterSequence: $after) {
    __typename
    id
    sequence
    messageId
    ... on MessageCreated { message { id role status content } }
    ... on MessageDelta { delta }
    ... on MessageCompleted {
      message { id status content openaiMessageId inputTokens outputTokens }
    }
    ... on MessageFailed { error message { id status content error } }
    ... on MessageCancelled { error message { id status content error } }
  }
}
"""

FINAL_TYPES = frozenset({"MessageCompleted", "MessageFailed", "MessageCancelled"})


@pytest.fixture(scope="session")
def live_database(make_database: Any) -> DatabaseTarget:
    """A separate database for live-server tests, whose data is committed (so it never
    disturbs the rolled-back tests on `database_target`)."""
    return migrated_and_seeded(make_database, "atlas_live")


class LiveServer:
    """A real uvicorn serving the app on 127.0.0.1 (WebSocket subscriptions, background work)."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", ws=WS_PROTOCOL
        )
        self.server = uvicorn.Server(config)
        self.task: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self) -> None:
        self.task = asyncio.create_task(self.server.serve())
        for _ in range(500):
            if self.server.started:
                break
            if self.task.done():
                self.task.result()
            await asyncio.sleep(0.01)
        assert self.server.started, "uvicorn did not start"
        self.port = self.server.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            await asyncio.wait_for(self.task, 15)

    @property
    def services(self) -> Services:
        """The app's long-lived services (the server runs in this process)."""
        services: Services = self.app.state.atlas["services"]
        return services

    @property
    def listeners(self) -> Listeners:
        """The broker's count of `threadEvents` subscriptions in place, by thread."""
        return self.services.ai.broker.listeners

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/graphql"

    async def sign_in(self, email: str) -> str:
        """An access token for a new session of `email` (committed in the live database)."""
        runtime = self.app.state.atlas["runtime"]
        async with runtime.sessionmaker() as db:
            user = await find_user_by_email(db=db, email=email)
            assert user is not None, email
            tokens = await start_session(db=db, settings=self.settings, user_id=user.id)
            await db.commit()
        return tokens.access_token


async def finish_leftover_replies(target: DatabaseTarget) -> None:
    """End every reply a test left IN_PROGRESS in the live database (INCOMPLETE), once its
    servers stopped. The live database outlives the test: a reply left running (a worker
    killed, a reply taken over by a made-up worker, a server stopped mid-reply, which releases
    it) would be resumed by the reply sweep of a later test's server, 15 s later or at its
    start, against that test's fake OpenAI: extra upstream calls and events that test never
    made, whenever the timing lined up."""
    engine = create_engine(target, pool_size=1)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                sa.update(Message)
                .where(col(Message.status) == MessageStatus.IN_PROGRESS)
                .values(
                    status=MessageStatus.INCOMPLETE,
                    reply_worker_id=None,
                    error="Left running by a test.",
                )
            )
    finally:
        await engine.dispose()


@pytest.fixture
async def live_server(live_database: DatabaseTarget) -> AsyncIterator[LiveServer]:
    """`create_app` on a real uvicorn against `live_database`. Override `live_settings` in a
    domain's conftest to change settings (e.g. OPENAI_BASE_URL of a fake upstream)."""
    settings = make_settings(live_database)
    server = LiveServer(create_app(settings), settings)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
        await finish_leftover_replies(live_database)


MakeLiveServer = Callable[..., Awaitable[LiveServer]]


@pytest.fixture
async def make_live_server(live_database: DatabaseTarget) -> AsyncIterator[MakeLiveServer]:
    """`await make_live_server(redis_url=...)` -> a real uvicorn with those settings against
    the committed `live_database`; every one started is stopped after the test."""
    servers: list[LiveServer] = []

    async def make(**overrides: Any) -> LiveServer:
        settings = make_settings(live_database, **overrides)
        server = LiveServer(create_app(settings), settings)
        await server.start()
        servers.append(server)
        return server

    try:
        yield make
    finally:
        for server in reversed(servers):
            await server.stop()
        if servers:
            await finish_leftover_replies(live_database)


async def aclose(stream: AsyncIterator[Any]) -> None:
    """Close a broker subscription (an async generator typed as an iterator)."""
    await cast(AsyncGenerator[Any, None], stream).aclose()


# The longest a test waits for a signal (an event, a condition): a guard against a hang that
# a working system never meets, however loaded the machine (two xdist workers next to other
# jobs on two cores); a passing wait returns as soon as its signal holds.
HANG_GUARD = 30.0


async def wait_until(condition: Callable[[], Any], *, timeout: float = HANG_GUARD) -> None:
    """Wait for a signal (a condition of the system under test, sync or async) to hold;
    `timeout` only guards against a hang."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


class Address(Protocol):
    """Where a live server answers (an in-process uvicorn or a server process)."""

    @property
    def http_url(self) -> str: ...

    @property
    def ws_url(self) -> str: ...


class AtlasClient:
    """GraphQL over HTTP and WebSocket against a live server."""

    def __init__(self, server: Address) -> None:
        self.server = server

    async def gql(
        self, query: str, variables: dict[str, Any] | None = None, *, token: str | None = None
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(base_url=self.server.http_url, timeout=30) as client:
            response = await client.post(
                "/graphql", json={"query": query, "variables": variables or {}}, headers=headers
            )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def data(
        self, query: str, variables: dict[str, Any] | None = None, *, token: str | None = None
    ) -> dict[str, Any]:
        body = await self.gql(query, variables, token=token)
        assert "errors" not in body, body
        data: dict[str, Any] = body["data"]
        return data

    @contextlib.asynccontextmanager
    async def subscribe(
        self,
        token: str | None,
        thread_id: str,
        *,
        after_sequence: int | None = 0,
        query: str = EVENTS_SUBSCRIPTION,
        in_place: bool = True,
    ) -> AsyncIterator[Subscription]:
        """Subscribe to the thread's events. Against an in-process server, yields once the
        server's broker has the subscription in place (events published from then on reach
        it), unless `in_place=False` (a subscription expected to be refused)."""
        listeners = self.server.listeners if isinstance(self.server, LiveServer) else None
        thread_uuid = decode_id_of(thread_id, "Thread") if listeners and in_place else None
        before = listeners.total(thread_uuid) if listeners and thread_uuid else 0
        async with websockets.connect(
            self.server.ws_url,
            subprotocols=[Subprotocol("graphql-transport-ws")],
        ) as ws:
            payload = {"Authorization": f"Bearer {token}"} if token else {}
            await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
            ack = json.loads(await ws.recv())
            assert ack["type"] == "connection_ack", ack
            variables = {"threadId": thread_id, "after": after_sequence}
            await ws.send(
                json.dumps(
                    {
                        "id": "1",
                        "type": "subscribe",
                        "payload": {"query": query, "variables": variables},
                    }
                )
            )
            if listeners is not None and thread_uuid is not None:
                async with asyncio.timeout(HANG_GUARD):
                    await listeners.wait_total(thread_uuid, before + 1)
            yield Subscription(ws)


class Subscription:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        # Every event received, in order (what a test reports when the next one never comes).
        self.received: list[dict[str, Any]] = []

    async def message(self, timeout: float = HANG_GUARD) -> dict[str, Any]:
        """The next protocol message other than ping/pong."""
        while True:
            raw = await asyncio.wait_for(self.ws.recv(), timeout)
            message: dict[str, Any] = json.loads(raw)
            if message["type"] == "ping":
                await self.ws.send(json.dumps({"type": "pong"}))
                continue
            if message["type"] != "pong":
                return message

    async def event(self, timeout: float = HANG_GUARD) -> dict[str, Any]:
        message = await self.message(timeout)
        assert message["type"] == "next", message
        assert "errors" not in message["payload"], message
        event: dict[str, Any] = message["payload"]["data"]["threadEvents"]
        self.received.append(event)
        return event

    async def until_final(self, timeout: float = HANG_GUARD) -> list[dict[str, Any]]:
        """Events up to and including the reply's final event (MessageCompleted,
        MessageFailed or MessageCancelled)."""
        events = []
        while True:
            event = await self.event(timeout)
            events.append(event)
            if event["__typename"] in FINAL_TYPES:
                return events
