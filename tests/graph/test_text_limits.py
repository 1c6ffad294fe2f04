"""Issue 10 part 6: every free-text input has a maximum length from one table
(`config.TEXT_LIMITS`, plus the two settings), checked by the services: one character more is
BAD_USER_INPUT naming the field and writes nothing; over HTTP and over the WebSocket alike.
The schema is walked, so a new String input without a limit here fails the test."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from graphql import GraphQLInputObjectType, GraphQLList, GraphQLNonNull, GraphQLObjectType
from sqlalchemy.ext.asyncio import AsyncSession

from atlas_gql.config import TEXT_LIMITS
from atlas_gql.graph.schema import build_schema
from atlas_gql.logs.models import ActivityLog
from tests.conftest import error_codes
from tests.graph.test_websocket_limits import acked_socket, first_answer
from tests.live import LiveServer

# (document with $v, the field the refusal names, the limit, how to make a too-long value).
# PROJECT, ASSISTANT, THREAD are filled from the seed. `chars(n)` is n characters of text.
CASES: dict[str, tuple[str, str, int]] = {
    "UserFilter.search": (
        "query ($v: String) { users(filter: {search: $v}) { totalCount } }",
        "search",
        TEXT_LIMITS.search,
    ),
    "ProjectFilter.search": (
        "query ($v: String) { projects(filter: {search: $v}) { totalCount } }",
        "search",
        TEXT_LIMITS.search,
    ),
    "ActivityLogFilter.action": (
        "query ($v: String) { activityLogs(filter: {action: $v}) { totalCount } }",
        "filter.action",
        TEXT_LIMITS.filter_value,
    ),
    "ActivityLogFilter.entityType": (
        "query ($v: String) { activityLogs(filter: {entityType: $v}) { totalCount } }",
        "filter.entityType",
        TEXT_LIMITS.filter_value,
    ),
    "ApiUsageFilter.model": (
        "query ($v: String) { apiUsage(groupBy: DAY, filter: {model: $v}) { key } }",
        "filter.model",
        TEXT_LIMITS.filter_value,
    ),
    "RegisterInput.name": (
        'mutation ($v: String) { register(input: {email: "long-name@example.com", '
        'password: "password-1", name: $v}) { accessToken } }',
        "name",
        TEXT_LIMITS.name,
    ),
    "RegisterInput.email": (
        'mutation ($v: String!) { register(input: {email: $v, password: "password-1"}) '
        "{ accessToken } }",
        "email",
        TEXT_LIMITS.email,
    ),
    "RegisterInput.password": (
        'mutation ($v: String!) { register(input: {email: "long-pw@example.com", password: $v})'
        " { accessToken } }",
        "password",
        TEXT_LIMITS.password_bytes,
    ),
    "refreshSession.refreshToken": (
        "mutation ($v: String!) { refreshSession(refreshToken: $v) { accessToken } }",
        "refreshToken",
        TEXT_LIMITS.token,
    ),
    "logout.refreshToken": (
        "mutation ($v: String) { logout(refreshToken: $v) }",
        "refreshToken",
        TEXT_LIMITS.token,
    ),
    "ChangePasswordInput.newPassword": (
        'mutation ($v: String!) { changePassword(input: {currentPassword: "seed-password-for-'
        'tests", newPassword: $v}) }',
        "newPassword",
        TEXT_LIMITS.password_bytes,
    ),
    "CreateUserInput.name": (
        'mutation ($v: String) { createUser(input: {email: "cu-name@example.com", '
        'password: "password-1", name: $v}) { id } }',
        "name",
        TEXT_LIMITS.name,
    ),
    "CreateUserInput.email": (
        'mutation ($v: String!) { createUser(input: {email: $v, password: "password-1"}) { id } }',
        "email",
        TEXT_LIMITS.email,
    ),
    "CreateUserInput.password": (
        'mutation ($v: String!) { createUser(input: {email: "cu-pw@example.com", password: $v})'
        " { id } }",
        "password",
        TEXT_LIMITS.password_bytes,
    ),
    "UpdateUserInput.name": (
        "mutation ($v: String) { updateUser(id: USER, input: {name: $v}) { id } }",
        "name",
        TEXT_LIMITS.name,
    ),
    "CreateProjectInput.name": (
        "mutation ($v: String!) { createProject(input: {name: $v}) { id } }",
        "name",
        TEXT_LIMITS.name,
    ),
    "CreateProjectInput.description": (
        'mutation ($v: String) { createProject(input: {name: "p", description: $v}) { id } }',
        "description",
        TEXT_LIMITS.project_description,
    ),
    "UpdateProjectInput.name": (
        "mutation ($v: String) { updateProject(id: PROJECT, input: {name: $v}) { id } }",
        "name",
        TEXT_LIMITS.name,
    ),
    "UpdateProjectInput.description": (
        "mutation ($v: String) { updateProject(id: PROJECT, input: {description: $v}) { id } }",
        "description",
        TEXT_LIMITS.project_description,
    ),
    "setProjectSetting.key": (
        "mutation ($v: String!) { setProjectSetting(projectId: PROJECT, key: $v, value: 1) "
        "{ key } }",
        "key",
        TEXT_LIMITS.setting_key,
    ),
    "deleteProjectSetting.key": (
        "mutation ($v: String!) { deleteProjectSetting(projectId: PROJECT, key: $v) { id } }",
        "key",
        TEXT_LIMITS.setting_key,
    ),
    "CreateAssistantInput.name": (
        "mutation ($v: String!) { createAssistant(input: {name: $v}) { id } }",
        "name",
        TEXT_LIMITS.name,
    ),
    "CreateAssistantInput.model": (
        'mutation ($v: String) { createAssistant(input: {name: "a", model: $v}) { id } }',
        "model",
        TEXT_LIMITS.model,
    ),
    "CreateAssistantInput.description": (
        'mutation ($v: String) { createAssistant(input: {name: "a", description: $v}) { id } }',
        "description",
        TEXT_LIMITS.assistant_description,
    ),
    "UpdateAssistantInput.name": (
        "mutation ($v: String) { updateAssistant(id: ASSISTANT, input: {name: $v}) { id } }",
        "name",
        TEXT_LIMITS.name,
    ),
    "UpdateAssistantInput.model": (
        "mutation ($v: String) { updateAssistant(id: ASSISTANT, input: {model: $v}) { id } }",
        "model",
        TEXT_LIMITS.model,
    ),
    "UpdateAssistantInput.description": (
        "mutation ($v: String) { updateAssistant(id: ASSISTANT, input: {description: $v}) { id } }",
        "description",
        TEXT_LIMITS.assistant_description,
    ),
    "CreateThreadInput.title": (
        "mutation ($v: String) { createThread(input: {assistantId: ASSISTANT, title: $v}) { id } }",
        "title",
        TEXT_LIMITS.thread_title,
    ),
    "UpdateThreadInput.title": (
        "mutation ($v: String) { updateThread(id: THREAD, input: {title: $v}) { id } }",
        "title",
        TEXT_LIMITS.thread_title,
    ),
    "RateMessageInput.comment": (
        "mutation ($v: String) { rateMessage(input: {messageId: MESSAGE, rating: UP, "
        "comment: $v}) { id } }",
        "comment",
        TEXT_LIMITS.rating_comment,
    ),
    "FeedbackFilter.model": (
        "query ($v: String) { feedback(filter: {model: $v}) { totalCount } }",
        "filter.model",
        TEXT_LIMITS.filter_value,
    ),
    "CreateApiKeyInput.name": (
        "mutation ($v: String!) { createApiKey(input: {name: $v}) { secret } }",
        "name",
        TEXT_LIMITS.api_key_name,
    ),
    "node.id": ("query ($v: ID!) { node(id: $v) { id } }", "id", TEXT_LIMITS.global_id),
    "Query.users.after": (
        "query ($v: String) { users(after: $v) { totalCount } }",
        "after",
        512,
    ),
}

# Inputs whose length is bounded another way (a setting, a fixed vocabulary), or which
# answer like any wrong value (sign-in: no oracle), tested where that is the feature.
OTHERWISE = {
    "LoginInput.email": "answered as a wrong sign-in (tests/auth)",
    "LoginInput.password": "answered as a wrong sign-in (tests/auth)",
    "ChangePasswordInput.currentPassword": "answered as a wrong password (tests/auth)",
    "CreateAssistantInput.instructions": "ATLAS_MAX_INSTRUCTIONS_CHARS (tests/ai)",
    "UpdateAssistantInput.instructions": "ATLAS_MAX_INSTRUCTIONS_CHARS (tests/ai)",
    "SendMessageInput.content": "ATLAS_MAX_MESSAGE_CHARS (tests/ai, below over WebSocket)",
    "EditMessageInput.content": "ATLAS_MAX_MESSAGE_CHARS, as sendMessage's (tests/ai)",
    "searchMessages.query": "200 characters, ai/search.py QUERY_MAX (tests/ai); to move here",
    "uploadFile.purpose": "one of a fixed list (tests/ai/test_files.py)",
    "setProjectSetting.value": "64 KiB of JSON (tests/projects)",
}


def string_inputs() -> set[str]:
    """Every String (and JSON) argument and input field of the schema, as a coordinate."""
    schema = build_schema()._schema
    found: set[str] = set()

    def named(type_: Any) -> Any:
        while isinstance(type_, (GraphQLNonNull, GraphQLList)):
            type_ = type_.of_type
        return type_

    for type_ in schema.type_map.values():
        if type_.name.startswith("__"):
            continue
        if isinstance(type_, GraphQLInputObjectType):
            for name, field in type_.fields.items():
                if named(field.type).name in ("String", "JSON"):
                    found.add(f"{type_.name}.{name}")
        elif isinstance(type_, GraphQLObjectType):
            for field_name, field in type_.fields.items():
                for name, argument in field.args.items():
                    if named(argument.type).name in ("String", "JSON"):
                        root = type_.name in ("Query", "Mutation", "Subscription")
                        found.add(f"{field_name}.{name}" if root else f"{type_.name}.{name}")
    return found


def test_every_string_input_has_a_limit() -> None:
    covered = set(CASES) | set(OTHERWISE)
    # Connection cursors: one limit for all (db.pagination.MAX_CURSOR_CHARS).
    missing = {
        coordinate
        for coordinate in string_inputs() - covered
        if not coordinate.endswith((".after", ".before"))
    }
    assert not missing, f"String inputs without a limit in the table: {sorted(missing)}"


async def seeded_ids(client: httpx.AsyncClient, token: str) -> dict[str, str]:
    response = await client.post(
        "/graphql",
        json={
            "query": "{ me { id } projects(first: 1) { nodes { id } } "
            "assistants(first: 1) { nodes { id } } threads(first: 1) { nodes { id "
            "messages(first: 20) { nodes { id role status } } } } }"
        },
        headers={"Authorization": f"Bearer {token}"},
    )
    data = response.json()["data"]
    return {
        "USER": json.dumps(data["me"]["id"]),
        "PROJECT": json.dumps(data["projects"]["nodes"][0]["id"]),
        "ASSISTANT": json.dumps(data["assistants"]["nodes"][0]["id"]),
        "THREAD": json.dumps(data["threads"]["nodes"][0]["id"]),
        "MESSAGE": json.dumps(
            next(
                message["id"]
                for message in data["threads"]["nodes"][0]["messages"]["nodes"]
                if message["role"] == "ASSISTANT"
            )
        ),
    }


def filled(document: str, ids: dict[str, str]) -> str:
    for name, value in ids.items():
        document = document.replace(name, value)
    return document


@pytest.mark.parametrize("coordinate", sorted(CASES))
async def test_one_character_over_the_limit_is_refused_naming_the_field(
    client: httpx.AsyncClient, db: AsyncSession, sign_in: Any, coordinate: str
) -> None:
    document, field, limit = CASES[coordinate]
    token = await sign_in("admin@example.com")
    document = filled(document, await seeded_ids(client, token))
    activity = sa.select(sa.func.count()).select_from(ActivityLog)
    before = (await db.execute(activity)).scalar_one()
    # ASCII letters: bytes and characters agree (the password limit is in bytes).
    too_long = "x" * (limit + 1)
    if field == "email":
        too_long = "x" * (limit + 1 - len("@example.com")) + "@example.com"
    response = await client.post(
        "/graphql",
        json={"query": document, "variables": {"v": too_long}},
        headers={"Authorization": f"Bearer {token}"},
    )
    body = response.json()
    assert response.status_code == 200, body
    assert error_codes(body) == ["BAD_USER_INPUT"], body
    assert body["errors"][0]["extensions"].get("field") == field, body
    assert (await db.execute(activity)).scalar_one() == before


async def test_over_the_websocket_long_text_is_refused_too(live_server: LiveServer) -> None:
    ws = await acked_socket(live_server, "admin@example.com")
    try:
        cases = [
            ("CreateAssistantInput.description", "a" * (TEXT_LIMITS.assistant_description + 1)),
            ("CreateProjectInput.description", "b" * (TEXT_LIMITS.project_description + 1)),
            ("CreateAssistantInput.name", "c" * (TEXT_LIMITS.name + 1)),
        ]
        for index, (coordinate, value) in enumerate(cases):
            document, field, _ = CASES[coordinate]
            message = {
                "id": str(index),
                "type": "subscribe",
                "payload": {"query": document, "variables": {"v": value}},
            }
            await ws.send(json.dumps(message))
            answer = await first_answer(ws, str(index))
            assert answer["type"] == "next", answer
            [error] = answer["payload"]["errors"]
            assert error["extensions"]["code"] == "BAD_USER_INPUT", error
            assert error["extensions"]["field"] == field
        # A message over ATLAS_MAX_MESSAGE_CHARS: refused before anything is stored.
        content = "d" * (live_server.settings.atlas_max_message_chars + 1)
        message = {
            "id": "send",
            "type": "subscribe",
            "payload": {
                "query": "mutation ($c: String!) { sendMessage(input: {threadId: "
                '"VGhyZWFkOjZhMmM2YTUxLTlmOGMtNGQ5ZS04ZjdhLTJiMWY2YzFkMGUxMQ", content: $c}) '
                "{ userMessage { id } } }",
                "variables": {"c": content},
            },
        }
        await ws.send(json.dumps(message))
        answer = await first_answer(ws, "send")
        codes = [e["extensions"]["code"] for e in answer["payload"]["errors"]]
        assert codes in (["BAD_USER_INPUT"], ["NOT_FOUND"]), answer
    finally:
        await ws.close()
