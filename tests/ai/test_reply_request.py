"""The request a reply starts with, built by hand (`provider.DirectPost`) over the SDK's own
aiohttp session: on the wire the SDK's request (its body checked against the SDK's own
request type), and its failures the SDK's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from openai.types.responses.response_create_params import ResponseCreateParamsStreaming
from pydantic import TypeAdapter

from atlas_gql.ai.models import AssistantTool, MessageStatus
from atlas_gql.ai.provider import (
    TIMEOUT_ERROR,
    UNREACHABLE_ERROR,
    DirectPost,
    HistoryItem,
    ReplyDelta,
    ReplyDone,
    ReplyItem,
    ReplyRequest,
    ResponsesProvider,
    UpstreamFailure,
    create_client,
    reply_body,
)
from atlas_gql.config import Settings
from tests.ai.fake_openai import Behaviour, FakeOpenAI

IN_CONVERSATION = ReplyRequest(
    model="gpt-4o-mini",
    instructions="Answer briefly.",
    temperature=0.3,
    content="Hé wörld ☃",
    file_ids=["file_1", "file_2"],
    conversation_id="conv_1",
    tools=(AssistantTool.FILE_SEARCH, AssistantTool.WEB_SEARCH),
    vector_store_ids=["vs_1"],
)
ON_A_BRANCH = ReplyRequest(
    model="gpt-4o-mini",
    instructions=None,
    temperature=None,
    content="And then?",
    history=[HistoryItem("user", "First"), HistoryItem("assistant", "Answer")],
)
# Headers of the SDK's request that are its own business (its transport, the response mode
# it reads the answer in) or the connection's.
NOT_COMPARED = {
    "host",
    "content-length",
    "accept-encoding",
    "connection",
    "x-stainless-raw-response",
}


def provider_over(
    base_url: str, client: str = "aiohttp", timeout: float = 30.0
) -> ResponsesProvider:
    settings = Settings(
        _env_file=None,
        openai_base_url=base_url,
        openai_api_key="sk-test",
        atlas_openai_http_client=client,
        atlas_openai_timeout=timeout,
    )
    return ResponsesProvider(create_client(settings))


async def items_of(batches: AsyncIterator[list[ReplyItem]]) -> list[ReplyItem]:
    return [item async for batch in batches for item in batch]


async def failure_of(provider: ResponsesProvider, request: ReplyRequest) -> UpstreamFailure:
    try:
        await items_of(provider.stream_reply(request))
    except UpstreamFailure as failure:
        return failure
    raise AssertionError("the reply did not fail")


async def failures_by_hand_and_by_sdk(url: str, timeout: float = 30.0) -> list[UpstreamFailure]:
    """How the same reply fails with the hand-built request and with the SDK's (httpx)."""
    providers = [provider_over(url, client, timeout) for client in ("aiohttp", "httpx")]
    try:
        return [await failure_of(provider, IN_CONVERSATION) for provider in providers]
    finally:
        for provider in providers:
            await provider.close()


def what_users_and_logs_get(failure: UpstreamFailure) -> tuple[Any, ...]:
    return (
        failure.message, failure.detail, failure.status, failure.http_status,
        failure.request_id, failure.retryable,
    )  # fmt: skip


@pytest.mark.parametrize("request_", [IN_CONVERSATION, ON_A_BRANCH], ids=["conversation", "branch"])
@pytest.mark.parametrize("background", [True, False])
async def test_the_hand_built_request_is_the_sdks(
    fake_openai: FakeOpenAI, request_: ReplyRequest, background: bool
) -> None:
    provider = provider_over(fake_openai.base_url)
    provider.background = background
    assert DirectPost.over(provider.client) is not None
    try:
        items = await items_of(provider.stream_reply(request_))
        body = reply_body(request_, background=background)
        async with provider.client.responses.with_streaming_response.create(**body) as response:
            await response.read()
    finally:
        await provider.close()
    by_hand, by_sdk = fake_openai.calls("/v1/responses")
    assert "x-stainless-raw-response" not in by_hand.headers  # not sent by the SDK
    assert by_hand.method == by_sdk.method == "POST"
    assert by_hand.body == by_sdk.body
    assert by_hand.body.get("background", False) is background
    compared = {key: value for key, value in by_sdk.headers.items() if key not in NOT_COMPARED}
    assert {key: by_hand.headers.get(key) for key in compared} == compared
    assert by_hand.headers["content-type"] == "application/json"
    # The SDK's own type of a streamed request: every key one of its fields, and valid.
    fields = ResponseCreateParamsStreaming.__required_keys__ | (
        ResponseCreateParamsStreaming.__optional_keys__
    )
    assert set(by_hand.body) <= fields
    TypeAdapter(ResponseCreateParamsStreaming).validate_python(by_hand.body)
    # And the stream it opened reads as any other.
    text = "".join(item.text for item in items if isinstance(item, ReplyDelta))
    assert text.startswith("Hello, this is ATLAS.")
    assert isinstance(items[-1], ReplyDone)


def test_without_the_sdks_aiohttp_transport_the_sdk_sends_it() -> None:
    provider = provider_over("http://127.0.0.1:9/v1", client="httpx")
    assert DirectPost.over(provider.client) is None


@pytest.mark.parametrize("status", [400, 401, 429, 500])
async def test_an_error_status_fails_as_through_the_sdk(
    fake_openai: FakeOpenAI, status: int
) -> None:
    error = Behaviour(
        kind="http_error",
        status=status,
        request_id=f"req_{status}",
        error_message="Incorrect API key provided: sk-test-Zx81abcDEF0123",
    )
    fake_openai.then(error, error)
    failures = await failures_by_hand_and_by_sdk(fake_openai.base_url)
    assert what_users_and_logs_get(failures[0]) == what_users_and_logs_get(failures[1])
    assert failures[0].http_status == status
    assert failures[0].retryable is (status in {429, 500})
    assert "Zx81abcDEF" not in (failures[0].detail or "")


async def test_an_unreachable_provider_fails_as_through_the_sdk() -> None:
    # A port nothing listens on: connecting is refused.
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    failures = await failures_by_hand_and_by_sdk(f"http://127.0.0.1:{port}/v1")
    for failure in failures:
        assert (failure.message, failure.status, failure.retryable) == (
            UNREACHABLE_ERROR, MessageStatus.FAILED, True,
        )  # fmt: skip


async def test_a_provider_that_never_answers_times_out_as_through_the_sdk() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # reads the request, never answers

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    try:
        failures = await failures_by_hand_and_by_sdk(url, timeout=0.2)
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
    for failure in failures:
        assert (failure.message, failure.retryable) == (TIMEOUT_ERROR, True)
