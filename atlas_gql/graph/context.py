"""The typed context: the app's services and the request, plus what belongs to one operation:
its session, its actor (viewer, address, user agent, request id), its DataLoaders and the
field tasks the executor runs (`graph/execution.py`)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypedDict, TypeVar, cast

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket
from strawberry.dataloader import DataLoader
from strawberry.types import Info as StrawberryInfo

from atlas_gql.ai.orchestrator import AIRuntime
from atlas_gql.auth.actor import Actor
from atlas_gql.auth.apikeys import authenticate_api_key, is_api_key
from atlas_gql.auth.sessions import authenticate_access_token, authenticate_access_token_alone
from atlas_gql.auth.tokens import bearer_token
from atlas_gql.auth.viewer import Viewer, ViewerSource
from atlas_gql.config import Settings
from atlas_gql.db.loaders import ReadSessionSource
from atlas_gql.db.session import ReadSession, SerializedAsyncSession
from atlas_gql.graph.services import Services
from atlas_gql.runtime import Runtime

LoaderT = TypeVar("LoaderT", bound=DataLoader[Any, Any])

_UNRESOLVED: Any = object()


class Writing(TypedDict):
    """What a mutation hands the service it calls (`**await context.writing()`): the
    operation's session, committed once at the operation boundary, and who acts."""

    db: SerializedAsyncSession
    actor: Actor


class Reading(TypedDict):
    """What a query hands the service it calls (`**await context.reading()`): the operation's
    session, typed for reading, and who asks."""

    db: ReadSession
    actor: Actor


class SigningIn(TypedDict):
    """What the account services that open, rotate or re-check a session take (`**await
    context.signing_in()`, plus `db` where they read the user): a sessionmaker for their own
    short transactions, the settings, and who acts."""

    sessionmaker: async_sessionmaker[AsyncSession]
    settings: Settings
    actor: Actor


class WritingAI(Writing):
    """`Writing` and the AI runtime, as the AI domain's mutations take them."""

    ai: AIRuntime


class ReadingAI(Reading):
    """`Reading` and the AI runtime, as the AI domain's queries take them."""

    ai: AIRuntime


@dataclass
class OperationState:
    """What belongs to one GraphQL operation: its session, viewer, actor, DataLoaders, request
    id, and the field tasks still running."""

    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    db: SerializedAsyncSession | None = None
    viewer: Any = _UNRESOLVED
    viewer_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    actor: Actor | None = None
    loaders: dict[Callable[..., Any], Any] = field(default_factory=dict)
    operation_name: str | None = None
    # A query: its session reads one snapshot (REPEATABLE READ), see `read_one_snapshot`.
    one_snapshot: bool = False
    field_tasks: set[asyncio.Future[Any]] = field(default_factory=set)

    def track(self, task: asyncio.Future[Any]) -> None:
        """A field resolving in the background (see `graph/execution.py`)."""
        self.field_tasks.add(task)
        task.add_done_callback(self.field_tasks.discard)

    async def settle_fields(self) -> None:
        """Wait until no field of the operation runs any more (each reported its own error)."""
        current = asyncio.current_task()
        while pending := self.field_tasks - {current}:
            await asyncio.gather(*pending, return_exceptions=True)


OperationToken = Token["tuple[Context, OperationState] | None"]

# The running operation's state. A WebSocket has one Context for its whole life and runs each
# of its operations in an asyncio task of its own. A ContextVar set when an operation starts
# (ErrorMappingExtension.on_operation) is seen by that task and the tasks it spawns (field
# resolvers, DataLoader batches) and by no other operation: operations on one socket never
# share a session, a cached viewer or a loader cache, and each authenticates again, so a
# revoked session stops working on an open socket too.
_current: ContextVar[tuple[Context, OperationState] | None] = ContextVar(
    "atlas_operation", default=None
)


@dataclass
class Context:
    services: Services
    request: Request | WebSocket
    response: Response | WebSocket | None = None
    # Set by Strawberry from a WebSocket's connection_init payload.
    connection_params: dict[str, Any] | None = None
    # True when an HTTP operation failed before execution (parse, validation, limits).
    pre_execution_failed: bool = False
    # Outside any operation (the WebSocket handshake), the state lives here: made when first
    # used, forgotten once the handshake is done (`forget_connection_state`).
    _connection_state: OperationState | None = None
    # Whether an operation's executor exists: its document parsed, validated and passed the
    # limits, its variables were coerced. Subscriptions over HTTP wait for it (graph/streams.py)
    # on an Event made only then (a WebSocket's context lives long: memory per socket).
    _execution_started: bool = False
    _execution_waiter: asyncio.Event | None = None

    @property
    def connection_state(self) -> OperationState:
        if self._connection_state is None:
            self._connection_state = OperationState()
        return self._connection_state

    def forget_connection_state(self) -> None:
        """Drop what the handshake resolved (its viewer): a WebSocket's operations each have
        their own state, and the socket may stay open for hours (memory per socket)."""
        self._connection_state = None

    def mark_execution_started(self) -> None:
        """The operation's executor exists (graph/execution.py)."""
        self._execution_started = True
        if self._execution_waiter is not None:
            self._execution_waiter.set()

    async def execution_started(self) -> None:
        """Return once an operation's executor exists."""
        if self._execution_started:
            return
        if self._execution_waiter is None:
            self._execution_waiter = asyncio.Event()
        await self._execution_waiter.wait()

    def begin_operation(self, request_id: str | None = None) -> OperationToken:
        """Give the current operation fresh state (the error-mapping extension calls this),
        under the HTTP request's id when there is one."""
        state = OperationState() if request_id is None else OperationState(request_id=request_id)
        return _current.set((self, state))

    def end_operation(self, token: OperationToken) -> None:
        _current.reset(token)

    @property
    def state(self) -> OperationState:
        current = _current.get()
        if current is not None and current[0] is self:
            return current[1]
        return self.connection_state

    @property
    def request_id(self) -> str:
        return self.state.request_id

    @property
    def operation_name(self) -> str | None:
        return self.state.operation_name

    @operation_name.setter
    def operation_name(self, name: str | None) -> None:
        self.state.operation_name = name

    @property
    def runtime(self) -> Runtime:
        return self.services.runtime

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    @property
    def db(self) -> SerializedAsyncSession:
        """The operation's session, opened on first use. Services flush; the operation boundary
        commits it once (mutations) or closes it (queries)."""
        state = self.state
        if state.db is None:
            state.db = cast(SerializedAsyncSession, self.runtime.sessionmaker())
            if state.one_snapshot:
                state.db.read_one_snapshot()
        return state.db

    def read_one_snapshot(self) -> None:
        """Have the operation read one snapshot of the database: every field of a query sees
        the same committed state (the boundary calls this for queries; a mutation reads and
        writes at READ COMMITTED under its locks)."""
        state = self.state
        state.one_snapshot = True
        if state.db is not None:
            state.db.read_one_snapshot()

    def read_session(self) -> ReadSession:
        """The operation's session, typed for reading (what queries and DataLoaders use)."""
        return self.db

    async def writing(self) -> Writing:
        """The operation's session and actor, as a mutation's service call takes them."""
        return Writing(db=self.db, actor=await self.actor())

    async def reading(self) -> Reading:
        """The operation's session (for reading) and actor, as a query's service call takes
        them."""
        return Reading(db=self.read_session(), actor=await self.actor())

    async def signing_in(self) -> SigningIn:
        """The sessionmaker, settings and actor of register, login, refreshSession and
        changePassword."""
        return SigningIn(
            sessionmaker=self.runtime.sessionmaker, settings=self.settings, actor=await self.actor()
        )

    async def ai_writing(self) -> WritingAI:
        """`writing()` and the AI runtime."""
        return WritingAI(db=self.db, actor=await self.actor(), ai=self.services.ai)

    async def ai_reading(self) -> ReadingAI:
        """`reading()` and the AI runtime."""
        return ReadingAI(db=self.read_session(), actor=await self.actor(), ai=self.services.ai)

    async def commit_db(self) -> None:
        """Commit the operation's work (the boundary calls this once, after a mutation), then
        close the session."""
        state = self.state
        if state.db is not None:
            await state.settle_fields()
            db, state.db = state.db, None
            try:
                if db.in_transaction():
                    await db.commit()
            finally:
                await db.close()

    async def close_db(self) -> None:
        """End the operation's session, rolling back anything uncommitted; waits for the
        operation's fields first, so no resolver ever finds its session closed under it."""
        state = self.state
        if state.db is not None:
            await state.settle_fields()
            db, state.db = state.db, None
            await db.close()

    def loader(self, factory: Callable[[ReadSessionSource], LoaderT]) -> LoaderT:
        """The operation's DataLoader made by `factory` (one per factory per operation)."""
        loaders = self.state.loaders
        existing = loaders.get(factory)
        if existing is None:
            existing = loaders[factory] = factory(self.read_session)
        return existing

    def viewer_loader(
        self, factory: Callable[[ReadSessionSource, ViewerSource], LoaderT]
    ) -> LoaderT:
        """The operation's DataLoader made by `factory`, for loads that depend on who asks."""
        loaders = self.state.loaders
        existing = loaders.get(factory)
        if existing is None:
            existing = loaders[factory] = factory(self.read_session, self.viewer)
        return existing

    def reset_loaders(self) -> None:
        """Forget cached loads (a long-running subscription calls this between events)."""
        self.state.loaders.clear()

    @property
    def authorization(self) -> str | None:
        if self.connection_params is not None:
            value = self.connection_params.get("Authorization") or self.connection_params.get(
                "authorization"
            )
            return value if isinstance(value, str) else None
        return self.request.headers.get("authorization")

    async def viewer(self) -> Viewer | None:
        """The signed-in viewer, None without a token; a bad token is UNAUTHENTICATED.
        Checked against the database once per operation, never cached across operations."""
        state = self.state
        if state.viewer is _UNRESOLVED:
            # Sibling resolvers ask at the same time: one of them authenticates.
            async with state.viewer_lock:
                if state.viewer is _UNRESOLVED:
                    state.viewer = await self._authenticate()
        return state.viewer  # type: ignore[no-any-return]

    async def _authenticate(self) -> Viewer | None:
        token = bearer_token(self.authorization)
        if token is None:
            return None
        if is_api_key(token):
            # A personal API key: checked on a short session of its own, whatever the
            # operation (its last-use stamp, when due, commits on another one).
            return await authenticate_api_key(
                sessionmaker=self.runtime.sessionmaker, settings=self.settings, secret=token
            )
        if self.state.one_snapshot:
            # A query checks the session on its own session, in its snapshot (issue 13: a
            # session of its own cost a connection checkout and a BEGIN/ROLLBACK pair per read).
            return await authenticate_access_token(
                db=self.read_session(), settings=self.settings, token=token
            )
        # Mutations and subscriptions: a short session of its own. A mutation's transaction
        # then starts with its first field (so a refused field rolls back alone, keeping
        # what it wrote in transactions of its own); a subscription holds no connection
        # while it waits for events.
        # Its one statement commits on its own, on the driver's connection: no BEGIN and no
        # ROLLBACK round trip, no ORM session.
        return await authenticate_access_token_alone(
            sessionmaker=self.runtime.sessionmaker, settings=self.settings, token=token
        )

    async def actor(self) -> Actor:
        """Who runs this operation, from where: built once per operation."""
        state = self.state
        if state.actor is None:
            state.actor = Actor(
                viewer=await self.viewer(),
                ip_address=self._client_ip,
                user_agent=self._user_agent,
                request_id=state.request_id,
            )
        return state.actor

    @property
    def resolved_viewer(self) -> Viewer | None:
        """The viewer if already resolved in this operation; never touches the database."""
        viewer = self.state.viewer
        return None if viewer is _UNRESOLVED else viewer

    @property
    def _client_ip(self) -> str | None:
        client = self.request.client
        return client.host if client else None

    @property
    def _user_agent(self) -> str | None:
        value = self.request.headers.get("user-agent")
        return value[:500] if value else None


# What resolvers take as `info`: Strawberry's Info with ATLAS's Context.
Info: TypeAlias = StrawberryInfo[Context, None]
