"""The project's own exceptions. Services raise these; `graph/errors.py` maps them to
GraphQL `extensions.code`. Anything else reaching the client is masked."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class ErrorCode(StrEnum):
    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    BAD_USER_INPUT = "BAD_USER_INPUT"
    # The request itself is malformed (HTTP 400): not JSON, wrong fields, an unknown or
    # missing operationName, an operation type the method or transport does not allow.
    BAD_REQUEST = "BAD_REQUEST"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    CONFLICT = "CONFLICT"
    RATE_LIMITED = "RATE_LIMITED"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    UPSTREAM_ERROR = "UPSTREAM_ERROR"
    DB_UNAVAILABLE = "DB_UNAVAILABLE"
    BROKER_UNAVAILABLE = "BROKER_UNAVAILABLE"
    INTERNAL_SERVER_ERROR = "INTERNAL_SERVER_ERROR"


class AtlasError(Exception):
    """An error whose message is safe to show to the client. A subclass names its code and
    default message as class keywords: `class NotFound(AtlasError, code=..., message=...)`."""

    code: ErrorCode = ErrorCode.INTERNAL_SERVER_ERROR
    default_message = "Internal server error."

    def __init_subclass__(cls, *, code: ErrorCode, message: str, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.code = code
        cls.default_message = message

    def __init__(self, message: str | None = None, **extensions: Any) -> None:
        self.message = message or self.default_message
        self.extensions: dict[str, Any] = extensions
        super().__init__(self.message)


class Unauthenticated(
    AtlasError, code=ErrorCode.UNAUTHENTICATED, message="Authentication required."
):
    pass


class Forbidden(AtlasError, code=ErrorCode.FORBIDDEN, message="You are not allowed to do this."):
    pass


class NotFound(AtlasError, code=ErrorCode.NOT_FOUND, message="Not found."):
    pass


class BadInput(AtlasError, code=ErrorCode.BAD_USER_INPUT, message="Invalid input."):
    def __init__(self, message: str | None = None, *, field: str | None = None, **extra: Any):
        if field is not None:
            extra["field"] = field
        super().__init__(message, **extra)


class BadRequest(AtlasError, code=ErrorCode.BAD_REQUEST, message="Malformed request."):
    """A request that is not a well-formed GraphQL request (answered before execution)."""


class Conflict(AtlasError, code=ErrorCode.CONFLICT, message="This conflicts with existing data."):
    pass


class RateLimited(
    AtlasError, code=ErrorCode.RATE_LIMITED, message="Too many attempts; try again later."
):
    def __init__(self, message: str | None = None, *, retry_after: int, **extra: Any) -> None:
        super().__init__(message, retryAfter=retry_after, **extra)
        self.retry_after = retry_after


class QuotaExceeded(AtlasError, code=ErrorCode.QUOTA_EXCEEDED, message="Quota exceeded."):
    pass


class UpstreamError(
    AtlasError, code=ErrorCode.UPSTREAM_ERROR, message="The AI provider failed to answer."
):
    pass


class DbUnavailable(
    AtlasError,
    code=ErrorCode.DB_UNAVAILABLE,
    message="The database is unavailable; try again shortly.",
):
    pass


class BrokerUnavailable(
    AtlasError,
    code=ErrorCode.BROKER_UNAVAILABLE,
    message="Live events are unavailable right now; try again shortly.",
):
    """The event broker (Redis) does not answer: live events cannot be delivered now."""


# --- errors answered below GraphQL (body limits, slow bodies, oversized headers) --------------


def error_body(message: str, code: str) -> bytes:
    """A GraphQL-shaped JSON error body, for refusals made before GraphQL runs."""
    return json.dumps({"errors": [{"message": message, "extensions": {"code": code}}]}).encode()


async def send_error_response(
    send: Send, *, status: int, message: str, code: str, close: bool = False
) -> None:
    """Answer an ASGI HTTP request with `error_body`; `close` when the rest of the request
    may still be on its way and must not be read as another request."""
    body = error_body(message, code)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def run_or_refuse(
    app: ASGIApp,
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    refusal: type[Exception],
    refuse: Callable[[Send], Awaitable[None]],
) -> None:
    """Run `app`; when `receive` raises `refusal` (a limit the request broke), answer with
    `refuse` unless the app has already started its response."""
    response_started = False

    async def tracking_send(message: Message) -> None:
        nonlocal response_started
        if message["type"] == "http.response.start":
            response_started = True
        await send(message)

    try:
        await app(scope, receive, tracking_send)
    except refusal:
        if not response_started:
            await refuse(send)


class HttpGuard:
    """The base of the middlewares that may refuse an HTTP request before GraphQL runs (its
    body's size, its body's pace): `guard` sees HTTP requests; other scopes (WebSocket,
    lifespan) pass through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.guard(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def guard(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError
