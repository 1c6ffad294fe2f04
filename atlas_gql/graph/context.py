"""The typed per-request context: session, viewer, DataLoaders, request metadata."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket
from strawberry.dataloader import DataLoader

from atlas_gql.auth.sessions import authenticate_access_token
from atlas_gql.auth.tokens import bearer_token
from atlas_gql.auth.viewer import Viewer
from atlas_gql.config import Settings
from atlas_gql.errors import Unauthenticated
from atlas_gql.graph.runtime import Runtime

LoaderT = TypeVar("LoaderT", bound=DataLoader[Any, Any])

_UNRESOLVED: Any = object()


@dataclass
class Context:
    runtime: Runtime
    request: Request | WebSocket
    response: Response | WebSocket | None = None
    # Set by Strawberry from a WebSocket's connection_init payload.
    connection_params: dict[str, Any] | None = None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    _db: AsyncSession | None = None
    _viewer: Any = _UNRESOLVED
    _loaders: dict[Callable[..., Any], Any] = field(default_factory=dict)
    # True when the operation failed before execution (parse, validation, limits).
    pre_execution_failed: bool = False
    operation_name: str | None = None

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    @property
    def db(self) -> AsyncSession:
        """The request's session, opened on first use and closed when the operation ends."""
        if self._db is None:
            self._db = self.runtime.sessionmaker()
        return self._db

    async def close_db(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    def loader(self, factory: Callable[[Context], LoaderT]) -> LoaderT:
        """The request's DataLoader made by `factory` (one per factory per request)."""
        existing = self._loaders.get(factory)
        if existing is None:
            existing = self._loaders[factory] = factory(self)
        return existing  # type: ignore[no-any-return]

    def reset_loaders(self) -> None:
        """Forget cached loads (long-lived WebSocket contexts call this per event)."""
        self._loaders.clear()

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
        Checked against the database once per request (not cached across requests)."""
        if self._viewer is _UNRESOLVED:
            token = bearer_token(self.authorization)
            self._viewer = (
                None
                if token is None
                else await authenticate_access_token(
                    db=self.db, settings=self.settings, token=token
                )
            )
        return self._viewer  # type: ignore[no-any-return]

    async def require_viewer(self) -> Viewer:
        viewer = await self.viewer()
        if viewer is None:
            raise Unauthenticated()
        return viewer

    @property
    def resolved_viewer(self) -> Viewer | None:
        """The viewer if already resolved this request; never touches the database."""
        return None if self._viewer is _UNRESOLVED else self._viewer  # type: ignore[no-any-return]

    def forget_viewer(self) -> None:
        self._viewer = _UNRESOLVED

    @property
    def client_ip(self) -> str | None:
        client = self.request.client
        return client.host if client else None

    @property
    def user_agent(self) -> str | None:
        value = self.request.headers.get("user-agent")
        return value[:500] if value else None
