"""AI test fixtures: a fake OpenAI on loopback, ATLAS on a real uvicorn pointed at it,
GraphQL over HTTP and graphql-transport-ws clients, and users in every project role."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import httpx
import pytest
import sqlalchemy as sa
import websockets
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from atlas_gql.ai.models import Assistant
from atlas_gql.app import create_app
from atlas_gql.auth.account import create_user_account
from atlas_gql.auth.models import RoleName
from atlas_gql.db.url import DatabaseTarget
from atlas_gql.ids import decode_id_of
from atlas_gql.projects.models import Project, ProjectMember, ProjectRole
from atlas_gql.seed import SAMPLE_ASSISTANT_NAME
from tests.ai.fake_openai import FakeOpenAI
from tests.conftest import SEED_PASSWORD, LiveServer, make_settings

UPSTREAM_KEY = "sk-fake-upstream-key-for-tests"

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

CREATE_THREAD = """
mutation($input: CreateThreadInput!) {
  createThread(input: $input) { id title openaiThreadId assistant { id name } }
}
"""

SEND_MESSAGE = """
mutation($input: SendMessageInput!) {
  sendMessage(input: $input) {
    userMessage { id role status content }
    assistantMessage { id role status content }
    afterSequence
  }
}
"""


async def aclose(stream: AsyncIterator[Any]) -> None:
    """Close a broker subscription (an async generator typed as an iterator)."""
    await cast(AsyncGenerator[Any, None], stream).aclose()


async def wait_until(condition: Callable[[], Any], *, timeout: float = 10) -> None:
    """Wait for a signal (a condition of the system under test, sync or async) to hold."""
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
            subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
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
                async with asyncio.timeout(10):
                    await listeners.wait_total(thread_uuid, before + 1)
            yield Subscription(ws)


class Subscription:
    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def message(self, timeout: float = 10) -> dict[str, Any]:
        """The next protocol message other than ping/pong."""
        while True:
            raw = await asyncio.wait_for(self.ws.recv(), timeout)
            message: dict[str, Any] = json.loads(raw)
            if message["type"] == "ping":
                await self.ws.send(json.dumps({"type": "pong"}))
                continue
            if message["type"] != "pong":
                return message

    async def event(self, timeout: float = 10) -> dict[str, Any]:
        message = await self.message(timeout)
        assert message["type"] == "next", message
        assert "errors" not in message["payload"], message
        event: dict[str, Any] = message["payload"]["data"]["threadEvents"]
        return event

    async def until_final(self, timeout: float = 15) -> list[dict[str, Any]]:
        """Events up to and including the reply's final event (MessageCompleted,
        MessageFailed or MessageCancelled)."""
        events = []
        while True:
            event = await self.event(timeout)
            events.append(event)
            if event["__typename"] in FINAL_TYPES:
                return events


@dataclass
class People:
    """Tokens of users in each role of the sample project, and the project's ids."""

    member: str
    manager: str
    viewer: str
    outsider: str
    admin: str
    project_id: str
    project_uuid: uuid.UUID
    assistant_id: str


@dataclass
class AIServer:
    server: LiveServer
    client: AtlasClient
    fake: FakeOpenAI
    people: People

    async def new_thread(self, token: str | None = None, title: str = "Test thread") -> str:
        data = await self.client.data(
            CREATE_THREAD,
            {
                "input": {
                    "projectId": self.people.project_id,
                    "assistantId": self.people.assistant_id,
                    "title": title,
                }
            },
            token=token or self.people.member,
        )
        thread_id: str = data["createThread"]["id"]
        return thread_id

    async def send(
        self, thread_id: str, content: str = "Hi there", *, token: str | None = None, **extra: Any
    ) -> dict[str, Any]:
        return await self.client.gql(
            SEND_MESSAGE,
            {"input": {"threadId": thread_id, "content": content, **extra}},
            token=token or self.people.member,
        )


async def _people(server: LiveServer) -> People:
    runtime = server.app.state.atlas["runtime"]
    return await make_people(runtime.sessionmaker, server.sign_in)


async def make_people(
    sessionmaker: async_sessionmaker[AsyncSession], sign_in: Callable[[str], Awaitable[str]]
) -> People:
    """Users in each role of the sample project (new ones, but for the seeded member and
    admin), signed in with `sign_in(email)`."""
    from atlas_gql.ids import encode_global_id

    suffix = uuid.uuid4().hex[:8]
    async with sessionmaker() as db:
        project = (
            await db.execute(sa.select(Project).where(col(Project.name) == "Sample Project"))
        ).scalar_one()
        assistant = (
            await db.execute(
                sa.select(Assistant).where(col(Assistant.name) == SAMPLE_ASSISTANT_NAME)
            )
        ).scalar_one()
        emails = {}
        for label, role in (("viewer", ProjectRole.VIEWER), ("manager", ProjectRole.MANAGER)):
            user = await create_user_account(
                db=db,
                email=f"{label}-{suffix}@example.com",
                password=SEED_PASSWORD,
                roles=(RoleName.USER,),
                bcrypt_rounds=4,
            )
            db.add(ProjectMember(project_id=project.id, user_id=user.id, role=role))
            emails[label] = user.email
        outsider = await create_user_account(
            db=db,
            email=f"outsider-{suffix}@example.com",
            password=SEED_PASSWORD,
            roles=(RoleName.USER,),
            bcrypt_rounds=4,
        )
        await db.commit()
    return People(
        member=await sign_in("user@example.com"),
        manager=await sign_in(emails["manager"]),
        viewer=await sign_in(emails["viewer"]),
        outsider=await sign_in(outsider.email),
        admin=await sign_in("admin@example.com"),
        project_id=encode_global_id("Project", project.id),
        project_uuid=project.id,
        assistant_id=encode_global_id("Assistant", assistant.id),
    )


StartServer = Callable[..., Awaitable[AIServer]]


@pytest.fixture
async def start_ai_server(
    live_database: DatabaseTarget, fake_openai: FakeOpenAI
) -> AsyncIterator[StartServer]:
    """`await start_ai_server(**setting_overrides)`: ATLAS on uvicorn against the fake."""
    servers: list[LiveServer] = []

    async def start(**overrides: Any) -> AIServer:
        values: dict[str, Any] = {
            "openai_base_url": fake_openai.base_url,
            "openai_api_key": UPSTREAM_KEY,
            "atlas_openai_timeout": 5.0,
        }
        values.update(overrides)
        settings = make_settings(live_database, **values)
        server = LiveServer(create_app(settings), settings)
        await server.start()
        servers.append(server)
        return AIServer(
            server=server,
            client=AtlasClient(server),
            fake=fake_openai,
            people=await _people(server),
        )

    yield start
    for server in reversed(servers):
        await server.stop()


@pytest.fixture
async def ai(start_ai_server: StartServer) -> AIServer:
    """ATLAS (Responses API adapter, in-memory broker) against the fake OpenAI."""
    return await start_ai_server()
