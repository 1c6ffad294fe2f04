"""Fixtures of the compiled-read tests: a workspace with every project role, hidden objects,
files, logs and timestamps with and without microseconds; and a helper that runs one
document through both paths (resolver path over HTTP, compiled statement on the test's
connection) for a viewer.

Size: a little over 400 lines on purpose: the one world every equality case reads (made
with tests/factories.py) and the two-path runner it is read through."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from graphql import parse, validate
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from atlas_gql.ai.models import (
    Assistant,
    AssociableType,
    File,
    FileAssociation,
    Message,
    MessageRole,
    MessageStatus,
    Thread,
)
from atlas_gql.app import create_app
from atlas_gql.auth.models import RoleName, User
from atlas_gql.auth.sessions import start_session
from atlas_gql.auth.tokens import decode_access_token
from atlas_gql.config import Settings
from atlas_gql.db.engine import create_engine
from atlas_gql.db.url import DatabaseTarget
from atlas_gql.graph.compiled import Answer, CompiledReads, Fallback
from atlas_gql.graph.schema import build_schema
from atlas_gql.ids import encode_global_id
from atlas_gql.logs.models import ActivityLog, ErrorLog, ErrorSource
from atlas_gql.projects.models import Project, ProjectMember, ProjectRole
from atlas_gql.runtime import CompiledReadStats
from tests.conftest import NO_PERIODIC_SWEEP, GraphQLClient, make_settings, migrated_and_seeded
from tests.factories import (
    add_member,
    create_activity,
    create_assistant,
    create_error,
    create_message,
    create_project,
    create_thread,
    create_user,
    set_setting,
)
from tests.statements import StatementCounter

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
# A JSON setting with what JSON text can vary on: nesting, floats, unicode, quotes, null.
THEME = {
    "dark": True,
    "accent": "blue",
    "ratio": 0.5,
    "tags": ["a", "\u00e9"],
    "quote": 'He said "hi" \u00fc',
    "nested": {"z": None, "a": [1, 2.25, 1e-7, 12345678901234567890]},
}


def at(minutes: float, microseconds: int = 0) -> datetime:
    """A fixed instant: T0 + minutes (+ microseconds); whole seconds when microseconds is 0."""
    return T0 + timedelta(minutes=minutes, microseconds=microseconds)


@dataclass
class World:
    """Who and what exists; `tokens` of each viewer by role label."""

    users: dict[str, User] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    projects: dict[str, Project] = field(default_factory=dict)
    assistants: dict[str, Assistant] = field(default_factory=dict)
    threads: dict[str, Thread] = field(default_factory=dict)
    messages: list[Message] = field(default_factory=list)
    files: dict[str, File] = field(default_factory=dict)
    members: dict[str, ProjectMember] = field(default_factory=dict)
    activity: list[ActivityLog] = field(default_factory=list)
    errors: list[ErrorLog] = field(default_factory=list)

    def gid(self, type_name: str, object_id: uuid.UUID) -> str:
        return encode_global_id(type_name, object_id)


# The viewers every equality case runs for: global ADMIN, each project role in "alpha",
# a user in no project of the world, and an anonymous client (no token).
VIEWERS = ("admin", "owner", "manager", "member", "viewer", "outsider", "anonymous")


async def build_world(db: AsyncSession, settings: Settings) -> World:
    """Create the world (the caller commits)."""
    world = World()
    people = {
        "admin": (RoleName.ADMIN, "Ada Admin"),
        "owner": (RoleName.PROJECT_MANAGER, "Olga Owner"),
        "manager": (RoleName.USER, "Manon Manager"),
        "member": (RoleName.USER, None),
        "viewer": (RoleName.USER, 'Vic "Quote" Viewer'),
        "outsider": (RoleName.USER, "Otto Outsider"),
        "inactive": (RoleName.USER, "Ina Inactive"),
    }
    for index, (label, (role, name)) in enumerate(people.items()):
        world.users[label] = await create_user(
            db,
            roles=(role, RoleName.USER) if label == "owner" else (role,),
            email=f"{label}-{uuid.uuid4().hex[:6]}@Compiled.example.com",
            name=name,
            is_active=label != "inactive",
            created_at=at(-1000 + index, 0 if index % 2 else 123456),
        )
    extras = [
        await create_user(
            db,
            roles=(),
            email=f"extra{number}-{uuid.uuid4().hex[:6]}@compiled.example.com",
            name=f"Extra {number}",
            created_at=at(-900 + number, number * 1000),
        )
        for number in range(9)
    ]

    def new_project(
        creator: str, name: str, created_at: datetime, **fields: Any
    ) -> Awaitable[Project]:
        return create_project(
            db, creator=world.users[creator], creator_joins=False, name=name,
            created_at=created_at, **fields,
        )  # fmt: skip

    alpha = await new_project("owner", "Alpha", at(0, 500), description="The main project")
    beta = await new_project("manager", "Beta_100% done", at(1), description=None)
    gamma = await new_project("outsider", "Gamma (outsider's)", at(2, 1))
    world.projects = {"alpha": alpha, "beta": beta, "gamma": gamma}

    async def join(project: Project, user: User, role: ProjectRole, minute: float) -> ProjectMember:
        return await add_member(db, project, user, role, created_at=at(minute, 7))

    world.members["alpha-owner"] = await join(alpha, world.users["owner"], ProjectRole.OWNER, 10)
    world.members["alpha-manager"] = await join(
        alpha, world.users["manager"], ProjectRole.MANAGER, 11
    )
    world.members["alpha-member"] = await join(alpha, world.users["member"], ProjectRole.MEMBER, 12)
    world.members["alpha-viewer"] = await join(alpha, world.users["viewer"], ProjectRole.VIEWER, 13)
    for number, extra in enumerate(extras):
        # Two members joined at the same instant: the id breaks the tie.
        await join(alpha, extra, ProjectRole.MEMBER, 14 + (number // 2))
    world.members["beta-manager"] = await join(beta, world.users["manager"], ProjectRole.OWNER, 20)
    world.members["beta-outsider"] = await join(beta, world.users["owner"], ProjectRole.VIEWER, 21)
    world.members["gamma-outsider"] = await join(
        gamma, world.users["outsider"], ProjectRole.OWNER, 22
    )
    await set_setting(db, alpha, "monthlyTokenBudget", 1000)
    await set_setting(db, alpha, "theme", THEME)
    await set_setting(db, beta, "defaultAssistantId", "x")

    shared = await create_assistant(
        db, name="Team helper", model="gpt-4o-mini", instructions="Be kind.", temperature=0.7,
        project=alpha, creator=world.users["manager"], created_at=at(30, 250),
    )  # fmt: skip
    personal = await create_assistant(
        db, name="Member's own", model="gpt-4o-mini", description="personal",
        creator=world.users["member"], created_at=at(31),
    )  # fmt: skip
    foreign = await create_assistant(
        db, name="Outsider's own", model="gpt-4o", temperature=None,
        creator=world.users["outsider"], created_at=at(32, 999999),
    )  # fmt: skip
    world.assistants = {"shared": shared, "personal": personal, "foreign": foreign}

    def thread(creator: str, **fields: Any) -> Awaitable[Thread]:
        return create_thread(db, creator=world.users[creator], **fields)

    threads = {
        "alpha-1": await thread("member", title="First", project=alpha, assistant=shared,
                                created_at=at(40)),
        "alpha-2": await thread("owner", title=None, project=alpha, assistant=personal,
                                created_at=at(41, 10)),
        "alpha-3": await thread("viewer", title="Third", project=alpha, created_at=at(41, 10),
                                archived_at=at(60, 5)),
        "alpha-4": await thread("member", title="Fourth", project=alpha, assistant=foreign,
                                openai_thread_id="conv_abc", created_at=at(42, 1), pinned=True),
        "beta-1": await thread("manager", title="Beta thread", project=beta, assistant=shared,
                               created_at=at(43)),
        "personal": await thread("member", title="Mine", assistant=personal,
                                 created_at=at(44, 44)),
        "foreign": await thread("outsider", title="Theirs", assistant=foreign,
                                created_at=at(45)),
    }  # fmt: skip
    world.threads = threads

    parent_id: uuid.UUID | None = None
    for number in range(7):
        message = await create_message(
            db,
            thread=threads["alpha-1"],
            parent_id=parent_id,
            user_id=world.users["member"].id if number % 2 == 0 else None,
            role=MessageRole.USER if number % 2 == 0 else MessageRole.ASSISTANT,
            content=f'Message {number} with "quotes", a tab\t and üñí',
            status=MessageStatus.COMPLETED if number < 6 else MessageStatus.FAILED,
            input_tokens=None if number % 2 == 0 else 10 * number,
            output_tokens=None if number % 2 == 0 else 3 * number,
            error="upstream cut" if number == 6 else None,
            created_at=at(50 + number, 0 if number % 3 == 0 else number * 111),
            completed_at=at(50.5 + number) if number % 2 else None,
        )
        world.messages.append(message)
        parent_id = message.id
    threads["alpha-1"].active_leaf_id = parent_id
    # An abandoned branch (issue 15): another answer to message 2 and a question after it,
    # off the active path, so `messages` lists neither (on both paths).
    abandoned = await create_message(
        db, thread=threads["alpha-1"], parent_id=world.messages[2].id,
        role=MessageRole.ASSISTANT, content="Abandoned answer", created_at=at(52, 500),
    )  # fmt: skip
    await create_message(
        db, thread=threads["alpha-1"], parent_id=abandoned.id,
        user_id=world.users["member"].id, content="Abandoned follow-up", created_at=at(58),
    )  # fmt: skip
    await create_message(db, thread=threads["foreign"], content="hidden", created_at=at(60))

    report = File(filename="report.pdf", bytes=2048, mime_type="application/pdf",
                  openai_file_id=f"file-{uuid.uuid4().hex[:8]}",
                  uploaded_by_id=world.users["member"].id, created_at=at(70))  # fmt: skip
    notes = File(filename="notes.txt", bytes=12, mime_type=None,
                 uploaded_by_id=world.users["member"].id, created_at=at(71, 5))  # fmt: skip
    secret = File(filename="secret.txt", bytes=1, uploaded_by_id=world.users["outsider"].id,
                  created_at=at(72))  # fmt: skip
    db.add_all([report, notes, secret])
    await db.flush()
    world.files = {"report": report, "notes": notes, "secret": secret}
    db.add_all(
        [
            FileAssociation(file_id=notes.id, associable_type=AssociableType.THREAD,
                            associable_id=threads["alpha-1"].id, created_at=at(73)),
            FileAssociation(file_id=report.id, associable_type=AssociableType.THREAD,
                            associable_id=threads["alpha-1"].id, created_at=at(74)),
            FileAssociation(file_id=report.id, associable_type=AssociableType.MESSAGE,
                            associable_id=world.messages[0].id, created_at=at(75)),
            FileAssociation(file_id=report.id, associable_type=AssociableType.ASSISTANT,
                            associable_id=shared.id, created_at=at(76)),
            FileAssociation(file_id=secret.id, associable_type=AssociableType.THREAD,
                            associable_id=threads["foreign"].id, created_at=at(77)),
        ]
    )  # fmt: skip

    logged: list[tuple[Project | None, str]] = [
        (alpha, "project.create"), (alpha, "member.add"), (beta, "project.create"),
        (gamma, "project.create"), (None, "auth.login"), (alpha, "thread.create"),
    ]  # fmt: skip
    for number, (logged_project, action) in enumerate(logged):
        row = await create_activity(
            db,
            action=action,
            user=world.users["owner" if number % 2 else "manager"],
            project=logged_project,
            user_agent=None,
            entity_type="Project" if logged_project else None,
            entity_id=str(logged_project.id) if logged_project else None,
            ip_address="203.0.113.9",
            details={"n": number, "name": 'x"y'} if number % 2 else None,
            created_at=at(80 + number, number * 3),
        )
        world.activity.append(row)
    for number, source in enumerate([ErrorSource.GRAPHQL, ErrorSource.UPSTREAM]):
        error = await create_error(
            db,
            request_id=f"req-{number}",
            source=source,
            error_type="RuntimeError",
            message="boom",
            stack="Traceback ..." if number == 0 else None,
            upstream_status=502 if number else None,
            user_id=world.users["member"].id if number == 0 else None,
            details={"path": ["threads"]},
            created_at=at(90 + number),
            fingerprint=f"fingerprint-{number}",
            window_start=at(90 + number),
            count=3 if number else 1,
            last_seen_at=at(91 + number),
        )
        world.errors.append(error)

    for label, user in world.users.items():
        if label == "inactive":
            continue
        tokens = await start_session(db=db, settings=settings, user_id=user.id)
        world.tokens[label] = tokens.access_token
    return world


@dataclass
class Both:
    """Runs documents through the resolver path (the app over HTTP) and the compiled path
    (the statement on an asyncpg connection of its own) against the same committed data."""

    client: httpx.AsyncClient
    reads: CompiledReads
    driver: Any
    settings: Settings
    world: World

    def token(self, viewer: str) -> str | None:
        return None if viewer == "anonymous" else self.world.tokens[viewer]

    async def compiled(
        self, query: str, variables: dict[str, Any] | None = None, *, viewer: str
    ) -> Answer | Fallback:
        document = parse(query)
        assert not validate(self.reads.schema, document), query
        token = self.token(viewer)
        claims = decode_access_token(token, settings=self.settings) if token else None
        return await self.reads.run(
            document,
            text=query,
            operation_name=None,
            raw_variables=variables,
            connection=self.driver,
            claims=claims,
        )

    async def resolver(
        self, query: str, variables: dict[str, Any] | None = None, *, viewer: str
    ) -> dict[str, Any]:
        return await GraphQLClient(self.client)(query, variables, token=self.token(viewer))

    async def same(
        self, query: str, variables: dict[str, Any] | None = None, *, viewer: str
    ) -> Any:
        """Both paths answer, without errors, the same JSON (key order included); returns
        the answer's data."""
        expected = await self.resolver(query, variables, viewer=viewer)
        assert "errors" not in expected, (viewer, expected["errors"])
        answer = await self.compiled(query, variables, viewer=viewer)
        assert isinstance(answer, Answer), (viewer, answer)
        compiled = json.loads(answer.data)
        assert json.dumps(compiled) == json.dumps(expected["data"]), viewer
        return compiled


