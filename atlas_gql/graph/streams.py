"""Subscriptions over HTTP: Apollo's multipart subscription protocol (`Accept:
multipart/mixed;subscriptionSpec="1.0"`) and graphql-sse's distinct-connections mode (`Accept:
text/event-stream`). Strawberry encodes both and sends their heartbeats; this module decides
what answers before the stream starts, bounds how many streams are open, and ends them.

- **A refusal is a 4xx JSON answer, not a stream.** The stream's first result is awaited until
  the operation starts executing (the executor was built: the document parsed, validated,
  passed the limits and its variables coerced). A result that comes before that is a refusal
  (`pre_execution_failed`): the view answers it as JSON with a 4xx status and a code, the way
  graphql-sse's reference server answers a bad request. Anything later (UNAUTHENTICATED,
  NOT_FOUND from the resolver, the events) is the stream's.
- **One task runs the whole stream** (`StreamPump`): the operation's state lives in a
  ContextVar set when it starts, and the resolver's `finally` (leaving the broker) must run
  where it began. The response reads the results through a queue of one, so a slow client
  holds at most one result in memory here (the broker's own queue bounds the rest).
- **Ended on every path.** The response's `finally` cancels the pump and frees the slot, when
  the client disconnects (Starlette notices an `http.disconnect` at once), when the stream
  ends, and when the response never started.
- **Bounded.** `StreamSlots` counts this worker's open streams: ATLAS_MAX_HTTP_STREAMS in all,
  ATLAS_MAX_HTTP_STREAMS_PER_USER per signed-in user (keyed by the access token's user,
  checked without the database); beyond either, 429 RATE_LIMITED before anything runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from atlas_gql.auth.tokens import bearer_token, decode_access_token
from atlas_gql.config import Settings
from atlas_gql.errors import AtlasError


class StreamSlots:
    """This worker's open HTTP subscription streams: `total` at most, `per_user` per user."""

    def __init__(self, *, total: int, per_user: int) -> None:
        self.total = total
        self.per_user = per_user
        self.open = 0
        self.by_user: Counter[uuid.UUID] = Counter()

    def acquire(self, user_id: uuid.UUID | None) -> str | None:
        """Take a slot; None when taken, else why not (the client's message)."""
        if self.open >= self.total:
            return (
                f"This server has {self.total} subscription streams open over HTTP, its "
                "limit; retry shortly or subscribe over the WebSocket."
            )
        if user_id is not None and self.by_user[user_id] >= self.per_user:
            return (
                f"You have {self.per_user} subscription streams open over HTTP, the limit "
                "per user; close one, or subscribe over one WebSocket (many subscriptions "
                "share it)."
            )
        self.open += 1
        if user_id is not None:
            self.by_user[user_id] += 1
        return None

    def release(self, user_id: uuid.UUID | None) -> None:
        self.open -= 1
        if user_id is not None:
            self.by_user[user_id] -= 1
            if self.by_user[user_id] <= 0:
                del self.by_user[user_id]


def stream_owner(authorization: str | None, settings: Settings) -> uuid.UUID | None:
    """The user an access token names (signature and expiry checked, no database): the key
    of the per-user count. None without a valid token (the stream then fails on its own)."""
    try:
        token = bearer_token(authorization)
        return None if token is None else decode_access_token(token, settings=settings).user_id
    except AtlasError:
        return None


class _End:
    pass


_END = _End()


class _Raised:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class StreamPump:
    """Runs a stream (an async generator of results) to its end in one task of its own."""

    def __init__(self, source: AsyncGenerator[Any, None], *, on_close: Callable[[], None]) -> None:
        self._source = source
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)
        self._pending: list[Any] = []
        self._on_close: Callable[[], None] | None = on_close
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async with contextlib.aclosing(self._source):
                async for item in self._source:
                    await self._queue.put(item)
            await self._queue.put(_END)
        except Exception as error:
            await self._queue.put(_Raised(error))

    async def opening(self, executing: Awaitable[Any]) -> Any | None:
        """Wait for the first result or for `executing`, whichever comes first: the result
        when it came before the operation executed (a refusal, or `unread` it), else None."""
        first = asyncio.ensure_future(self._queue.get())
        started = asyncio.ensure_future(executing)
        try:
            await asyncio.wait({first, started}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            started.cancel()
            if not first.done():
                first.cancel()
        if first.cancelled() or not first.done():
            return None
        item = first.result()
        executed = started.done() and not started.cancelled()
        if executed or isinstance(item, (_End, _Raised)):
            self._pending.append(item)
            return None
        return item

    def unread(self, item: Any) -> None:
        """Give back what `opening` returned: it will be the first of `results`."""
        self._pending.insert(0, item)

    async def results(self) -> AsyncGenerator[Any, None]:
        """The stream's results (after `opening`), read from the pump."""
        try:
            while True:
                item = self._pending.pop(0) if self._pending else await self._queue.get()
                if item is _END:
                    return
                if isinstance(item, _Raised):
                    raise item.error
                yield item
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop the stream (its resolver leaves the broker) and free its slot; idempotent."""
        if not self._task.done():
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()


class StreamResponse(StreamingResponse):
    """A streamed subscription that always stops its pump, however the response ends."""

    def __init__(
        self,
        content: AsyncIterator[str],
        *,
        headers: Mapping[str, str],
        status_code: int,
        on_close: Callable[[], Awaitable[None]],
    ) -> None:
        super().__init__(content, status_code=status_code, headers=headers)
        self._close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._close()
