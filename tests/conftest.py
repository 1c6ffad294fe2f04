"""Test fixtures: a throw-away PostgreSQL database per run (migrated once, seeded once), each
test inside a transaction that is rolled back, and the ASGI app bound to that transaction."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from atlas_gql.app import create_app
from atlas_gql.auth.account import find_user_by_email
from atlas_gql.auth.sessions import start_session
from atlas_gql.config import Settings
from atlas_gql.db.engine import can_connect, create_engine, drop_database, ensure_database
from atlas_gql.db.migrate import upgrade_to_head
from atlas_gql.db.session import SerializedAsyncSession
from atlas_gql.db.url import DatabaseTarget, parse_database_url
from atlas_gql.seed import seed

pytest_plugins = ["tests.live"]

SEED_PASSWORD = "seed-password-for-tests"
LOCAL_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _server_url() -> tuple[str, Any]:
    """TEST_DATABASE_URL, else the server on 127.0.0.1:5432, else an embedded one."""
    if os.environ.get("TEST_DATABASE_URL"):
        return os.environ["TEST_DATABASE_URL"], None
    if asyncio.run(can_connect(parse_database_url(LOCAL_SERVER_URL), timeout=2)):
        return LOCAL_SERVER_URL, None
    import pgserver

    data_dir = tempfile.mkdtemp(prefix="atlas-test-pg-")
    server = pgserver.get_server(data_dir, cleanup_mode="delete")  # type: ignore[attr-defined]
    return server.get_uri("postgres"), server


@pytest.fixture(scope="session")
def server_target() -> Iterator[DatabaseTarget]:
    """The PostgreSQL server tests run on (its maintenance database)."""
    url, embedded = _server_url()
    yield parse_database_url(url)
    if embedded is not None:
        embedded.cleanup()


@pytest.fixture(scope="session")
def make_database(server_target: DatabaseTarget) -> Iterator[Any]:
    """Factory of fresh, uniquely named databases; all dropped at the end of the run."""
    created: list[DatabaseTarget] = []

    def make(prefix: str = "atlas_test") -> DatabaseTarget:
        target = server_target.with_database(f"{prefix}_{uuid.uuid4().hex[:10]}")
        asyncio.run(ensure_database(target))
        created.append(target)
        return target

    yield make
    for target in created:
        asyncio.run(drop_database(target))


def migrated_and_seeded(make_database: Any, prefix: str) -> DatabaseTarget:
    """A new database migrated to head with Alembic and seeded once (committed)."""
    target: DatabaseTarget = make_database(prefix)
    upgrade_to_head(target)

    async def seed_once() -> None:
        engine = create_engine(target, pool_size=1)
        try:
            async with AsyncSession(engine) as db, db.begin():
                await seed(db, settings=make_settings(target))
        finally:
            await engine.dispose()

    asyncio.run(seed_once())
    return target


@pytest.fixture(scope="session")
def database_target(make_database: Any) -> DatabaseTarget:
    """The run's database for rolled-back tests."""
    return migrated_and_seeded(make_database, "atlas_test")


def make_settings(target: DatabaseTarget, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": target.url.render_as_string(hide_password=False),
        "atlas_env": "development",
        "atlas_jwt_secret": "test-secret-" + "x" * 40,
        "atlas_seed_password": SEED_PASSWORD,
        "openai_api_key": "sk-test-key",
        "atlas_cors_origins": ["http://localhost:3000"],
        "redis_url": None,
        # The suite shares its users (the seeded ones send most messages, many tests register
        # accounts from one address): the spend and request limits are tested where they are
        # set (tests/ai/test_user_limits.py, tests/auth/test_registration_limits.py).
        "atlas_user_monthly_tokens": None,
        "atlas_user_messages_per_minute": 1_000_000,
        "atlas_registrations_per_hour": 1_000_000,
        "atlas_registrations_per_hour_global": 1_000_000,
        # Titles are a model call of their own after a first reply: tests that count model
        # calls, usage rows or events would see it. Tested where turned on
        # (tests/ai/test_titles.py).
        "atlas_auto_titles": False,
        # Error rows per source are bounded where that is tested (tests/logs/
        # test_error_log_folding.py): elsewhere tests look up each reply's own row.
        "atlas_error_log_rows_per_window": 1_000_000,
        # Merging by wait time depends on how busy the machine is: tests that compare each
        # delta would see merges (ATLAS_SUBSCRIBER_MERGE_AFTER is tested with a fake clock in
        # tests/ai/test_units.py; merging by backlog stays on).
        "atlas_subscriber_merge_after": 0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


# Settings of an app whose periodic reply sweep (every half of the shorter of the two) does
# not come round during a test. An in-process app on the test's one connection (`app`,
# tests/auth/conftest.py `make_gql`) must not sweep: the sweep would run there between a
# request's statements and release the request's savepoint under it ("savepoint does not
# exist" on a loaded machine). Live servers use it where a test calls the sweep's work itself.
NO_PERIODIC_SWEEP = {"atlas_reply_stale_after": 3600.0, "atlas_reply_resume_after": 3600.0}


@pytest.fixture(scope="session")
def settings(database_target: DatabaseTarget) -> Settings:
    return make_settings(database_target)


@pytest.fixture(scope="session")
async def engine(database_target: DatabaseTarget) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_target, pool_size=5)
    yield engine
    await engine.dispose()


@pytest.fixture
async def connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection inside a transaction that is rolled back after the test."""
    async with engine.connect() as connection:
        transaction = await connection.begin()
        try:
            yield connection
        finally:
            if transaction.is_active:
                await transaction.rollback()


@pytest.fixture
def sessionmaker(connection: AsyncConnection) -> async_sessionmaker[AsyncSession]:
    """Sessions joined to the test transaction: their commits are savepoints."""
    return async_sessionmaker(
        bind=connection,
        class_=SerializedAsyncSession,
        expire_on_commit=False,
        autoflush=False,
        join_transaction_mode="create_savepoint",
    )


@pytest.fixture
async def db(sessionmaker: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    async with sessionmaker() as session:
        yield session


@pytest.fixture
async def app(
    settings: Settings, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> AsyncIterator[Any]:
    # This app's sessions share the test's one connection. Its periodic reply sweep (every
    # few seconds) would run there between a request's statements and release the request's
    # savepoint under it (a test slowed down by a loaded machine met "savepoint does not
    # exist"); sweeping is tested on live servers, so here it does not come round.
    quiet = settings.model_copy(update=NO_PERIODIC_SWEEP)
    application = create_app(quiet, engine=engine, sessionmaker=sessionmaker)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 4321))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


class GraphQLClient:
    """Posts GraphQL documents to the app, optionally as a signed-in user."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def post(
        self,
        query: str,
        variables: dict[str, Any] | None = None,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        all_headers = dict(headers or {})
        if token:
            all_headers["Authorization"] = f"Bearer {token}"
        return await self.client.post(
            "/graphql", json={"query": query, "variables": variables or {}}, headers=all_headers
        )

    async def __call__(
        self, query: str, variables: dict[str, Any] | None = None, *, token: str | None = None
    ) -> dict[str, Any]:
        response = await self.post(query, variables, token=token)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@pytest.fixture
def gql(client: httpx.AsyncClient) -> GraphQLClient:
    return GraphQLClient(client)


@pytest.fixture
def sign_in(db: AsyncSession, settings: Settings) -> Any:
    """`await sign_in("admin@example.com")` -> an access token for a new session."""

    async def sign_in(email: str) -> str:
        user = await find_user_by_email(db=db, email=email)
        assert user is not None, email
        tokens = await start_session(db=db, settings=settings, user_id=user.id)
        await db.commit()
        return tokens.access_token

    return sign_in


@contextlib.contextmanager
def counting_statements(engine: AsyncEngine) -> Iterator[list[str]]:
    """The SQL statements the engine runs inside the block (for no-N+1 checks)."""
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    sa.event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        sa.event.remove(engine.sync_engine, "before_cursor_execute", count)


def error_codes(body: dict[str, Any]) -> list[str]:
    return [error.get("extensions", {}).get("code") for error in body.get("errors", [])]


@pytest.fixture
def resolver_path_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every query takes the resolver path (for tests that make a resolver or a loader fail:
    the compiled path would answer without calling it)."""
    from atlas_gql.graph.compiled.endpoint import CompiledEndpoint

    async def resolvers_answer(self: Any, request: Any, runtime: Any) -> None:
        return None

    monkeypatch.setattr(CompiledEndpoint, "answer", resolvers_answer)
