"""Request bodies and WebSocket messages: their size (413 with a GraphQL-shaped error) and the
shape of their JSON."""

from __future__ import annotations

import functools
import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from atlas_gql.errors import HttpGuard, run_or_refuse, send_error_response

# JSON nested deeper than this, or holding more values, is refused before anything walks it
# (graphql-core's variable coercion, the JSON scalar, the activity log's scrubber): a body
# of 1 MiB can hold 500,000 nested arrays, and Python's decoder itself fails near 1,000.
MAX_JSON_DEPTH = 32
MAX_JSON_VALUES = 20_000


class JsonTooComplex(ValueError):
    """A JSON document nested too deeply or holding too many values."""


def decode_request_json(data: str | bytes) -> Any:
    """`json.loads` that refuses, with a clear message, JSON nested deeper than
    MAX_JSON_DEPTH or holding more than MAX_JSON_VALUES values. Raises JSONDecodeError for
    text that is not JSON."""
    # Counted before decoding, which costs ~0.1 ms per MiB: decoding half a million empty
    # arrays takes far longer than anything else a request may make the server do. Brackets
    # inside strings count too, hence the margin (a chat message may be pasted code).
    openers = (
        data.count("[") + data.count("{")
        if isinstance(data, str)
        else (data.count(b"[") + data.count(b"{"))
    )
    if openers > 4 * MAX_JSON_VALUES:
        raise JsonTooComplex(f"The JSON holds more than {MAX_JSON_VALUES} values.")
    try:
        value = json.loads(data)
    except RecursionError:
        raise JsonTooComplex(f"The JSON is nested deeper than {MAX_JSON_DEPTH} levels.") from None
    check_json_shape(value)
    return value


def check_json_shape(value: Any) -> None:
    """Walk `value` iteratively, stopping at the first excess (so the walk is bounded too)."""
    if not isinstance(value, (dict, list)):
        return
    budget = MAX_JSON_VALUES
    stack: list[tuple[Any, int]] = [(value, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        if depth > MAX_JSON_DEPTH:
            raise JsonTooComplex(f"The JSON is nested deeper than {MAX_JSON_DEPTH} levels.")
        children = node.values() if isinstance(node, dict) else node
        budget -= len(children)
        if budget < 0:
            raise JsonTooComplex(f"The JSON holds more than {MAX_JSON_VALUES} values.")
        for child in children:
            if isinstance(child, (dict, list)):
                push((child, depth + 1))


class BodySizeLimitMiddleware(HttpGuard):
    """Answers 413 when a request body exceeds its limit (declared or streamed)."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_upload_bytes: int) -> None:
        super().__init__(app)
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes

    async def guard(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {key.lower(): value for key, value in scope.get("headers", [])}
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        limit = self.max_body_bytes
        if content_type.startswith("multipart/form-data"):
            limit = self.max_upload_bytes + self.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(send, limit)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge
            return message

        await run_or_refuse(
            self.app,
            scope,
            limited_receive,
            send,
            refusal=_BodyTooLarge,
            refuse=functools.partial(_too_large, limit=limit),
        )


class _BodyTooLarge(Exception):
    pass


async def _too_large(send: Send, limit: int) -> None:
    message = f"Request body exceeds {limit} bytes."
    await send_error_response(send, status=413, message=message, code="PAYLOAD_TOO_LARGE")
