"""The model provider behind one interface, with two adapters over the official `openai` SDK:

- `ResponsesProvider` (ATLAS_OPENAI_API=responses, the default): a thread is an OpenAI
  conversation (`conv_...`); a reply is a streamed `responses.create(..., conversation=...)`,
  by default a *background* response (ATLAS_OPENAI_BACKGROUND): it keeps generating when
  its stream is cut or its worker dies, is read again from any event on
  (`resume_reply`: `GET /v1/responses/{id}?stream=true&starting_after=N`) and is stopped by
  `cancel_response` (`POST /v1/responses/{id}/cancel`).
  A reply's request is built by hand over the SDK's aiohttp session (`DirectPost`: the
  SDK's headers, URL and timeouts, its failures; the SDK sends it where that is not plain);
  the SDK sends every other request and turns errors into exceptions; the stream's bytes are
  read raw and parsed here (`sse.py`, `ResponsesStreamReader`): no pydantic model per delta, and
  every event of one network read handled at once.
- `ChatProvider` (ATLAS_OPENAI_API=chat): for OpenAI-compatible servers without the Responses
  API; a streamed `chat.completions.create`, the history built from ATLAS's own messages.

Both turn the upstream stream into batches (one per network read) of `ReplyStarted` /
`ReplyDelta` / `ReplyDone` items (with the upstream `sequence_number` of their event when the
provider numbers its events), and every upstream fault
into `UpstreamFailure` (HTTP status, x-request-id, whether a retry may help). A failure's
`message` is a fixed, readable text per kind of failure (stored on the message, broadcast to
subscribers); the upstream's own words (which may quote part of the API key, as OpenAI's 401
body does) are only in its `detail`, scrubbed, for the ErrorLog row.

Size: over 400 lines on purpose: the interface and its two adapters, which must fail the same
way, read side by side."""

from __future__ import annotations

import contextlib
import functools
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Protocol

import aiohttp
import httpx2
import openai
from openai import AsyncOpenAI
from openai._vendor.httpx_aiohttp.transport import AiohttpTransport
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from atlas_gql.ai.models import AssistantTool, MessageStatus
from atlas_gql.ai.sse import SSEDecoder
from atlas_gql.ai.tool_items import (
    TOOL_PROGRESS_EVENTS,
    ToolCallItem,
    UpstreamCitation,
    citations_of,
    tool_call_of,
    tool_counts,
)
from atlas_gql.config import OpenAIApi, OpenAIHttpClient, Settings
from atlas_gql.logs.audit import ErrorLogPolicy, record_error, scrub_text
from atlas_gql.logs.models import ErrorSource

RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
# Why the provider cut a reply short, as said to users (other reasons stay in the ErrorLog).
KNOWN_CUT_REASONS = frozenset({"max_output_tokens", "content_filter", "length"})

# What users read for each kind of failure (never the upstream's own text).
PROVIDER_FAILED_ERROR = "The AI provider could not complete the reply."
TIMEOUT_ERROR = "The reply timed out."
UNREACHABLE_ERROR = "Could not reach the AI provider."
CONNECTION_CUT_ERROR = "The connection to the AI provider was cut."
PROVIDER_REPORTED_ERROR = "The AI provider reported an error."
UNREADABLE_ERROR = "The AI provider sent a reply that could not be read."
STREAM_ENDED_ERROR = "The reply stream ended before the response was complete."
# Seconds an upstream cancel may take (best effort: the reply is stopped here anyway).
CANCEL_TIMEOUT = 10.0
# What the SDK and its transport raise when the provider or the network fails (the aiohttp
# transport maps its errors to httpx2's). Anything else is a bug of ours and surfaces as one.
UPSTREAM_ERRORS: tuple[type[Exception], ...] = (
    openai.OpenAIError,
    httpx2.HTTPError,
    OSError,
    TimeoutError,
)
# What reading a stream's body straight from aiohttp raises when the connection fails (the
# transport maps them to httpx2's on its own path; see `body_reader`).
STREAM_READ_ERRORS: tuple[type[Exception], ...] = (*UPSTREAM_ERRORS, aiohttp.ClientError)
# Also key fragments as OpenAI quotes them in a 401 ("sk-proj-****...abcd").
_KEY_FRAGMENT = re.compile(r"\bsk-[A-Za-z0-9_*.\-]{3,}")


def http_error_text(status: int) -> str:
    return f"The AI provider returned an error (HTTP {status})."


def cut_short_text(reason: str | None) -> str:
    if reason in KNOWN_CUT_REASONS:
        return f"The reply was cut short by the AI provider ({reason})."
    return "The reply was cut short by the AI provider."


def scrub_detail(text: str | None) -> str | None:
    """Upstream text with anything key-like redacted (kept for the ErrorLog only)."""
    if text is None:
        return None
    return _KEY_FRAGMENT.sub("[redacted-key]", scrub_text(text))[:2000]


@dataclass
class HistoryItem:
    role: str  # "user" | "assistant"
    content: str


@dataclass
class ReplyRequest:
    model: str
    instructions: str | None
    temperature: float | None
    content: str
    # OpenAI file ids sent with the message as input files.
    file_ids: list[str] = field(default_factory=list)
    conversation_id: str | None = None
    # The branch before this message (oldest first): sent by the chat adapter, and by the
    # Responses adapter when there is no conversation (a reply on a branch).
    history: list[HistoryItem] = field(default_factory=list)
    # The assistant's built-in tools, and the vector stores file search may read (the
    # thread's own and, when the sender may see it, its assistant's: ai/knowledge.py).
    tools: tuple[AssistantTool, ...] = ()
    vector_store_ids: list[str] = field(default_factory=list)


@dataclass
class ReplyStarted:
    response_id: str | None
    # The upstream `sequence_number` of the event (Responses API), None without one.
    sequence_number: int | None = None
    # The provider runs it as a background response (it says so in `response.created`; an
    # OpenAI-compatible server may ignore the request for one).
    background: bool = False


@dataclass(slots=True)
class ReplyDelta:
    text: str
    sequence_number: int | None = None


@dataclass
class ReplyDone:
    response_id: str | None
    output_message_id: str | None
    model: str | None
    input_tokens: int
    output_tokens: int
    citations: list[UpstreamCitation] = field(default_factory=list)
    # Built-in tool calls in the response (what the upstream bills per call).
    file_search_calls: int = 0
    web_search_calls: int = 0


@dataclass
class TextRequest:
    """A short, non-streamed model call (a thread's title)."""

    model: str
    instructions: str
    content: str
    max_output_tokens: int


@dataclass
class TextCompletion:
    text: str
    response_id: str | None
    input_tokens: int
    output_tokens: int


ReplyItem = ReplyStarted | ReplyDelta | ToolCallItem | ReplyDone
# The items of one network read, in order.
ReplyBatch = list[ReplyItem]


@dataclass(eq=False)
class UpstreamFailure(Exception):
    """The provider failed; `status` is what the message becomes (FAILED or INCOMPLETE).
    `message` is for users; `detail` (scrubbed) is the upstream's own account, for logs."""

    message: str
    _: KW_ONLY
    detail: str | None = None
    status: MessageStatus = MessageStatus.FAILED
    http_status: int | None = None
    request_id: str | None = None
    retryable: bool = False
    input_tokens: int | None = None
    output_tokens: int | None = None
    # The provider said the response is over (response.failed / .incomplete, an error
    # event): nothing runs upstream any more, so there is nothing to cancel there.
    upstream_ended: bool = False
    # Tool calls the provider reported in a failed or cut-short response (billed too).
    file_search_calls: int = 0
    web_search_calls: int = 0

    def __post_init__(self) -> None:
        super().__init__(self.message)
        self.detail = scrub_detail(self.detail)

    @classmethod
    def cut_short(
        cls, reason: str | None, *, detail: str, request_id: str | None, **usage: Any
    ) -> UpstreamFailure:
        """The provider ended the reply early for `reason` (length, content filter...): the
        message becomes INCOMPLETE with the text so far. `usage`: the tokens, `upstream_ended`."""
        return cls(
            cut_short_text(reason),
            detail=detail,
            status=MessageStatus.INCOMPLETE,
            request_id=request_id,
            **usage,
        )

    @classmethod
    def stream_ended(
        cls, *, detail: str, request_id: str | None, retryable: bool
    ) -> UpstreamFailure:
        """The stream ended without the provider saying the reply was over: INCOMPLETE."""
        return cls(
            STREAM_ENDED_ERROR,
            detail=detail,
            status=MessageStatus.INCOMPLETE,
            request_id=request_id,
            retryable=retryable,
        )


async def record_upstream_failure(
    failure: UpstreamFailure,
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    request_id: str,
    path: str,
    user_id: uuid.UUID | None,
    details: dict[str, Any] | None,
    policy: ErrorLogPolicy,
) -> None:
    """The ErrorLog row of a provider call that failed (an upload, a title, a vector-store
    call): the upstream's own account (scrubbed), its HTTP status and request id."""
    await record_error(
        sessionmaker=sessionmaker,
        request_id=request_id,
        source=ErrorSource.UPSTREAM,
        error_type="UpstreamFailure",
        message=failure.detail or failure.message,
        path=path,
        user_id=user_id,
        upstream_status=failure.http_status,
        upstream_request_id=failure.request_id,
        details=details,
        policy=policy,
    )


class Provider(Protocol):
    api: str  # "responses" | "chat", recorded as ApiUsageLog.endpoint
    uses_conversations: bool
    # Built-in tools (file search, web search) and vector stores: the Responses API only.
    supports_tools: bool
    client: AsyncOpenAI
    # New replies run upstream on their own (background responses): they can be read again
    # from any event on (`resume_reply`) and must be stopped upstream (`cancel_response`).
    background: bool
    # Background replies (of this or an earlier configuration) can be resumed here.
    can_resume: bool

    async def create_conversation(self, *, history: list[HistoryItem]) -> str:
        """A new upstream conversation (seeded with `history`); its id."""

    def stream_reply(self, request: ReplyRequest) -> AsyncIterator[ReplyBatch]:
        """The reply as it streams, a batch of items per network read; raises
        UpstreamFailure."""

    def resume_reply(self, response_id: str, *, after_sequence: int) -> AsyncIterator[ReplyBatch]:
        """A background reply's stream again, from the event after upstream sequence number
        `after_sequence` on; raises UpstreamFailure."""

    async def cancel_response(self, response_id: str) -> None:
        """Stop a background response upstream; raises UpstreamFailure."""

    async def complete_text(self, request: TextRequest) -> TextCompletion:
        """One short answer, not streamed, not stored upstream; raises UpstreamFailure."""

    async def upload_file(
        self, *, filename: str, content: bytes, mime_type: str | None, purpose: str
    ) -> str:
        """Store a file upstream; its id."""

    async def delete_file(self, file_id: str) -> None: ...

    async def close(self) -> None: ...


def create_client(settings: Settings) -> AsyncOpenAI:
    """The app's one client. Retries are ATLAS's (before the first delta only), not the SDK's.
    Its HTTP transport is ATLAS_OPENAI_HTTP_CLIENT's (see docs/ai.md for the measurement)."""
    http_client: Any = None
    if settings.atlas_openai_http_client is OpenAIHttpClient.AIOHTTP:
        http_client = openai.DefaultAioHttpClient(timeout=settings.atlas_openai_timeout)
    return AsyncOpenAI(
        api_key=settings.openai_api_key,
        base_url=settings.openai_base_url,
        timeout=settings.atlas_openai_timeout,
        max_retries=0,
        http_client=http_client,
    )


def _status_failure(status: int, message: str, request_id: str | None) -> UpstreamFailure:
    """An error status of the provider (`message`: the SDK's own text for it)."""
    return UpstreamFailure(
        http_error_text(status),
        detail=f"HTTP {status}: {message}",
        http_status=status,
        request_id=request_id,
        retryable=status in RETRYABLE_STATUSES,
    )


def _failure_from_sdk(error: BaseException, *, mid_stream: bool = False) -> UpstreamFailure:
    """Translate an SDK / transport exception into an UpstreamFailure (`mid_stream`: raised
    while reading a stream that had begun, where a lost connection means a cut reply)."""
    name = type(error).__name__
    if isinstance(error, openai.APIStatusError):
        return _status_failure(error.status_code, error.message, error.request_id)
    if isinstance(error, openai.APITimeoutError):
        return UpstreamFailure(TIMEOUT_ERROR, detail=f"{name}: {error}", retryable=True)
    if isinstance(error, openai.APIConnectionError) and not mid_stream:
        return UpstreamFailure(UNREACHABLE_ERROR, detail=f"{name}: {error}", retryable=True)
    if isinstance(error, openai.APIConnectionError):
        return UpstreamFailure(
            CONNECTION_CUT_ERROR,
            detail=f"{name}: {error}",
            status=MessageStatus.INCOMPLETE,
            retryable=True,
        )
    if isinstance(error, openai.APIError):
        # An `error` event inside a stream.
        return UpstreamFailure(PROVIDER_REPORTED_ERROR, detail=f"{name}: {error.message}")
    if "Timeout" in name:
        return UpstreamFailure(TIMEOUT_ERROR, detail=f"{name}: {error}", retryable=True)
    return UpstreamFailure(
        CONNECTION_CUT_ERROR,
        detail=f"{name}: {error}",
        status=MessageStatus.INCOMPLETE,
        retryable=True,
    )


