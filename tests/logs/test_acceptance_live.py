"""The issue's acceptance on a real server against the fake OpenAI: logins (one failed), a
project, a member, a thread and messages leave an audit trail; three AI calls sum to three
requests in every grouping of apiUsage within a window; an upstream error reaches errorLogs
without the API key; a project over its monthlyTokenBudget refuses messages."""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.ai.fake_openai import Behaviour, FakeOpenAI
from tests.conftest import error_codes
from tests.live import LiveServer, MakeLiveServer

UPSTREAM_KEY = "sk-logs-upstream-key-0123456789"
Call = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture
def fake(fake_openai: FakeOpenAI) -> FakeOpenAI:
    return fake_openai


@pytest.fixture
async def server(make_live_server: MakeLiveServer, fake: FakeOpenAI) -> LiveServer:
    return await make_live_server(
        openai_base_url=fake.base_url, openai_api_key=UPSTREAM_KEY, atlas_openai_timeout=5.0
    )


@pytest.fixture
async def call(server: LiveServer) -> AsyncIterator[Call]:
    async with httpx.AsyncClient(base_url=server.http_url, timeout=30) as client:

        async def post(
            query: str, variables: dict[str, Any] | None = None, *, token: str | None = None
        ) -> dict[str, Any]:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            response = await client.post(
                "/graphql",
                json={"query": query, "variables": variables or {}},
                headers={**headers, "User-Agent": "logs-acceptance"},
            )
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body

        yield post


async def data(call: Call, query: str, variables: dict[str, Any], token: str | None) -> Any:
    body = await call(query, variables, token=token)
    assert "errors" not in body, body
    return body["data"]


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 15) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


USAGE = """
query($filter: ApiUsageFilter, $groupBy: UsageGroupBy!) {
  apiUsage(filter: $filter, groupBy: $groupBy) { key requests inputTokens outputTokens costUsd }
}
"""


