"""`threadEvents` over HTTP on a real uvicorn: graphql-sse (`Accept: text/event-stream`) and
Apollo's multipart protocol (`Accept: multipart/mixed;subscriptionSpec="1.0"`), with the same
auth and `afterSequence` as the WebSocket; refusals before the stream are 4xx JSON with a
code; streams are counted per user and per worker, and end when the client goes away."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from atlas_gql.graph.streams import StreamSlots
from atlas_gql.logs.models import ErrorLog
from tests.ai.conftest import AIServer, StartServer
from tests.ai.fake_openai import Behaviour
from tests.live import EVENTS_SUBSCRIPTION, HANG_GUARD, wait_until

SSE = "text/event-stream"
MULTIPART = 'multipart/mixed;boundary="graphql";subscriptionSpec=1.0,application/json'


class HttpStream:
    """One subscription over HTTP: its parsed messages, in order."""

    def __init__(self, response: httpx.Response, accept: str) -> None:
        self.response = response
        self.multipart = accept.startswith("multipart/")
        self._messages = self._sse() if not self.multipart else self._parts()

    async def _sse(self) -> AsyncIterator[dict[str, Any]]:
        event: str | None = None
        data: list[str] = []
        async for line in self.response.aiter_lines():
            if line.startswith(":"):
                continue
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
            elif line == "" and event is not None:
                payload = json.loads("".join(data)) if event == "next" else None
                yield {"event": event, "payload": payload}
                event, data = None, []

    async def _parts(self) -> AsyncIterator[dict[str, Any]]:
        buffer = ""
        async for text in self.response.aiter_text():
            buffer += text
            while True:
                start = buffer.find("--graphql")
                end = buffer.find("--graphql", start + 1)
                if start < 0:
                    break
                if buffer.startswith("--graphql--", start):
                    yield {"event": "complete", "payload": None}
                    return
                if end < 0:
                    break
                part, buffer = buffer[start + len("--graphql") : end], buffer[end:]
                if not part.strip():
                    continue  # the closing delimiter follows the last part's
                body = part.split("\r\n\r\n", 1)[1].strip()
                message = json.loads(body)
                if message == {}:
                    yield {"event": "heartbeat", "payload": None}
                else:
                    yield {"event": "next", "payload": message["payload"]}

    async def message(self, timeout: float = HANG_GUARD) -> dict[str, Any]:
        """The next message, heartbeats skipped."""
        while True:
            message = await asyncio.wait_for(anext(self._messages), timeout)
            if message["event"] != "heartbeat":
                return message

    async def event(self) -> dict[str, Any]:
        message = await self.message()
        assert message["event"] == "next", message
        payload = message["payload"]
        assert "errors" not in payload, payload
        event: dict[str, Any] = payload["data"]["threadEvents"]
        return event

    async def until_final(self) -> list[dict[str, Any]]:
        events = []
        while True:
            events.append(await self.event())
            if events[-1]["__typename"] in {"MessageCompleted", "MessageFailed"}:
                return events


@pytest.fixture
async def http(ai: AIServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=ai.server.http_url, timeout=30) as client:
        yield client


def _headers(accept: str, token: str | None) -> dict[str, str]:
    headers = {"Accept": accept}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def _subscription(thread_id: str, after: int | None = 0) -> dict[str, Any]:
    return {"query": EVENTS_SUBSCRIPTION, "variables": {"threadId": thread_id, "after": after}}


async def open_stream(
    client: httpx.AsyncClient,
    accept: str,
    token: str | None,
    body: dict[str, Any],
    stack: Any,
) -> HttpStream:
    request = client.build_request("POST", "/graphql", json=body, headers=_headers(accept, token))
    response = await client.send(request, stream=True)
    stack.push_async_callback(response.aclose)
    assert response.status_code == 200, await response.aread()
    return HttpStream(response, accept)


async def _error_log_rows(ai: AIServer) -> int:
    async with ai.server.app.state.atlas["runtime"].sessionmaker() as db:
        count = await db.scalar(sa.select(sa.func.count()).select_from(ErrorLog))
    return int(count or 0)


def _slots(ai: AIServer) -> StreamSlots:
    slots: StreamSlots = ai.server.app.state.atlas["graphql"].stream_slots
    return slots


def _subscribers(ai: AIServer) -> int:
    broker = ai.server.app.state.atlas["services"].ai.broker
    return sum(len(group) for group in broker._fanout.subscribers.values())


@pytest.mark.parametrize("accept", [SSE, MULTIPART])
async def test_a_reply_streams_over_http(
    ai: AIServer, http: httpx.AsyncClient, accept: str
) -> None:
    thread_id = await ai.new_thread()
    async with contextlib.AsyncExitStack() as stack:
        stream = await open_stream(http, accept, ai.people.member, _subscription(thread_id), stack)
        assert stream.response.headers["content-type"].startswith(accept.split(";")[0])
        assert stream.response.headers["cache-control"] == "no-cache, no-transform"
        sent = await ai.send(thread_id, "Hello over HTTP")
        assert "errors" not in sent, sent
        events = await stream.until_final()
    kinds = [event["__typename"] for event in events]
    assert kinds[:2] == ["MessageCreated", "MessageCreated"]
    assert kinds[-1] == "MessageCompleted"
    deltas = "".join(event["delta"] for event in events if event["__typename"] == "MessageDelta")
    assert deltas == "Hello, this is ATLAS." == events[-1]["message"]["content"]
    sequences = [event["sequence"] for event in events]
    assert sequences == sorted(set(sequences))
    await wait_until(lambda: _slots(ai).open == 0 and _subscribers(ai) == 0)


@pytest.mark.parametrize("accept", [SSE, MULTIPART])
async def test_a_reconnect_with_after_sequence_misses_nothing(
    ai: AIServer, http: httpx.AsyncClient, accept: str
) -> None:
    ai.fake.gates["complete"] = asyncio.Event()
    thread_id = await ai.new_thread()
    async with contextlib.AsyncExitStack() as first:
        stream = await open_stream(http, accept, ai.people.member, _subscription(thread_id), first)
        await ai.send(thread_id, "Count to six")
        seen: list[dict[str, Any]] = []
        while not any(event["__typename"] == "MessageDelta" for event in seen):
            seen.append(await stream.event())
    # Gone mid-reply: the server drops the stream and leaves the broker.
    await wait_until(lambda: _slots(ai).open == 0 and _subscribers(ai) == 0)
    async with contextlib.AsyncExitStack() as second:
        stream = await open_stream(
            http,
            accept,
            ai.people.member,
            _subscription(thread_id, after=seen[-1]["sequence"]),
            second,
        )
        seen.append(await stream.event())
        ai.fake.gates["complete"].set()
        seen.extend(await stream.until_final())
    sequences = [event["sequence"] for event in seen]
    assert sequences == sorted(set(sequences)), sequences
    deltas = "".join(event["delta"] for event in seen if event["__typename"] == "MessageDelta")
    stored = seen[-1]["message"]["content"]
    assert deltas == stored == "Hello, this is ATLAS."


@pytest.mark.parametrize("accept", [SSE, MULTIPART])
async def test_the_stream_says_unauthenticated_and_not_found(
    ai: AIServer, http: httpx.AsyncClient, accept: str
) -> None:
    thread_id = await ai.new_thread()
    errors_before = await _error_log_rows(ai)
    for token, code in ((None, "UNAUTHENTICATED"), (ai.people.outsider, "NOT_FOUND")):
        async with contextlib.AsyncExitStack() as stack:
            stream = await open_stream(http, accept, token, _subscription(thread_id), stack)
            message = await stream.message()
            assert message["event"] == "next"
            errors = message["payload"]["errors"]
            assert [error["extensions"]["code"] for error in errors] == [code]
            assert (await stream.message())["event"] == "complete"
    assert await _error_log_rows(ai) == errors_before
    await wait_until(lambda: _slots(ai).open == 0)


REFUSALS = [
    # (body, status, code)
    ({"query": "subscription { threadEvents { __typename } }"}, 400, "GRAPHQL_VALIDATION_FAILED"),
    ({"query": "subscription {"}, 400, "GRAPHQL_VALIDATION_FAILED"),
    (
        {"query": EVENTS_SUBSCRIPTION, "variables": {"threadId": "x", "after": "seven"}},
        400,
        "BAD_USER_INPUT",
    ),
    ({"query": EVENTS_SUBSCRIPTION}, 400, "BAD_USER_INPUT"),
    ({"query": "subscription A { __typename } subscription B { __typename }"}, 400, "BAD_REQUEST"),
    ({"query": "{ __typename }", "operationName": "Nope"}, 400, "BAD_REQUEST"),
    ({"query": 5}, 400, "BAD_REQUEST"),
]


@pytest.mark.parametrize("accept", [SSE, MULTIPART])
@pytest.mark.parametrize(("body", "status", "code"), REFUSALS)
async def test_a_refused_stream_is_4xx_json(
    ai: AIServer,
    http: httpx.AsyncClient,
    accept: str,
    body: dict[str, Any],
    status: int,
    code: str,
) -> None:
    response = await http.post("/graphql", json=body, headers=_headers(accept, ai.people.member))
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert "data" not in response.json()
    assert [e["extensions"]["code"] for e in response.json()["errors"]][:1] == [code]
    assert _slots(ai).open == 0


async def test_a_query_over_multipart_subscriptions_is_400(
    ai: AIServer, http: httpx.AsyncClient
) -> None:
    response = await http.post(
        "/graphql", json={"query": "{ __typename }"}, headers=_headers(MULTIPART, None)
    )
    assert response.status_code == 400, response.text
    assert response.json()["errors"][0]["extensions"]["code"]


@pytest.mark.parametrize(
    "query", ["{ __typename }", "{ projects(first: 1) { totalCount nodes { id name } } }"]
)
async def test_a_query_over_sse_is_one_event(
    ai: AIServer, http: httpx.AsyncClient, query: str
) -> None:
    """A query over graphql-sse is one `next` event, also where the compiled read path would
    answer it as JSON."""
    async with contextlib.AsyncExitStack() as stack:
        stream = await open_stream(http, SSE, ai.people.member, {"query": query}, stack)
        message = await stream.message()
        assert message["event"] == "next"
        assert "errors" not in message["payload"], message
        assert message["payload"]["data"]
        assert (await stream.message())["event"] == "complete"


@pytest.mark.parametrize(
    "accept",
    [
        "application/json",
        "application/graphql-response+json",
        "*/*",
        "multipart/mixed;deferSpec=20220824,application/json",
        'multipart/mixed;subscriptionSpec="2.0"',
        "text/html",
    ],
)
async def test_a_subscription_without_a_served_transport_is_406(
    ai: AIServer, http: httpx.AsyncClient, accept: str
) -> None:
    response = await http.post(
        "/graphql", json=_subscription("x"), headers=_headers(accept, ai.people.member)
    )
    assert response.status_code == 406, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["errors"][0]
    assert error["extensions"]["code"] == "BAD_REQUEST"
    assert "text/event-stream" in error["message"]
    assert "subscriptionSpec" in error["message"]


async def test_streams_are_capped_per_user_and_per_worker(start_ai_server: StartServer) -> None:
    ai = await start_ai_server(atlas_max_http_streams=2, atlas_max_http_streams_per_user=1)
    thread_id = await ai.new_thread()
    async with httpx.AsyncClient(base_url=ai.server.http_url, timeout=30) as http:
        async with contextlib.AsyncExitStack() as stack:
            await open_stream(http, SSE, ai.people.member, _subscription(thread_id), stack)
            await wait_until(lambda: _subscribers(ai) == 1)
            again = await http.post(
                "/graphql",
                json=_subscription(thread_id),
                headers=_headers(MULTIPART, ai.people.member),
            )
            assert again.status_code == 429, again.text
            assert again.json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
            assert "per user" in again.json()["errors"][0]["message"]
            # Another user may still open one, then the worker is full.
            await open_stream(http, SSE, ai.people.manager, _subscription(thread_id), stack)
            full = await http.post(
                "/graphql",
                json=_subscription(thread_id),
                headers=_headers(SSE, ai.people.admin),
            )
            assert full.status_code == 429, full.text
            assert _slots(ai).open == 2
        # Closed streams free their slots.
        await wait_until(lambda: _slots(ai).open == 0 and _subscribers(ai) == 0)
        async with contextlib.AsyncExitStack() as stack:
            await open_stream(http, SSE, ai.people.member, _subscription(thread_id), stack)


async def test_multipart_starts_with_a_heartbeat(ai: AIServer, http: httpx.AsyncClient) -> None:
    thread_id = await ai.new_thread()
    async with contextlib.AsyncExitStack() as stack:
        stream = await open_stream(
            http, MULTIPART, ai.people.member, _subscription(thread_id), stack
        )
        first = await asyncio.wait_for(anext(stream._messages), HANG_GUARD)
        assert first["event"] == "heartbeat"


async def test_http_streams_can_be_turned_off(start_ai_server: StartServer) -> None:
    ai = await start_ai_server(atlas_max_http_streams=0)
    async with httpx.AsyncClient(base_url=ai.server.http_url, timeout=30) as http:
        for accept in (SSE, MULTIPART):
            response = await http.post(
                "/graphql", json=_subscription("x"), headers=_headers(accept, ai.people.member)
            )
            assert response.status_code == 406, response.text
            assert "ATLAS_MAX_HTTP_STREAMS=0" in response.json()["errors"][0]["message"]


async def test_the_stream_ends_when_the_reply_server_stops_streaming_slowly(
    ai: AIServer, http: httpx.AsyncClient
) -> None:
    """A slow reply still streams every delta in order over SSE."""
    ai.fake.then(Behaviour(deltas=("a", "b", "c", "d"), delay=0.05))
    thread_id = await ai.new_thread()
    async with contextlib.AsyncExitStack() as stack:
        stream = await open_stream(http, SSE, ai.people.member, _subscription(thread_id), stack)
        await ai.send(thread_id, "slowly")
        events = await stream.until_final()
    assert "".join(e["delta"] for e in events if e["__typename"] == "MessageDelta") == "abcd"