@contextlib.contextmanager
def sdk_failures() -> Iterator[None]:
    """Inside it, an SDK or transport error leaves as the `UpstreamFailure` it stands for."""
    try:
        yield
    except UPSTREAM_ERRORS as error:
        raise _failure_from_sdk(error) from error


def _request_id_of(stream: Any) -> str | None:
    response = getattr(stream, "response", None)
    headers = getattr(response, "headers", None)
    return headers.get("x-request-id") if headers is not None else None


class _FilesMixin:
    client: AsyncOpenAI

    async def upload_file(
        self, *, filename: str, content: bytes, mime_type: str | None, purpose: str
    ) -> str:
        upload: Any = (filename, content, mime_type) if mime_type else (filename, content)
        with sdk_failures():
            stored = await self.client.files.create(file=upload, purpose=purpose)  # type: ignore[arg-type]
        return stored.id

    async def delete_file(self, file_id: str) -> None:
        with sdk_failures():
            await self.client.files.delete(file_id)


class ResponsesStreamReader:
    """The Responses API's streamed events (raw SSE) as reply items. Follows the event schema
    (`openai.types.responses.ResponseStreamEvent`); events it does not use are skipped by
    their `event:` name without decoding their JSON."""

    HANDLED = frozenset(
        {
            "response.created",
            "response.output_text.delta",
            "response.completed",
            "response.failed",
            "response.incomplete",
            "error",
            # Built-in tools: a call starts (its item added, or its own in_progress event),
            # ends (its item done, with queries and results); annotations of the text.
            "response.output_item.added",
            "response.output_item.done",
            "response.file_search_call.in_progress",
            "response.web_search_call.in_progress",
            "response.output_text.annotation.added",
            "message",  # an event without an `event:` line: decode to learn its type
        }
    )

    def __init__(self, *, request_id: str | None) -> None:
        self.request_id = request_id
        self.decoder = SSEDecoder()
        self.finished = False
        self.failure: UpstreamFailure | None = None
        # The upstream's `sequence_number` of the last event read (to resume a stream).
        self.last_sequence_number: int | None = None
        # Tool calls announced (an item and its in_progress event both start one), and the
        # annotations streamed per (message item, content part).
        self.started_calls: set[str] = set()
        self.annotations: dict[tuple[str, int], list[Any]] = {}

    def feed(self, chunk: bytes) -> ReplyBatch:
        """The items of every complete event in `chunk` (and what came before it). A failure
        ends the stream (`finished`, `failure`) after the items that preceded it."""
        items: ReplyBatch = []
        if self.finished:
            return items
        try:
            self._read(chunk, items)
        except UpstreamFailure as failure:
            self.failure = failure
            self.finished = True
        return items

    def _read(self, chunk: bytes, items: ReplyBatch) -> None:
        for sse in self.decoder.feed(chunk):
            if sse.event not in self.HANDLED:
                continue
            if sse.data == b"[DONE]":
                return
            try:
                event = json.loads(sse.data)
                kind = event.get("type") or sse.event
            except (ValueError, AttributeError) as error:
                raise UpstreamFailure(
                    UNREADABLE_ERROR,
                    detail=f"unreadable {sse.event} event: {sse.data[:200]!r} ({error})",
                    request_id=self.request_id,
                ) from error
            number = event.get("sequence_number")
            if not isinstance(number, int):
                number = None
            else:
                self.last_sequence_number = number
            if kind == "response.output_text.delta":
                if delta := event.get("delta"):
                    items.append(ReplyDelta(text=delta, sequence_number=number))
            elif kind == "response.created":
                response = event.get("response") or {}
                items.append(
                    ReplyStarted(
                        response_id=response.get("id"),
                        sequence_number=number,
                        background=response.get("background") is True,
                    )
                )
            elif kind in {"response.output_item.added", "response.output_item.done"}:
                done = kind == "response.output_item.done"
                call = tool_call_of(event.get("item") or {}, done=done, number=number)
                if call is not None and (done or call.call_id not in self.started_calls):
                    self.started_calls.add(call.call_id)
                    items.append(call)
            elif (tool := TOOL_PROGRESS_EVENTS.get(kind)) is not None:
                call_id = event.get("item_id")
                if isinstance(call_id, str) and call_id not in self.started_calls:
                    self.started_calls.add(call_id)
                    items.append(
                        ToolCallItem(call_id, tool, False, "in_progress", sequence_number=number)
                    )
            elif kind == "response.output_text.annotation.added":
                key = (str(event.get("item_id")), int(event.get("content_index") or 0))
                self.annotations.setdefault(key, []).append(event.get("annotation"))
            elif kind == "response.completed":
                items.append(_done_of(event.get("response") or {}, self.annotations))
                self.finished = True
                return
            elif kind in {"response.failed", "response.incomplete"}:
                raise _terminal_failure(event.get("response") or {}, kind, self.request_id)
            elif kind == "error":
                raise UpstreamFailure(
                    PROVIDER_REPORTED_ERROR,
                    detail=f"error event ({event.get('code')}): {event.get('message')}",
                    request_id=self.request_id,
                    upstream_ended=True,
                )

    def ended_early(self) -> UpstreamFailure:
        """The failure of a stream that ended without `response.completed` (retryable: by
        reading a background response again, or before any text by asking again)."""
        return UpstreamFailure.stream_ended(
            detail="The stream ended without response.completed.",
            request_id=self.request_id,
            retryable=True,
        )


