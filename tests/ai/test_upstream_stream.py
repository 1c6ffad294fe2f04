"""The Responses stream read raw (sse.py + ResponsesStreamReader), checked against the SDK's
own parsing and types; both HTTP transports; a bug in ATLAS surfaces as a bug."""

from __future__ import annotations

import contextlib
import random
from typing import Any

import aiohttp
import openai
import pytest
import sqlalchemy as sa
from openai import AsyncOpenAI
from openai._models import construct_type
from openai._streaming import SSEDecoder as SdkDecoder
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseCreatedEvent,
    ResponseErrorEvent,
    ResponseStreamEvent,
    ResponseTextDeltaEvent,
)
from pydantic import TypeAdapter
from sqlmodel import col

from atlas_gql.ai.models import MessageStatus
from atlas_gql.ai.provider import (
    PROVIDER_REPORTED_ERROR,
    UNREADABLE_ERROR,
    ReplyDelta,
    ReplyDone,
    ReplyItem,
    ReplyStarted,
    ResponsesStreamReader,
    body_reader,
    create_client,
)
from atlas_gql.ai.sse import SSEDecoder
from atlas_gql.config import Settings
from atlas_gql.logs.models import ErrorLog, ErrorSource
from tests.ai.conftest import AIServer, StartServer
from tests.ai.fake_openai import Behaviour, FakeOpenAI
from tests.ai.test_replies import rows


async def wire(behaviour: Behaviour) -> bytes:
    """What the fake OpenAI sends for `behaviour` (the Responses API's wire format)."""
    fake = FakeOpenAI()
    body = {"model": "gpt-4o-mini", "conversation": "conv_1"}
    return b"".join([chunk async for chunk in fake._response_event_lines(body, behaviour)])


def sdk_events(data: bytes) -> list[Any]:
    """The same bytes as the SDK parses them: its SSE decoder, its event types."""
    return [
        construct_type(type_=ResponseStreamEvent, value=sse.json())
        for sse in SdkDecoder().iter_bytes(iter([data]))
    ]


def read(data: bytes, size: int | None) -> tuple[list[ReplyItem], ResponsesStreamReader]:
    reader = ResponsesStreamReader(request_id="req_1")
    step = size or len(data)
    items: list[ReplyItem] = []
    for start in range(0, len(data), step):
        items += reader.feed(data[start : start + step])
    return items, reader


@pytest.mark.parametrize("size", [1, 7, 100, None])
@pytest.mark.parametrize("line_end", [b"\n", b"\r\n"])
async def test_reader_agrees_with_the_sdk_however_the_bytes_are_cut(
    size: int | None, line_end: bytes
) -> None:
    behaviour = Behaviour(deltas=("Hé", "llo ", "wörld ☃", ""), input_tokens=5, output_tokens=3)
    data = (await wire(behaviour)).replace(b"\n", line_end)
    sdk = sdk_events(data)
    items, reader = read(data, size)

    sdk_deltas = [e.delta for e in sdk if e.type == "response.output_text.delta" and e.delta]
    assert [item.text for item in items if isinstance(item, ReplyDelta)] == sdk_deltas
    assert sdk_deltas == ["Hé", "llo ", "wörld ☃"]
    started = items[0]
    assert isinstance(started, ReplyStarted)
    assert started.response_id == sdk[0].response.id
    done = items[-1]
    completed = sdk[-1]
    assert completed.type == "response.completed"
    assert isinstance(done, ReplyDone)
    assert done.response_id == completed.response.id
    assert done.output_message_id == completed.response.output[0].id
    assert done.model == completed.response.model
    assert (done.input_tokens, done.output_tokens) == (
        completed.response.usage.input_tokens,
        completed.response.usage.output_tokens,
    )
    assert reader.finished
    assert reader.failure is None
    assert reader.last_sequence_number == completed.sequence_number


def test_events_serialised_from_the_sdk_types_are_read() -> None:
    delta = ResponseTextDeltaEvent(
        content_index=0, delta="typed", item_id="msg_1", logprobs=[], output_index=0,
        sequence_number=41, type="response.output_text.delta",
    )  # fmt: skip
    error = ResponseErrorEvent(
        code="server_error", message="overloaded", param=None, sequence_number=42, type="error"
    )
    # The first without an `event:` line (its type is read from its data), one event the
    # reader has no use for, then an error event: all in one read.
    data = (
        f"data: {delta.to_json(indent=None)}\n\n"
        'event: response.reasoning_summary_text.delta\ndata: {"type": "x"}\n\n'
        f"event: error\ndata: {error.to_json(indent=None)}\n\n"
    ).encode()
    items, reader = read(data, None)
    assert items == [ReplyDelta(text="typed", sequence_number=41)]
    assert reader.failure is not None
    assert reader.failure.message == PROVIDER_REPORTED_ERROR
    assert "overloaded" in (reader.failure.detail or "")
    assert reader.last_sequence_number == 42
    # Nothing after the end is read.
    assert reader.feed(data) == []


