"""The WebSocket transport (graphql-transport-ws) of the GraphQL endpoint: Strawberry's handler
with every message's size and shape checked, a sink per operation for the frames subscribers
share (graph/fanout.py), and the 1013 close of a socket that cannot keep up. The view
(`graph/views.py`) serves it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator
from typing import Any, cast

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from strawberry.asgi import ASGIWebSocketAdapter
from strawberry.http.exceptions import NonJsonMessageReceived, NonTextMessageReceived
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import (
    ConnectionInitMessage,
    Message,
    SubscribeMessage,
)

from atlas_gql.graph.context import Context
from atlas_gql.graph.fanout import (
    FRAME_WRITER,
    FrameWriter,
    OperationSink,
    SharedFrames,
    reset_sink,
    set_sink,
)
from atlas_gql.graph.limits.body import JsonTooComplex, decode_request_json
from atlas_gql.graph.limits.extension import utf8_length

# The bytes a connection_init payload may hold (a bearer token and a few client fields).
MAX_CONNECTION_INIT_BYTES = 16 * 1024


class AtlasWebSocketAdapter(ASGIWebSocketAdapter):
    """Reads at most ATLAS_MAX_BODY_BYTES per message (1009 beyond), JSON shape bounded."""

    def __init__(self, view: Any, request: WebSocket, response: WebSocket) -> None:
        super().__init__(view, request, response)
        self.max_message_bytes: int = view.max_message_bytes
        self.last_message_bytes = 0

    async def iter_json(
        self, *, ignore_parsing_errors: bool = False
    ) -> AsyncGenerator[object, None]:
        try:
            while self.ws.application_state != WebSocketState.DISCONNECTED:
                text = await self.ws.receive_text()
                self.last_message_bytes = size = utf8_length(text)
                if size > self.max_message_bytes:
                    await self.close(1009, f"Message exceeds {self.max_message_bytes} bytes")
                    return
                try:
                    message = decode_request_json(text)
                except json.JSONDecodeError as error:
                    if not ignore_parsing_errors:
                        raise NonJsonMessageReceived from error
                    continue
                except JsonTooComplex as error:
                    await self.close(4400, str(error))
                    return
                # Not kept while this generator waits for the next message: on an idle socket,
                # for the connection's life (memory per idle subscription).
                del text
                yield message
        except KeyError as error:
            raise NonTextMessageReceived from error
        except WebSocketDisconnect:  # pragma: no cover - the client went away
            pass

    async def close(self, code: int, reason: str) -> None:
        # A close frame carries at most 123 bytes of reason; some reasons quote the client.
        await super().close(code, reason.encode()[:123].decode(errors="ignore"))

    @property
    def frame_writer(self) -> FrameWriter | None:
        """The server's write of prepared frames to this socket, if it offers one."""
        writer: FrameWriter | None = self.ws.scope.get("extensions", {}).get(FRAME_WRITER)
        return writer

    async def send_frame(self, text: str) -> None:
        """A message already serialised (a shared `next` frame, graph/fanout.py). A socket
        that went away is not an error here: its handler ends its operations."""
        with contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError):
            await self.ws.send_text(text)


class DocumentTexts:
    """One string per distinct document text that subscribers send: a thousand sockets
    subscribing with the same document keep one copy of it, not a thousand (each operation
    keeps its query for its life: memory per idle subscription). At most `limit` characters
    are kept; the oldest texts go first."""

    def __init__(self, limit: int = 1 << 20) -> None:
        self.limit = limit
        self._texts: dict[str, str] = {}
        self._size = 0

    def shared(self, text: str) -> str:
        known = self._texts.get(text)
        if known is not None:
            return known
        if len(text) > self.limit:
            return text
        while self._size + len(text) > self.limit:
            oldest = next(iter(self._texts))
            del self._texts[oldest]
            self._size -= len(oldest)
        self._texts[text] = text
        self._size += len(text)
        return text


# Close code of a socket whose subscriptions fell ATLAS_SUBSCRIBER_BACKLOG events behind: 1013
# "Try Again Later" (RFC 6455 registry): retryable; the client reconnects and resubscribes with
# `afterSequence` (the last sequence it received).
TOO_SLOW_CLOSE_CODE = 1013
TOO_SLOW_REASON = "Too slow to keep up: reconnect with afterSequence"