def _done_of(
    response: dict[str, Any], annotations: dict[tuple[str, int], list[Any]] | None = None
) -> ReplyDone:
    usage = response.get("usage") or {}
    output = response.get("output") or []
    message_id = next(
        (item.get("id") for item in output if item.get("type") == "message"),
        None,
    )
    counts = tool_counts(output)
    return ReplyDone(
        response_id=response.get("id"),
        output_message_id=message_id,
        model=response.get("model"),
        input_tokens=usage.get("input_tokens") or 0,
        output_tokens=usage.get("output_tokens") or 0,
        citations=citations_of(output, annotations),
        file_search_calls=counts[AssistantTool.FILE_SEARCH],
        web_search_calls=counts[AssistantTool.WEB_SEARCH],
    )


class ResponsesProvider(_FilesMixin):
    api = "responses"
    uses_conversations = True
    supports_tools = True
    can_resume = True
    reader_class = ResponsesStreamReader

    def __init__(self, client: AsyncOpenAI, *, background: bool = True) -> None:
        self.client = client
        self.background = background

    @functools.cached_property
    def _direct_post(self) -> DirectPost | None:
        """`DirectPost.over(self.client)` (None: the SDK sends), worked out at the first reply
        and kept: its headers, URL, timeout and checks at every reply cost ~0.1 ms."""
        return DirectPost.over(self.client)

    async def create_conversation(self, *, history: list[HistoryItem]) -> str:
        # The Conversations API takes at most 20 initial items.
        items: list[Any] = [
            {"type": "message", "role": item.role, "content": item.content}
            for item in history[-20:]
        ]
        try:
            conversation = await self.client.conversations.create(
                items=items if items else openai.omit
            )
        except UPSTREAM_ERRORS as error:
            raise _failure_from_sdk(error) from error
        return conversation.id

    def stream_reply(self, request: ReplyRequest) -> AsyncIterator[ReplyBatch]:
        body = reply_body(request, background=self.background)
        direct = self._direct_post
        if direct is not None:
            return self._read(direct.stream("responses", body))
        return self._read(_sdk_stream(self.client.responses.with_streaming_response.create(**body)))

    def resume_reply(self, response_id: str, *, after_sequence: int) -> AsyncIterator[ReplyBatch]:
        return self._read(
            _sdk_stream(
                self.client.responses.with_streaming_response.retrieve(
                    response_id, stream=True, starting_after=after_sequence
                )
            )
        )

    async def cancel_response(self, response_id: str) -> None:
        try:
            await self.client.responses.cancel(response_id, timeout=CANCEL_TIMEOUT)
        except UPSTREAM_ERRORS as error:
            raise _failure_from_sdk(error) from error

    async def complete_text(self, request: TextRequest) -> TextCompletion:
        try:
            response = await self.client.responses.create(
                model=request.model,
                instructions=request.instructions,
                input=request.content,
                max_output_tokens=request.max_output_tokens,
                store=False,
            )
        except UPSTREAM_ERRORS as error:
            raise _failure_from_sdk(error) from error
        usage = response.usage
        if response.status not in (None, "completed"):
            raise UpstreamFailure(
                PROVIDER_FAILED_ERROR,
                detail=f"response {response.status}",
                input_tokens=usage.input_tokens if usage else None,
                output_tokens=usage.output_tokens if usage else None,
                upstream_ended=True,
            )
        return TextCompletion(
            text=response.output_text,
            response_id=response.id,
            input_tokens=usage.input_tokens if usage else 0,
            output_tokens=usage.output_tokens if usage else 0,
        )

    async def _read(self, opened: OpenedStream) -> AsyncIterator[ReplyBatch]:
        """The events of a streamed request (`_sdk_stream`, `DirectPost.stream`), read raw."""
        async with opened as (request_id, read):
            reader = self.reader_class(request_id=request_id)
            try:
                while chunk := await read():
                    batch = reader.feed(chunk)
                    if batch:
                        yield batch
                    if reader.failure is not None:
                        raise reader.failure
                    if reader.finished:
                        return
            except STREAM_READ_ERRORS as error:
                failure = _failure_from_sdk(error, mid_stream=True)
                failure.request_id = failure.request_id or reader.request_id
                raise failure from error
            raise reader.ended_early()

    async def close(self) -> None:
        await self.client.close()


# An upstream stream, opened: its x-request-id and an awaitable read of its next bytes (b""
# at its end). Opening it raises UpstreamFailure.
OpenedStream = contextlib.AbstractAsyncContextManager[
    tuple[str | None, Callable[[], Awaitable[bytes]]]
]


@contextlib.asynccontextmanager
async def _sdk_stream(
    request: Any,
) -> AsyncIterator[tuple[str | None, Callable[[], Awaitable[bytes]]]]:
    """An SDK `with_streaming_response` call, opened: the SDK builds the request and raises
    its errors; the body stays unread (`body_reader`)."""
    async with contextlib.AsyncExitStack() as stack:
        try:
            response = await stack.enter_async_context(request)
        except UPSTREAM_ERRORS as error:
            raise _failure_from_sdk(error) from error
        yield response.headers.get("x-request-id"), body_reader(response.http_response, stack)


def reply_body(request: ReplyRequest, *, background: bool) -> dict[str, Any]:
    """The JSON body of a reply's Responses request (`ResponseCreateParamsStreaming`)."""
    content: list[Any] = [{"type": "input_text", "text": request.content}]
    content += [{"type": "input_file", "file_id": file_id} for file_id in request.file_ids]
    # Without a conversation (a reply on a branch), the branch's history goes as input.
    history: list[Any] = (
        []
        if request.conversation_id
        else [
            {"type": "message", "role": item.role, "content": item.content}
            for item in request.history
        ]
    )
    body: dict[str, Any] = {
        "model": request.model,
        "input": [*history, {"type": "message", "role": "user", "content": content}],
        "stream": True,
    }
    if background:
        # Generated upstream whatever happens to this worker or its connection.
        body["background"] = True
    if request.instructions:
        body["instructions"] = request.instructions
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.conversation_id:
        body["conversation"] = request.conversation_id
    body.update(tool_arguments(request))
    return body


@dataclass(frozen=True)
class DirectPost:
    """A streamed POST built by hand over the SDK's own aiohttp session (its connections,
    TLS settings and limits), with the SDK's headers, base URL and timeouts: the request a
    reply starts with, which the SDK takes ~1-2 ms of CPU to build and send (options models,
    the body's transform against its TypedDicts, httpx2 request and response objects). Its
    errors are the SDK's: an error status, a timeout, an unreachable provider. Only where the
    SDK's request would be plain: its aiohttp transport, no proxy, no default query, a plain
    API key; otherwise (`over` is None) the SDK sends it."""

    transport: Any
    url: str
    headers: dict[str, str]
    timeout: aiohttp.ClientTimeout

    @classmethod
    def over(cls, client: AsyncOpenAI) -> DirectPost | None:
        http = getattr(client, "_client", None)
        transport = getattr(http, "_transport", None)
        if (
            not isinstance(transport, AiohttpTransport)
            or transport.proxy is not None
            or transport.uds
            or getattr(http, "_mounts", None)
            or client._custom_query
            # Authentication other than a plain API key is the SDK's to apply.
            or not isinstance(client.api_key, str)
            or not client.api_key
            or client._api_key_provider is not None
            or client._provider_runtime is not None
            or client.workload_identity is not None
        ):
            return None
        headers = {"Authorization": f"Bearer {client.api_key}"}
        headers.update(
            (key, value) for key, value in client.default_headers.items() if isinstance(value, str)
        )
        timeout = client.timeout
        if not isinstance(timeout, httpx2.Timeout):
            timeout = httpx2.Timeout(timeout)
        headers["X-Stainless-Async"] = "async:asyncio"
        headers["X-Stainless-Retry-Count"] = "0"
        if timeout.read is not None:
            headers["X-Stainless-Read-Timeout"] = str(timeout.read)
        return cls(
            transport=transport,
            url=str(client.base_url),
            headers=headers,
            timeout=aiohttp.ClientTimeout(
                sock_connect=timeout.connect, sock_read=timeout.read, connect=timeout.pool
            ),
        )

    @contextlib.asynccontextmanager
    async def stream(
        self, path: str, body: dict[str, Any]
    ) -> AsyncIterator[tuple[str | None, Callable[[], Awaitable[bytes]]]]:
        transport = self.transport
        if not isinstance(transport.client, aiohttp.ClientSession):
            transport.client = transport.get_client()  # as the transport's first request does
        session: aiohttp.ClientSession = transport.client
        data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        try:
            response = await session.post(
                self.url + path,
                data=data,
                headers=self.headers,
                allow_redirects=False,
                timeout=self.timeout,
            )
        except TimeoutError as error:
            raise UpstreamFailure(TIMEOUT_ERROR, detail=f"{type(error).__name__}: {error}",
                                  retryable=True) from error  # fmt: skip
        except (aiohttp.ClientError, OSError) as error:
            raise UpstreamFailure(UNREACHABLE_ERROR, detail=f"{type(error).__name__}: {error}",
                                  retryable=True) from error  # fmt: skip
        async with response:
            request_id = response.headers.get("x-request-id")
            if response.status >= 400:
                raise _status_failure(response.status, await _error_text(response), request_id)
            yield request_id, response.content.readany


async def _error_text(response: aiohttp.ClientResponse) -> str:
    """The SDK's text for an error status (`APIStatusError.message`): the status, and the
    `error.message` of a JSON body."""
    text = f"Error code: {response.status}"
    try:
        body = json.loads(await response.read())
    except (ValueError, aiohttp.ClientError, OSError, TimeoutError):
        return text
    error = body.get("error", body) if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return f"{text} - {message}" if isinstance(message, str) and message else text


def body_reader(
    response: httpx2.Response, stack: contextlib.AsyncExitStack
) -> Callable[[], Awaitable[bytes]]:
    """An awaitable read of the next bytes of a streamed body, b"" at its end.

    Over the SDK's aiohttp transport, the bytes come straight from aiohttp's buffer: one await
    per network read (all it holds), rather than through the five async generators of
    httpx2's `aiter_bytes` (response, raw, timing, transport stream, aiohttp's fixed-size
    chunks), whose decoders are identity on an unencoded body. Otherwise (httpx, an encoded
    body, an SDK whose transport is built differently) through `aiter_bytes`."""
    inner = getattr(response.stream, "_stream", None)
    aiohttp_response = getattr(inner, "_aiohttp_response", None)
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if isinstance(aiohttp_response, aiohttp.ClientResponse) and encoding == "identity":
        return aiohttp_response.content.readany
    chunks = response.aiter_bytes()
    stack.push_async_callback(chunks.aclose)

    async def read() -> bytes:
        async for chunk in chunks:
            if chunk:
                return chunk
        return b""

    return read


def tool_arguments(request: ReplyRequest) -> dict[str, Any]:
    """`tools` (and `include`, so tool calls come with their results: counts and quotes)
    of a reply's Responses request. File search goes only with a store to read."""
    tools: list[dict[str, Any]] = []
    include: list[str] = []
    if AssistantTool.FILE_SEARCH in request.tools and request.vector_store_ids:
        tools.append({"type": "file_search", "vector_store_ids": list(request.vector_store_ids)})
        include.append("file_search_call.results")
    if AssistantTool.WEB_SEARCH in request.tools:
        tools.append({"type": "web_search"})
        include.append("web_search_call.action.sources")
    return {"tools": tools, "include": include} if tools else {}


def _terminal_failure(
    response: dict[str, Any], kind: str, request_id: str | None
) -> UpstreamFailure:
    counts = tool_counts(response.get("output") or [])
    file_searches = counts[AssistantTool.FILE_SEARCH]
    web_searches = counts[AssistantTool.WEB_SEARCH]
    usage = response.get("usage") or {}
    input_tokens = usage.get("input_tokens")
    output_tokens = usage.get("output_tokens")
    if kind == "response.incomplete":
        reason = (response.get("incomplete_details") or {}).get("reason")
        return UpstreamFailure.cut_short(
            reason,
            detail=f"response.incomplete: {reason or 'no reason given'}",
            request_id=request_id,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            upstream_ended=True,
            file_search_calls=file_searches,
            web_search_calls=web_searches,
        )
    detail = (response.get("error") or {}).get("message") or "no detail given"
    return UpstreamFailure(
        PROVIDER_FAILED_ERROR,
        detail=f"response.failed: {detail}",
        request_id=request_id,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        upstream_ended=True,
        file_search_calls=file_searches,
        web_search_calls=web_searches,
    )