def test_an_unreadable_event_fails_the_reply_after_the_text_before_it() -> None:
    items, reader = read(
        b'event: response.output_text.delta\ndata: {"type": "response.output_text.delta", '
        b'"delta": "ok"}\n\nevent: response.output_text.delta\ndata: {not json\n\n',
        None,
    )
    assert items == [ReplyDelta(text="ok")]
    assert reader.failure is not None
    assert reader.failure.message == UNREADABLE_ERROR


def test_sse_framing_keeps_partial_events_and_multiline_data() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"event: a\ndata: 1\ndata: 2\n") == []
    assert decoder.pending
    [event] = decoder.feed(b"\n: a comment\nid: 7\n\n")
    assert (event.event, event.data) == ("a", b"1\n2")
    assert decoder.feed(b"\r") == []
    [event] = decoder.feed(b"\ndata:x\r\n\r\n")
    assert (event.event, event.data) == ("message", b"x")


def generated_stream(seed: int) -> tuple[bytes, list[tuple[str, bytes]]]:
    """A random event stream in any of the spec's shapes, and its events (name, data)."""
    rng = random.Random(seed)
    end = rng.choice([b"\n", b"\r\n", b"\r"])
    names = ["response.output_text.delta", "response.completed", "error", "x-unknown", None]
    lines_of_text = ["{}", '{"delta": "h\u00e9"}', "plain text", "", " leading space", "a:b"]
    wire: list[bytes] = []
    expected: list[tuple[str, bytes]] = []
    for _ in range(rng.randint(1, 12)):
        lines: list[bytes] = []
        if rng.random() < 0.2:
            lines.append(b": a comment")
        name = rng.choice(names)
        if name is not None:
            lines.append(b"event:" + rng.choice([b" ", b""]) + name.encode())
        data = []
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            value = rng.choice(lines_of_text).encode()
            # One space after the colon is not part of the value (whichever side it came from).
            line = b"data: " + value if rng.random() < 0.8 else b"data:" + value
            lines.append(line)
            data.append(line[6:] if line.startswith(b"data: ") else line[5:])
        if rng.random() < 0.2:
            lines.insert(rng.randrange(len(lines) + 1), b"id: 7")
        if rng.random() < 0.1:
            lines.insert(rng.randrange(len(lines) + 1), b"retry: 1000")
        wire.append(end.join(lines) + end + end)
        expected.append((name or "message", b"\n".join(data)))
    return b"".join(wire), expected


@pytest.mark.parametrize("seed", range(40))
def test_sse_framing_agrees_with_the_sdk_on_generated_streams(seed: int) -> None:
    data, expected = generated_stream(seed)
    sdk = [
        (event.event or "message", event.data.encode())
        for event in SdkDecoder().iter_bytes(iter([data]))
    ]
    assert sdk == expected
    rng = random.Random(seed)
    for _ in range(5):  # cut anywhere, in pieces of any size (one byte included)
        decoder = SSEDecoder()
        events: list[tuple[str, bytes]] = []
        start = 0
        while start < len(data):
            size = rng.choice([1, 2, 3, rng.randint(1, 64), len(data)])
            events += [(e.event, e.data) for e in decoder.feed(data[start : start + size])]
            start += size
        assert events == expected
        assert decoder.pending == b""


@pytest.mark.parametrize("client", ["aiohttp", "httpx"])
async def test_a_streamed_body_reads_the_same_over_either_transport(
    fake_openai: FakeOpenAI, client: str
) -> None:
    settings = Settings(
        _env_file=None,
        openai_base_url=fake_openai.base_url,
        openai_api_key="sk-test",
        atlas_openai_http_client=client,
    )
    sdk = create_client(settings)
    expected = await wire(Behaviour())
    try:
        async with (
            sdk.responses.with_streaming_response.create(
                model="gpt-4o-mini", input="hi", stream=True
            ) as response,
            contextlib.AsyncExitStack() as stack,
        ):
            read = body_reader(response.http_response, stack)
            # Over aiohttp, straight from its buffer (an SDK whose transport changed shape
            # falls back to httpx2's iterator: this says when that happens).
            direct = isinstance(getattr(read, "__self__", None), aiohttp.StreamReader)
            assert direct is (client == "aiohttp")
            body = b""
            while chunk := await read():
                body += chunk
            assert await read() == b""
    finally:
        await sdk.close()
    assert body.replace(b"resp_", b"").count(b"event: ") == expected.count(b"event: ")
    assert [e.event for e in SSEDecoder().feed(body)] == [
        e.event for e in SSEDecoder().feed(expected)
    ]


# -- against a live server ------------------------------------------------------------------


