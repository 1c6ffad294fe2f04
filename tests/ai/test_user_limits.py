"""Spend bounded per person (issue 10 part 3), on a real uvicorn against the fake OpenAI: a
user's monthly token budget (default and administrator's override) applies to personal threads
and project threads alike, beside the project's; sendMessage is rate-limited per user; the
limits are visible to the user and MANAGE_USERS and changed by MANAGE_USERS only; assistant
instructions are capped."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

from atlas_gql.ai.messages import message_bucket
from atlas_gql.auth.models import User
from atlas_gql.ids import decode_global_id
from atlas_gql.logs.models import ApiUsageLog
from atlas_gql.logs.usage import next_month_start
from tests.ai.conftest import AIServer, StartServer
from tests.conftest import error_codes

SET_LIMITS = """
mutation($id: ID!, $input: UserLimitsInput!) {
  setUserLimits(userId: $id, input: $input) {
    limits {
      monthlyTokenBudget monthlyTokenBudgetOverride tokensUsedThisMonth
      messagesPerMinute messagesPerMinuteOverride
    }
  }
}
"""
MY_LIMITS = "{ me { id limits { monthlyTokenBudget tokensUsedThisMonth messagesPerMinute } } }"


async def personal_thread(ai: AIServer, token: str) -> str:
    assistant = await ai.client.data(
        'mutation { createAssistant(input: {name: "Mine"}) { id } }', token=token
    )
    thread = await ai.client.data(
        "mutation($a: ID!) { createThread(input: {assistantId: $a}) { id } }",
        {"a": assistant["createAssistant"]["id"]},
        token=token,
    )
    thread_id: str = thread["createThread"]["id"]
    return thread_id


async def my_id(ai: AIServer, token: str) -> str:
    user_id: str = (await ai.client.data(MY_LIMITS, token=token))["me"]["id"]
    return user_id


async def spend(ai: AIServer, user_id: str, tokens: int) -> None:
    """`tokens` used by the user in the month the server reckons in when it next looks (as a
    finished reply leaves them), whatever the date: a row now and one at the start of next
    month. The server reads its clock later than this one; if a month began in between, it
    counts the second row instead of the first, never both (nor neither)."""
    now = datetime.now(UTC)
    async with ai.server.app.state.atlas["runtime"].sessionmaker() as db:
        for created_at in (now, next_month_start(now)):
            db.add(
                ApiUsageLog(
                    user_id=decode_global_id(user_id)[1],
                    model="gpt-4o-mini",
                    input_tokens=tokens,
                    output_tokens=0,
                    created_at=created_at,
                )
            )
        await db.commit()


async def test_the_default_user_budget_covers_personal_and_project_threads(
    start_ai_server: StartServer,
) -> None:
    ai = await start_ai_server(atlas_user_monthly_tokens=500)
    outsider = ai.people.outsider
    user_id = await my_id(ai, outsider)
    assert "errors" not in await ai.send(await personal_thread(ai, outsider), token=outsider)
    await spend(ai, user_id, 500)
    thread = await personal_thread(ai, outsider)
    before = datetime.now(UTC)
    refused = await ai.send(thread, token=outsider)
    after = datetime.now(UTC)
    assert error_codes(refused) == ["QUOTA_EXCEEDED"]
    extensions = refused["errors"][0]["extensions"]
    assert extensions["budget"] == "USER"
    assert extensions["limit"] == 500
    assert extensions["used"] >= 500
    # The month the server reckoned in when it refused: this one, or the next if one began.
    assert extensions["resetsAt"] in {next_month_start(before).isoformat(),
                                      next_month_start(after).isoformat()}  # fmt: skip
    assert refused["errors"][0]["message"] == "You have used your monthly token budget."
    me = (await ai.client.data(MY_LIMITS, token=outsider))["me"]["limits"]
    assert me["monthlyTokenBudget"] == 500
    assert me["tokensUsedThisMonth"] >= 500


async def test_an_administrator_overrides_a_users_budget_and_rate(
    start_ai_server: StartServer,
) -> None:
    ai = await start_ai_server(atlas_user_monthly_tokens=100)
    people = ai.people
    user_id = await my_id(ai, people.outsider)
    await spend(ai, user_id, 150)
    thread = await personal_thread(ai, people.outsider)
    assert error_codes(await ai.send(thread, token=people.outsider)) == ["QUOTA_EXCEEDED"]
    # Only MANAGE_USERS may change limits; bad values name their field.
    variables = {"id": user_id, "input": {"monthlyTokenBudget": 1_000_000}}
    assert error_codes(await ai.client.gql(SET_LIMITS, variables, token=people.outsider)) == [
        "FORBIDDEN"
    ]
    for bad in ({"monthlyTokenBudget": -1}, {"messagesPerMinute": 0}, {"messagesPerMinute": 10**6}):
        body = await ai.client.gql(SET_LIMITS, {"id": user_id, "input": bad}, token=people.admin)
        assert error_codes(body) == ["BAD_USER_INPUT"], body
        assert body["errors"][0]["extensions"]["field"] == next(iter(bad))
    raised = await ai.client.data(SET_LIMITS, variables, token=people.admin)
    assert raised["setUserLimits"]["limits"] == {
        "monthlyTokenBudget": 1_000_000,
        "monthlyTokenBudgetOverride": 1_000_000,
        "tokensUsedThisMonth": 150,
        "messagesPerMinute": 1_000_000,
        "messagesPerMinuteOverride": None,
    }
    assert "errors" not in await ai.send(thread, token=people.outsider)
    # Null returns to the default; omitted fields stay as they are.
    back = await ai.client.data(
        SET_LIMITS,
        {"id": user_id, "input": {"monthlyTokenBudget": None, "messagesPerMinute": 7}},
        token=people.admin,
    )
    limits = back["setUserLimits"]["limits"]
    assert limits["monthlyTokenBudget"] == 100
    assert limits["monthlyTokenBudgetOverride"] is None
    assert limits["messagesPerMinute"] == 7
    # Limits are the user's and MANAGE_USERS holders' to see: a co-member sees null.
    members = await ai.client.data(
        "query($p: ID!) { project(id: $p) { members(first: 50) "
        "{ edges { node { user { email limits { messagesPerMinute } approvedAt } } } } } }",
        {"p": people.project_id},
        token=people.viewer,
    )
    users = [edge["node"]["user"] for edge in members["project"]["members"]["edges"]]
    viewer_email = (await ai.client.data("{ me { email } }", token=people.viewer))["me"]["email"]
    others = [user for user in users if user["email"] != viewer_email]
    assert others
    assert all(user["limits"] is None and user["approvedAt"] is None for user in others), others
    mine = await ai.client.data("{ me { limits { messagesPerMinute } } }", token=people.viewer)
    assert mine["me"]["limits"] is not None


async def test_the_project_budget_still_names_itself(start_ai_server: StartServer) -> None:
    ai = await start_ai_server(atlas_user_monthly_tokens=10_000_000)
    people = ai.people
    name = f"Tight {uuid.uuid4().hex[:8]}"
    project = await ai.client.data(
        "mutation($n: String!) { createProject(input: {name: $n}) { id } }",
        {"n": name},
        token=people.admin,
    )
    project_id = project["createProject"]["id"]
    await ai.client.data(
        'mutation($p: ID!) { setProjectSetting(projectId: $p, key: "monthlyTokenBudget", '
        "value: 0) { key } }",
        {"p": project_id},
        token=people.admin,
    )
    assistant = await ai.client.data(
        'mutation($p: ID!) { createAssistant(input: {name: "T", projectId: $p}) { id } }',
        {"p": project_id},
        token=people.admin,
    )
    thread = await ai.client.data(
        "mutation($p: ID!, $a: ID!) { createThread(input: {projectId: $p, assistantId: $a}) "
        "{ id } }",
        {"p": project_id, "a": assistant["createAssistant"]["id"]},
        token=people.admin,
    )
    refused = await ai.send(thread["createThread"]["id"], token=people.admin)
    assert error_codes(refused) == ["QUOTA_EXCEEDED"]
    assert refused["errors"][0]["extensions"]["budget"] == "PROJECT"


async def test_send_message_is_rate_limited_per_user(start_ai_server: StartServer) -> None:
    ai = await start_ai_server(atlas_user_messages_per_minute=3)
    people = ai.people
    threads = [await personal_thread(ai, people.outsider) for _ in range(5)]
    # Concurrent sends in five threads: a burst of three, then RATE_LIMITED.
    bodies = await asyncio.gather(*(ai.send(thread, token=people.outsider) for thread in threads))
    codes = sorted(error_codes(body)[0] if "errors" in body else "OK" for body in bodies)
    assert codes == ["OK"] * 3 + ["RATE_LIMITED"] * 2
    for body in bodies:
        if "errors" in body:
            assert 1 <= body["errors"][0]["extensions"]["retryAfter"] <= 20
            assert body["data"] is None or body["data"]["sendMessage"] is None
    # Another user is not slowed; a bad send still counts (so it cannot be used to hammer).
    assert "errors" not in await ai.send(
        await personal_thread(ai, people.manager), token=people.manager
    )
    assert error_codes(await ai.send(threads[0], token=people.outsider, content=" ")) == [
        "BAD_USER_INPUT"
    ]
    # An administrator's rate is the user's bucket from their next send.
    user_id = await my_id(ai, people.outsider)
    await ai.client.data(
        SET_LIMITS, {"id": user_id, "input": {"messagesPerMinute": 100}}, token=people.admin
    )
    async with ai.server.app.state.atlas["runtime"].sessionmaker() as db:
        sender = await db.get(User, decode_global_id(user_id)[1])
    assert sender is not None
    bucket = message_bucket(ai.server.settings, sender)
    assert (bucket.capacity, bucket.per_second) == (100, 100 / 60)


async def test_instructions_and_descriptions_are_capped(start_ai_server: StartServer) -> None:
    ai = await start_ai_server(atlas_max_instructions_chars=100)
    token = ai.people.outsider
    create = (
        "mutation($i: String, $d: String) { createAssistant(input: "
        '{name: "Capped", instructions: $i, description: $d}) { id } }'
    )
    for variables, field in (
        ({"i": "x" * 101}, "instructions"),
        ({"d": "y" * 2001}, "description"),
    ):
        body = await ai.client.gql(create, variables, token=token)
        assert error_codes(body) == ["BAD_USER_INPUT"], body
        assert body["errors"][0]["extensions"]["field"] == field
    made = await ai.client.data(create, {"i": "x" * 100, "d": "y" * 2000}, token=token)
    update = (
        "mutation($id: ID!, $i: String) { updateAssistant(id: $id, input: {instructions: $i}) "
        "{ id } }"
    )
    body = await ai.client.gql(
        update, {"id": made["createAssistant"]["id"], "i": "z" * 101}, token=token
    )
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert body["errors"][0]["extensions"]["field"] == "instructions"