class ChatProvider(_FilesMixin):
    """Chat Completions streaming; no upstream conversation, ATLAS sends the history."""

    api = "chat"
    uses_conversations = False
    # Chat Completions has no built-in tools: assistants with tools are refused here
    # (`ai.assistants.check_tools`), and replies go without them.
    supports_tools = False
    # A chat completion lives as long as its HTTP request: nothing to resume or cancel.
    background = False
    can_resume = False

    def __init__(self, client: AsyncOpenAI) -> None:
        self.client = client

    async def create_conversation(self, *, history: list[HistoryItem]) -> str:
        raise NotImplementedError("Chat Completions has no conversations")

    def resume_reply(self, response_id: str, *, after_sequence: int) -> AsyncIterator[ReplyBatch]:
        raise NotImplementedError("Chat Completions has no background responses")

    async def cancel_response(self, response_id: str) -> None:
        return None

    async def complete_text(self, request: TextRequest) -> TextCompletion:
        try:
            completion = await self.client.chat.completions.create(
                model=request.model,
                messages=[
                    {"role": "system", "content": request.instructions},
                    {"role": "user", "content": request.content},
                ],
                max_tokens=request.max_output_tokens,
            )
        except UPSTREAM_ERRORS as error:
            raise _failure_from_sdk(error) from error
        usage = completion.usage
        choice = completion.choices[0] if completion.choices else None
        return TextCompletion(
            text=(choice.message.content or "") if choice else "",
            response_id=completion.id,
            input_tokens=usage.prompt_tokens if usage else 0,
            output_tokens=usage.completion_tokens if usage else 0,
        )

    async def stream_reply(self, request: ReplyRequest) -> AsyncIterator[ReplyBatch]:
        messages: list[Any] = []
        if request.instructions:
            messages.append({"role": "system", "content": request.instructions})
        messages += [{"role": item.role, "content": item.content} for item in request.history]
        if request.file_ids:
            parts: list[Any] = [{"type": "text", "text": request.content}]
            parts += [
                {"type": "file", "file": {"file_id": file_id}} for file_id in request.file_ids
            ]
            messages.append({"role": "user", "content": parts})
        else:
            messages.append({"role": "user", "content": request.content})
        arguments: dict[str, Any] = {
            "model": request.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.temperature is not None:
            arguments["temperature"] = request.temperature
        try:
            stream = await self.client.chat.completions.create(**arguments)
        except UPSTREAM_ERRORS as error:
            raise _failure_from_sdk(error) from error
        request_id = _request_id_of(stream)
        completion_id: str | None = None
        model: str | None = None
        finish_reason: str | None = None
        usage: Any = None
        started = False
        try:
            async with stream:
                async for chunk in stream:
                    completion_id = completion_id or chunk.id
                    model = model or chunk.model
                    batch: ReplyBatch = []
                    if not started:
                        started = True
                        batch.append(ReplyStarted(response_id=chunk.id))
                    if chunk.usage is not None:
                        usage = chunk.usage
                    for choice in chunk.choices:
                        if choice.delta and choice.delta.content:
                            batch.append(ReplyDelta(text=choice.delta.content))
                        if choice.finish_reason:
                            finish_reason = choice.finish_reason
                    if batch:
                        yield batch
        except UPSTREAM_ERRORS as error:
            failure = _failure_from_sdk(error, mid_stream=True)
            failure.request_id = failure.request_id or request_id
            raise failure from error
        input_tokens: int = usage.prompt_tokens if usage else 0
        output_tokens: int = usage.completion_tokens if usage else 0
        if finish_reason in {"stop", "tool_calls", "function_call"}:
            yield [
                ReplyDone(
                    response_id=completion_id,
                    output_message_id=completion_id,
                    model=model,
                    input_tokens=input_tokens,
                    output_tokens=output_tokens,
                )
            ]
            return
        if finish_reason is None:
            raise UpstreamFailure.stream_ended(
                detail="The stream ended without a finish_reason.",
                request_id=request_id,
                retryable=not started,
            )
        raise UpstreamFailure.cut_short(
            finish_reason,
            detail=f"finish_reason: {finish_reason}",
            request_id=request_id,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
        )

    async def close(self) -> None:
        await self.client.close()


def create_provider(settings: Settings) -> Provider:
    """The adapter ATLAS_OPENAI_API selects."""
    client = create_client(settings)
    if settings.atlas_openai_api is OpenAIApi.CHAT:
        return ChatProvider(client)
    return ResponsesProvider(client, background=settings.atlas_openai_background)