async def test_acceptance(server: LiveServer, fake: FakeOpenAI, call: Call) -> None:
    started = datetime.now(UTC)
    email = f"accept-{uuid.uuid4().hex[:8]}@example.com"
    password = "Acceptance-Passw0rd"

    registered = await data(
        call,
        "mutation($i: RegisterInput!) { register(input: $i) { user { id } } }",
        {"i": {"email": email, "password": password}},
        None,
    )
    user_id = registered["register"]["user"]["id"]
    failed = await call(
        "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
        {"i": {"email": email, "password": "not-the-password"}},
    )
    assert error_codes(failed) == ["UNAUTHENTICATED"]
    login = await data(
        call,
        "mutation($i: LoginInput!) { login(input: $i) { accessToken refreshToken } }",
        {"i": {"email": email, "password": password}},
        None,
    )
    member = login["login"]["accessToken"]

    owner = await server.sign_in("pm@example.com")
    admin = await server.sign_in("admin@example.com")
    project_id = (
        await data(
            call,
            "mutation($i: CreateProjectInput!) { createProject(input: $i) { id } }",
            {"i": {"name": f"Acceptance {email}"}},
            owner,
        )
    )["createProject"]["id"]
    await data(
        call,
        "mutation($p: ID!, $u: ID!) { addProjectMember(projectId: $p, userId: $u, role: MEMBER)"
        " { id } }",
        {"p": project_id, "u": user_id},
        owner,
    )
    assistant_id = (
        await data(
            call,
            "mutation($i: CreateAssistantInput!) { createAssistant(input: $i) { id model } }",
            {"i": {"name": "Acceptance bot", "projectId": project_id}},
            owner,
        )
    )["createAssistant"]["id"]
    thread_id = (
        await data(
            call,
            "mutation($i: CreateThreadInput!) { createThread(input: $i) { id } }",
            {"i": {"projectId": project_id, "assistantId": assistant_id, "title": "t"}},
            member,
        )
    )["createThread"]["id"]

    send = "mutation($i: SendMessageInput!) { sendMessage(input: $i) { userMessage { id } } }"

    async def project_requests() -> int:
        buckets = (
            await data(
                call, USAGE, {"groupBy": "PROJECT", "filter": {"projectId": project_id}}, admin
            )
        )["apiUsage"]
        return sum(bucket["requests"] for bucket in buckets)

    for number in range(1, 4):
        await data(call, send, {"i": {"threadId": thread_id, "content": f"Hi {number}"}}, member)
        await eventually(functools.partial(_at_least, project_requests, number))

    # activityLogs for ADMIN: logins (one failed), project, member, thread, messages; newest first.
    activity = await data(
        call,
        "query($f: ActivityLogFilter) { activityLogs(first: 100, filter: $f) {"
        " nodes { action createdAt userAgent } } }",
        {"f": {"from": started.isoformat()}},
        admin,
    )
    rows = activity["activityLogs"]["nodes"]
    actions = [row["action"] for row in rows]
    for action in (
        "auth.login",
        "auth.login_failed",
        "project.create",
        "member.add",
        "thread.create",
        "message.send",
    ):
        assert action in actions, (action, actions)
    assert actions.index("message.send") < actions.index("thread.create")
    assert actions.index("thread.create") < actions.index("member.add")
    assert actions.index("member.add") < actions.index("project.create")
    assert actions.index("auth.login") < actions.index("auth.login_failed")
    assert [row["createdAt"] for row in rows] == sorted(
        (row["createdAt"] for row in rows), reverse=True
    )
    forbidden = await call("{ activityLogs { totalCount } }", token=member)
    assert error_codes(forbidden) == ["FORBIDDEN"]

    # Three AI calls: 3 requests in every grouping within the window, nothing outside it.
    window = {
        "from": started.isoformat(),
        "to": (datetime.now(UTC) + timedelta(minutes=1)).isoformat(),
        "projectId": project_id,
    }
    for group in ("DAY", "USER", "PROJECT", "MODEL"):
        buckets = (await data(call, USAGE, {"groupBy": group, "filter": window}, admin))["apiUsage"]
        assert sum(bucket["requests"] for bucket in buckets) == 3, (group, buckets)
        assert sum(bucket["inputTokens"] + bucket["outputTokens"] for bucket in buckets) == 90
    [by_user] = (await data(call, USAGE, {"groupBy": "USER", "filter": window}, admin))["apiUsage"]
    assert by_user["key"] == user_id
    before = {"to": started.isoformat(), "projectId": project_id}
    assert (await data(call, USAGE, {"groupBy": "DAY", "filter": before}, admin))["apiUsage"] == []
    # The member reads their own usage, not the project's or everyone's.
    mine = (
        await data(
            call, USAGE, {"groupBy": "USER", "filter": {"from": started.isoformat()}}, member
        )
    )["apiUsage"]
    assert [(bucket["key"], bucket["requests"]) for bucket in mine] == [(user_id, 3)]
    owner_id = (await data(call, "{ me { id } }", {}, owner))["me"]["id"]
    for filter in ({"projectId": project_id}, {"userId": owner_id}):
        body = await call(USAGE, {"groupBy": "DAY", "filter": filter}, token=member)
        assert error_codes(body) == ["FORBIDDEN"], body
    pm_usage = await call(
        USAGE, {"groupBy": "DAY", "filter": {"projectId": project_id}}, token=owner
    )
    assert sum(bucket["requests"] for bucket in pm_usage["data"]["apiUsage"]) == 3

    # An upstream failure lands in errorLogs (ADMIN only), without the API key.
    fake.then(*[Behaviour(kind="http_error", status=500, request_id="req_logs_accept")] * 3)
    await data(call, send, {"i": {"threadId": thread_id, "content": "fail"}}, member)
    errors_query = (
        "query($f: ErrorLogFilter) { errorLogs(first: 50, filter: $f) { nodes {"
        " source upstreamStatus upstreamRequestId message stack details } } }"
    )

    async def upstream_error() -> Any:
        nodes = (
            await data(
                call,
                errors_query,
                {"f": {"source": "UPSTREAM", "from": started.isoformat()}},
                admin,
            )
        )["errorLogs"]["nodes"]
        return [node for node in nodes if node["upstreamRequestId"] == "req_logs_accept"]

    [logged] = await eventually(upstream_error)
    assert logged["upstreamStatus"] == 500
    assert UPSTREAM_KEY not in str(logged)
    assert error_codes(await call(errors_query, {}, token=member)) == ["FORBIDDEN"]

    # Budget: the month's tokens reached monthlyTokenBudget -> QUOTA_EXCEEDED before OpenAI.
    usage = (
        await data(
            call,
            "query($id: ID!) { project(id: $id) { usageThisMonth { totalTokens requests } } }",
            {"id": project_id},
            member,
        )
    )["project"]["usageThisMonth"]
    assert usage["totalTokens"] >= 90
    await data(
        call,
        "mutation($p: ID!, $v: JSON!) { setProjectSetting(projectId: $p, key: "
        '"monthlyTokenBudget", value: $v) { key } }',
        {"p": project_id, "v": usage["totalTokens"]},
        owner,
    )
    calls_before = len(fake.calls("/v1/responses"))
    await eventually(_no_reply_running(call, thread_id, member))
    refused = await call(
        send, {"i": {"threadId": thread_id, "content": "over budget"}}, token=member
    )
    assert error_codes(refused) == ["QUOTA_EXCEEDED"], refused
    assert len(fake.calls("/v1/responses")) == calls_before


async def _at_least(count: Callable[[], Awaitable[int]], expected: int) -> bool:
    return await count() >= expected


def _no_reply_running(call: Call, thread_id: str, token: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        body = await call(
            "query($id: ID!) { thread(id: $id) { messages(last: 1) { nodes { status } } } }",
            {"id": thread_id},
            token=token,
        )
        nodes = body["data"]["thread"]["messages"]["nodes"]
        return bool(nodes) and nodes[-1]["status"] != "IN_PROGRESS"

    return check