class AtlasTransportWSHandler(BaseGraphQLTransportWSHandler[Context, None]):
    """graphql-transport-ws with every message's shape checked before Strawberry reads it
    (a message that is not an object, a payload of the wrong type: 4400, never a crash).

    Each operation's task gets an `OperationSink` (graph/fanout.py): `threadEvents` writes the
    frames it shares with other subscribers through it. A subscription that falls too far
    behind (its broker queue overflows: the socket is not taking frames) closes the socket
    with 1013; its operations stop at once, so nothing more is queued for it."""

    websocket: AtlasWebSocketAdapter
    # The view: its SharedFrames and DocumentTexts (`frames`, `document_texts`: AtlasGraphQL).
    view: Any
    _closing_too_slow: asyncio.Task[None] | None = None
    _closing_timed_out: asyncio.Task[None] | None = None
    _init_timer: asyncio.TimerHandle | None = None

    async def run_operation(self, operation: Operation[Context, None]) -> None:
        frames: SharedFrames = self.view.frames
        sink = OperationSink(
            frames=frames,
            operation_id=operation.id,
            query=operation.query,
            variables=operation.variables,
            operation_name=operation.operation_name,
            send=self.websocket.send_frame,
            # Not after the operation's `complete` or `error`, nor once the client completed
            # it (Strawberry forgets it at once, and cancels its task later).
            is_open=lambda: (
                not operation.completed and self.operations.get(operation.id) is operation
            ),
            on_too_slow=self.too_slow,
            writer=self.websocket.frame_writer,
        )
        token = set_sink(sink)
        try:
            await super().run_operation(operation)
        finally:
            reset_sink(token)
            sink.close()

    def on_request_accepted(self) -> None:
        # Strawberry runs a task per connection that sleeps until the connection_init
        # deadline, and keeps it (cancelled, with its coroutine, context and CancelledError)
        # for the connection's life. A timer does the same job, and nothing is left of it
        # once connection_init came (memory per idle WebSocket).
        self._init_timer = asyncio.get_running_loop().call_later(
            self.connection_init_wait_timeout.total_seconds(), self._init_timed_out
        )

    def _init_timed_out(self) -> None:
        self._init_timer = None
        if not self.connection_init_received:
            self.connection_timed_out = True
            self._closing_timed_out = asyncio.create_task(self._close_init_timed_out())

    async def _close_init_timed_out(self) -> None:
        with contextlib.suppress(Exception):
            await self.websocket.close(code=4408, reason="Connection initialisation timeout")

    def _cancel_init_timer(self) -> None:
        if self._init_timer is not None:
            self._init_timer.cancel()
            self._init_timer = None

    async def shutdown(self) -> None:
        self._cancel_init_timer()
        await super().shutdown()

    def too_slow(self) -> None:
        """Close the socket with 1013 (once), its operations first (the close frame follows
        the frames already written, so the client has read up to a consistent sequence)."""
        if self._closing_too_slow is None:
            self._closing_too_slow = asyncio.create_task(self._close_too_slow())

    async def _close_too_slow(self) -> None:
        for operation_id in list(self.operations):
            await self.cleanup_operation(operation_id)
        with contextlib.suppress(Exception):
            await self.websocket.close(TOO_SLOW_CLOSE_CODE, TOO_SLOW_REASON)

    async def handle_message(self, message: Any) -> None:
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            await self.handle_invalid_message("A message must be an object with a type")
            return
        await super().handle_message(cast("Message", message))
        # Handled: what it carried lives on where it is needed (an operation's query and
        # variables, connection_init's payload). Strawberry's loop keeps the message itself
        # until the next one comes (on an idle socket, for its life): it is emptied.
        message.clear()

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        self._cancel_init_timer()
        if self.websocket.last_message_bytes > MAX_CONNECTION_INIT_BYTES:
            await self.websocket.close(
                4400, f"connection_init exceeds {MAX_CONNECTION_INIT_BYTES} bytes"
            )
            return
        await super().handle_connection_init(message)

    async def handle_subscribe(self, message: SubscribeMessage) -> None:
        payload = message.get("payload")
        if (
            not isinstance(message.get("id"), str)
            or not message["id"]
            or not isinstance(payload, dict)
            or not isinstance(payload.get("query"), str)
            or not isinstance(payload.get("variables"), (dict, type(None)))
            or not isinstance(payload.get("operationName"), (str, type(None)))
            or not isinstance(payload.get("extensions"), (dict, type(None)))
        ):
            await self.handle_invalid_message(
                "Invalid subscribe: needs an id, payload.query (string), optional "
                "variables/extensions (objects), operationName (string)"
            )
            return
        texts: DocumentTexts = self.view.document_texts
        payload["query"] = texts.shared(payload["query"])
        await super().handle_subscribe(message)