@pytest.fixture(scope="session")
def compiled_database(make_database: Any) -> DatabaseTarget:
    """A database of its own, committed once: the equality tests only read. (Rolled-back
    tests join every session to one connection through savepoints, which cannot serve root
    fields that resolve the viewer concurrently.)"""
    return migrated_and_seeded(make_database, "atlas_compiled")


@pytest.fixture(scope="session")
def compiled_settings(compiled_database: DatabaseTarget) -> Settings:
    # Apps that live for the whole session: their periodic reply sweep would send statements
    # inside a test's counted window (tests/conftest.py `NO_PERIODIC_SWEEP`).
    return make_settings(compiled_database, **NO_PERIODIC_SWEEP)


@pytest.fixture(scope="session")
async def compiled_engine(compiled_database: DatabaseTarget) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(compiled_database, pool_size=2)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
async def world(compiled_engine: AsyncEngine, compiled_settings: Settings) -> World:
    async with AsyncSession(compiled_engine, expire_on_commit=False) as db, db.begin():
        return await build_world(db, compiled_settings)


@pytest.fixture(scope="session")
async def both(
    world: World, compiled_engine: AsyncEngine, compiled_settings: Settings
) -> AsyncIterator[Both]:
    # The reference: the resolver path alone (ATLAS_COMPILED_READS=false).
    app = create_app(compiled_settings.model_copy(update={"atlas_compiled_reads": False}))
    async with app.router.lifespan_context(app), compiled_engine.connect() as connection:
        driver = (await connection.get_raw_connection()).driver_connection
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 4321))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            reads = CompiledReads(build_schema()._schema)
            yield Both(client, reads, driver, compiled_settings, world)


@dataclass
class Served:
    """The app as served (ATLAS_COMPILED_READS=true), its engine counting statements."""

    client: httpx.AsyncClient
    app: Any
    counter: StatementCounter

    @property
    def stats(self) -> CompiledReadStats:
        stats: CompiledReadStats = self.app.state.atlas["runtime"].compiled_stats
        return stats


@contextlib.asynccontextmanager
async def serving(
    database: DatabaseTarget, settings: Settings, *, compiled: bool
) -> AsyncIterator[Served]:
    # A pooled connection idle for 10 s is checked when taken (BEGIN, an empty statement,
    # ROLLBACK: db/engine.py `ping_idle_connections`): on a loaded machine that came inside
    # a counted window. The check is tested in tests/db/test_idle_ping.py; not counted here.
    engine = create_engine(database, pool_size=2, ping_after_idle=3600)
    counter = StatementCounter.install(engine)
    app = create_app(settings.model_copy(update={"atlas_compiled_reads": compiled}), engine=engine)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 4321))
            async with httpx.AsyncClient(
                transport=transport, base_url="http://testserver"
            ) as client:
                yield Served(client, app, counter)
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
async def served(
    world: World, compiled_database: DatabaseTarget, compiled_settings: Settings
) -> AsyncIterator[Served]:
    """The app with compiled reads on (the default), on the world's data."""
    async with serving(compiled_database, compiled_settings, compiled=True) as app:
        yield app


@pytest.fixture(scope="session")
async def served_off(
    world: World, compiled_database: DatabaseTarget, compiled_settings: Settings
) -> AsyncIterator[Served]:
    """The same with ATLAS_COMPILED_READS=false, its statements counted too."""
    async with serving(compiled_database, compiled_settings, compiled=False) as app:
        yield app
