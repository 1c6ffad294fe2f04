"""End to end: real mutations leave an audit trail an ADMIN reads newest first, and no
password or token ever lands in a log row."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from tests.conftest import GraphQLClient, error_codes

REGISTER = """
mutation($input: RegisterInput!) {
  register(input: $input) { accessToken refreshToken user { id } }
}
"""
LOGIN = """
mutation($input: LoginInput!) { login(input: $input) { accessToken refreshToken } }
"""
CHANGE_PASSWORD = """
mutation($input: ChangePasswordInput!) { changePassword(input: $input) }
"""
CREATE_PROJECT = """
mutation($input: CreateProjectInput!) { createProject(input: $input) { id } }
"""
ADD_MEMBER = """
mutation($projectId: ID!, $userId: ID!) {
  addProjectMember(projectId: $projectId, userId: $userId, role: MEMBER) { id }
}
"""
ACTIVITY = """
query($filter: ActivityLogFilter) {
  activityLogs(first: 100, filter: $filter) {
    nodes { action entityType entityId projectId ipAddress details createdAt user { email } }
  }
}
"""


async def test_admin_reads_the_audit_trail_without_secrets(
    gql: GraphQLClient, db: AsyncSession, sign_in: Any
) -> None:
    started = datetime.now(UTC)
    email = f"audit-{uuid.uuid4().hex[:8]}@example.com"
    password, wrong, new_password = "First-Passw0rd!", "Wrong-Passw0rd!", "Second-Passw0rd!"

    registered = await gql(REGISTER, {"input": {"email": email, "password": password}})
    assert "errors" not in registered, registered
    user_id = registered["data"]["register"]["user"]["id"]
    failed = await gql(LOGIN, {"input": {"email": email, "password": wrong}})
    assert error_codes(failed) == ["UNAUTHENTICATED"]
    login = await gql(LOGIN, {"input": {"email": email, "password": password}})
    assert "errors" not in login, login
    tokens = login["data"]["login"]
    changed = await gql(
        CHANGE_PASSWORD,
        {"input": {"currentPassword": password, "newPassword": new_password}},
        token=tokens["accessToken"],
    )
    assert changed["data"] == {"changePassword": True}, changed

    manager = await sign_in("pm@example.com")
    created = await gql(
        CREATE_PROJECT, {"input": {"name": "Audited", "description": "d"}}, token=manager
    )
    project_id = created["data"]["createProject"]["id"]
    added = await gql(ADD_MEMBER, {"projectId": project_id, "userId": user_id}, token=manager)
    assert "errors" not in added, added

    admin = await sign_in("admin@example.com")
    body = await gql(ACTIVITY, {"filter": {"from": started.isoformat()}}, token=admin)
    assert "errors" not in body, body
    rows = body["data"]["activityLogs"]["nodes"]
    actions = [row["action"] for row in rows]
    expected = [
        "member.add",
        "project.create",
        "auth.password_change",
        "auth.login",
        "auth.login_failed",
        "auth.register",
    ]
    assert [action for action in actions if action in expected] == expected
    stamps = [row["createdAt"] for row in rows]
    assert stamps == sorted(stamps, reverse=True)
    failed_row = rows[actions.index("auth.login_failed")]
    assert failed_row["ipAddress"] == "203.0.113.7"
    member_row = rows[actions.index("member.add")]
    assert member_row["projectId"] == project_id
    assert member_row["user"] == {"email": "pm@example.com"}

    # The pm owns the project: they read its rows, and only those.
    own = await gql(ACTIVITY, {"filter": {"projectId": project_id}}, token=manager)
    assert [row["action"] for row in own["data"]["activityLogs"]["nodes"]] == [
        "member.add",
        "project.create",
    ]
    # The new user is a plain MEMBER: the whole log is FORBIDDEN to them.
    assert error_codes(await gql(ACTIVITY, {}, token=tokens["accessToken"])) == ["FORBIDDEN"]

    secrets = [password, wrong, new_password, *tokens.values()]
    secrets += (
        registered["data"]["register"]["accessToken"],
        registered["data"]["register"]["refreshToken"],
    )
    stored = await db.execute(
        sa.text(
            "SELECT coalesce(details::text, '') || coalesce(user_agent, '') FROM activity_logs "
            "WHERE created_at >= :started UNION ALL "
            "SELECT message || coalesce(stack, '') || coalesce(details::text, '') "
            "FROM error_logs WHERE created_at >= :started"
        ),
        {"started": started},
    )
    text = "\n".join(stored.scalars()) + str(body)
    for secret in secrets:
        assert secret not in text