@pytest.mark.parametrize("client", ["httpx", "aiohttp"])
async def test_a_reply_streams_over_either_http_transport(
    start_ai_server: StartServer, client: str
) -> None:
    ai = await start_ai_server(atlas_openai_http_client=client)
    thread_id = await ai.new_thread()
    async with ai.client.subscribe(ai.people.member, thread_id) as subscription:
        await ai.send(thread_id)
        events = await subscription.until_final()
    assert events[-1]["__typename"] == "MessageCompleted"
    assert events[-1]["message"]["content"] == "Hello, this is ATLAS."
    assert [e["delta"] for e in events if e["__typename"] == "MessageDelta"] == [
        "Hello", ", ", "this ", "is ", "ATLAS", "."
    ]  # fmt: skip


class BuggyReader(ResponsesStreamReader):
    def feed(self, chunk: bytes) -> list[ReplyItem]:
        raise TypeError("a bug in ATLAS, not in the network")


async def test_a_bug_while_reading_the_stream_is_a_server_error_not_a_cut(ai: AIServer) -> None:
    runtime = ai.server.app.state.atlas["services"].ai
    runtime.provider.reader_class = BuggyReader
    thread_id = await ai.new_thread()
    async with ai.client.subscribe(ai.people.member, thread_id) as subscription:
        payload = (await ai.send(thread_id))["data"]["sendMessage"]
        final = (await subscription.until_final())[-1]
    assert final["__typename"] == "MessageFailed"
    assert final["message"]["status"] == MessageStatus.FAILED.value
    assert final["error"] == "The reply failed because of a server error."
    # Not taken for a flaky network: no retry.
    assert len(ai.fake.calls("/v1/responses")) == 1
    reply_id = payload["assistantMessage"]["id"]
    [logged] = await rows(ai, sa.select(ErrorLog).where(col(ErrorLog.path).contains(reply_id)))
    assert logged.source is ErrorSource.BACKGROUND
    assert logged.error_type == "builtins.TypeError"
    assert "a bug in ATLAS" in (logged.stack or "")


# -- the fake's background mode, through the SDK's own types ------------------------------------


async def test_the_fake_background_mode_speaks_the_sdk_types(fake_openai: FakeOpenAI) -> None:
    client = AsyncOpenAI(api_key="sk-test", base_url=fake_openai.base_url, max_retries=0)
    validate = TypeAdapter(ResponseStreamEvent).validate_python
    try:
        stream = await client.responses.create(
            model="gpt-4o-mini", input="hi", background=True, stream=True
        )
        created = [validate(event.to_dict()) async for event in stream]
        first = created[0]
        assert isinstance(first, ResponseCreatedEvent)
        assert (first.response.status, first.response.background) == ("queued", True)
        assert created[1].type == "response.queued"
        assert isinstance(created[-1], ResponseCompletedEvent)
        response_id = first.response.id

        # Read again from any event on (what a resumed reply does).
        after = created[6].sequence_number
        resumed = await client.responses.retrieve(response_id, stream=True, starting_after=after)
        again = [validate(event.to_dict()) async for event in resumed]
        assert again == created[7:]

        stored = Response.model_validate((await client.responses.retrieve(response_id)).to_dict())
        assert (stored.status, stored.output_text) == ("completed", "Hello, this is ATLAS.")

        # Cancel stops a running one; twice answers the final response again.
        running = fake_openai.start_response(Behaviour(delay=0.05))
        for _ in range(2):
            cancelled = await client.responses.cancel(running.id)
            assert Response.model_validate(cancelled.to_dict()).status == "cancelled"
        assert running.ended
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve("resp_unknown")
    finally:
        await client.close()


async def test_text_postgresql_cannot_store_completes_the_reply_replaced(ai: AIServer) -> None:
    """A model's text with a NUL or a lone surrogate (JSON carries both) is stored and streamed
    with U+FFFD in their place: the reply completes (it used to stay IN_PROGRESS, its text
    refused by PostgreSQL), and the deltas join to the stored content."""
    ai.fake.then(Behaviour(deltas=("Hello ", "wor\x00ld", " \ud83d", "!")))
    thread_id = await ai.new_thread()
    async with ai.client.subscribe(ai.people.member, thread_id) as subscription:
        assert "errors" not in await ai.send(thread_id)
        events = await subscription.until_final()
    final = events[-1]
    assert final["__typename"] == "MessageCompleted", final
    assert final["message"]["content"] == "Hello wor\ufffdld \ufffd!"
    deltas = "".join(e["delta"] for e in events if e["__typename"] == "MessageDelta")
    assert deltas == final["message"]["content"]
    read = await ai.client.data(
        "query($id: ID!) { node(id: $id) { ... on Message { status content } } }",
        {"id": final["message"]["id"]},
        token=ai.people.member,
    )
    assert read["node"] == {"status": "COMPLETED", "content": "Hello wor\ufffdld \ufffd!"}
