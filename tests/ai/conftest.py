"""AI test fixtures: a fake OpenAI on loopback, ATLAS on a real uvicorn pointed at it,
GraphQL over HTTP and graphql-transport-ws clients, and users in every project role."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from atlas_gql.ai.models import Assistant
from atlas_gql.auth.models import RoleName, User
from atlas_gql.db.url import DatabaseTarget
from atlas_gql.projects.models import Project, ProjectRole
from atlas_gql.seed import SAMPLE_ASSISTANT_NAME
from tests.ai.fake_openai import FakeOpenAI
from tests.ai.tcp_proxy import CommitCutProxy
from tests.conftest import SEED_PASSWORD
from tests.factories import add_member, create_user
from tests.live import AtlasClient, LiveServer, MakeLiveServer

UPSTREAM_KEY = "sk-fake-upstream-key-for-tests"


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

    async def new_thread(self, token: str | None = None, title: str | None = "Test thread") -> str:
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
            user = await signing_in_user(db, label)
            await add_member(db, project, user, role)
            emails[label] = user.email
        outsider = await signing_in_user(db, "outsider")
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


async def signing_in_user(
    db: AsyncSession, label: str, roles: tuple[RoleName, ...] = (RoleName.USER,)
) -> User:
    """An approved user (a USER by default) who signs in with the seed password
    (`server.sign_in(email)`)."""
    return await create_user(
        db, roles=roles, label=label, password=SEED_PASSWORD, approved_at=datetime.now(UTC)
    )


StartServer = Callable[..., Awaitable[AIServer]]


# Seconds a broker command may wait for Redis in tests, and a SUBSCRIBE for its confirmation
# (see `start_ai_server`): guards against a hung Redis, never met by a working one, however
# loaded the machine.
TEST_REDIS_TIMEOUT = 5.0
TEST_REDIS_SUBSCRIBE_TIMEOUT = 10.0


@pytest.fixture
def start_ai_server(make_live_server: MakeLiveServer, fake_openai: FakeOpenAI) -> StartServer:
    """`await start_ai_server(**setting_overrides)`: ATLAS on uvicorn against the fake."""

    async def start(**overrides: Any) -> AIServer:
        values: dict[str, Any] = {
            "openai_base_url": fake_openai.base_url,
            "openai_api_key": UPSTREAM_KEY,
            "atlas_openai_timeout": 5.0,
            # With a real Redis, a command must not meet the 0.25 s production default on a
            # loaded test machine (two xdist workers, servers and clients in one event loop):
            # a stall there opens the circuit and a subscription meets BROKER_UNAVAILABLE, or
            # another worker misses events. Nor a SUBSCRIBE its 2 s. Tests of the circuit
            # itself (test_redis_outage.py, test_broker_timeouts.py) set their own.
            "atlas_redis_timeout": TEST_REDIS_TIMEOUT,
            "atlas_redis_subscribe_timeout": TEST_REDIS_SUBSCRIBE_TIMEOUT,
        }
        values.update(overrides)
        server = await make_live_server(**values)
        return AIServer(
            server=server,
            client=AtlasClient(server),
            fake=fake_openai,
            people=await _people(server),
        )

    return start


@pytest.fixture
async def ai(start_ai_server: StartServer) -> AIServer:
    """ATLAS (Responses API adapter, in-memory broker) against the fake OpenAI."""
    return await start_ai_server()


@pytest.fixture
async def pg_cut(live_database: DatabaseTarget) -> AsyncIterator[CommitCutProxy]:
    """A CommitCutProxy in front of the live database's server (a server started with
    `database_url` through its port has every connection go through it)."""
    url = live_database.url
    async with CommitCutProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        yield proxy
