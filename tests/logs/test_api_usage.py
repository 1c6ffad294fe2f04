"""apiUsage: SQL GROUP BY per day, user, project and model; windows; who reads what."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from atlas_gql.auth.models import RoleName, User
from atlas_gql.ids import encode_global_id as global_id
from atlas_gql.projects.models import Project, ProjectRole
from tests.conftest import GraphQLClient, error_codes
from tests.factories import create_project, create_usage, create_user

USAGE = """
query Usage($filter: ApiUsageFilter, $groupBy: UsageGroupBy!) {
  apiUsage(filter: $filter, groupBy: $groupBy) {
    key requests inputTokens outputTokens costUsd
  }
}
"""
# A day no other test writes usage on.
DAY = datetime(2001, 3, 4, tzinfo=UTC)
WINDOW = {"from": "2001-03-04T00:00:00Z", "to": "2001-03-05T00:00:00Z"}


async def usage(
    gql: GraphQLClient, token: str, group_by: str, **filter: Any
) -> list[dict[str, Any]]:
    body = await gql(USAGE, {"groupBy": group_by, "filter": filter}, token=token)
    assert "errors" not in body, body
    buckets: list[dict[str, Any]] = body["data"]["apiUsage"]
    return buckets


async def three_calls(db: AsyncSession) -> tuple[User, Project]:
    """Three AI calls inside WINDOW, one just before it and one exactly at its end."""
    user = await create_user(db)
    project = await create_project(db, creator=user)
    for hour, tokens in ((0, 100), (11, 20), (23, 3)):
        await create_usage(
            db,
            user=user,
            project=project,
            created_at=DAY + timedelta(hours=hour, minutes=59 if hour == 23 else 0),
            model="gpt-4o-mini",
            input_tokens=tokens,
            output_tokens=tokens // 2,
            cost="0.125000",
        )
    await create_usage(
        db, user=user, project=project, created_at=DAY - timedelta(microseconds=1), input_tokens=7
    )
    await create_usage(db, user=user, project=project, created_at=DAY + timedelta(days=1))
    return user, project


async def test_three_calls_sum_to_three_requests_in_every_grouping(
    gql: GraphQLClient, db: AsyncSession, sign_in: Any
) -> None:
    user, project = await three_calls(db)
    token = await sign_in("admin@example.com")
    expected = {"requests": 3, "inputTokens": 123, "outputTokens": 61, "costUsd": 0.375}
    assert await usage(gql, token, "DAY", **WINDOW) == [{"key": "2001-03-04", **expected}]
    assert await usage(gql, token, "USER", **WINDOW) == [
        {"key": global_id("User", user.id), **expected}
    ]
    assert await usage(gql, token, "PROJECT", **WINDOW) == [
        {"key": global_id("Project", project.id), **expected}
    ]
    assert await usage(gql, token, "MODEL", **WINDOW) == [{"key": "gpt-4o-mini", **expected}]
    # Widening the window by a day each way takes in the two calls outside it.
    wide = {"from": "2001-03-03T00:00:00Z", "to": "2001-03-06T00:00:00Z"}
    days = await usage(gql, token, "DAY", **wide)
    assert [(bucket["key"], bucket["requests"]) for bucket in days] == [
        ("2001-03-03", 1),
        ("2001-03-04", 3),
        ("2001-03-05", 1),
    ]


async def test_days_are_utc_and_buckets_sorted_with_filters(
    gql: GraphQLClient, db: AsyncSession, sign_in: Any
) -> None:
    user = await create_user(db)
    project = await create_project(db, creator=user)
    # 23:30 at UTC-02:00 on the 4th is 01:30 UTC on the 5th.
    late = datetime(2001, 3, 4, 23, 30, tzinfo=UTC) + timedelta(hours=2)
    await create_usage(db, user=user, project=project, created_at=late, model="o3", cost="1")
    await create_usage(db, user=user, project=project, created_at=DAY, model="gpt-4.1", cost="2")
    await create_usage(db, user=user, project=project, created_at=DAY, model="o3", cost="0.5")
    token = await sign_in("admin@example.com")
    wide = {"from": "2001-03-03T22:00:00-02:00", "to": "2001-03-06T00:00:00Z"}
    days = await usage(gql, token, "DAY", **wide)
    assert [(b["key"], b["requests"], b["costUsd"]) for b in days] == [
        ("2001-03-04", 2, 2.5),
        ("2001-03-05", 1, 1.0),
    ]
    models = await usage(gql, token, "MODEL", **wide)
    assert [(b["key"], b["requests"]) for b in models] == [("gpt-4.1", 1), ("o3", 2)]
    only_o3 = await usage(gql, token, "DAY", model="o3", **wide)
    assert [(b["key"], b["requests"]) for b in only_o3] == [("2001-03-04", 1), ("2001-03-05", 1)]
    mine = await usage(gql, token, "MODEL", userId=global_id("User", user.id), **wide)
    assert sum(bucket["requests"] for bucket in mine) == 3


async def test_calls_of_deleted_users_and_projects_are_kept_as_unknown(
    gql: GraphQLClient, db: AsyncSession, sign_in: Any
) -> None:
    await create_usage(db, user=None, project=None, created_at=DAY)
    token = await sign_in("admin@example.com")
    buckets = await usage(gql, token, "PROJECT", **WINDOW)
    assert [(b["key"], b["requests"]) for b in buckets] == [("unknown", 1)]


async def test_a_user_reads_only_their_own_usage(
    gql: GraphQLClient, db: AsyncSession, sign_in: Any
) -> None:
    owner = await create_user(db)
    member = await create_user(db)
    project = await create_project(db, creator=owner, members={member.id: ProjectRole.MEMBER})
    await create_usage(db, user=owner, project=project, created_at=DAY, input_tokens=1000)
    await create_usage(db, user=member, project=project, created_at=DAY, input_tokens=1)
    token = await sign_in(member.email)

    # Without filters: restricted to the viewer's own calls.
    mine = await usage(gql, token, "USER", **WINDOW)
    assert mine == [
        {
            "key": global_id("User", member.id),
            "requests": 1,
            "inputTokens": 1,
            "outputTokens": 5,
            "costUsd": 0.001,
        }
    ]
    assert await usage(gql, token, "USER", userId=global_id("User", member.id), **WINDOW) == mine
    # Everyone else's usage: FORBIDDEN (another user) or by project role.
    forbidden = [
        {"userId": global_id("User", owner.id)},
        {"projectId": global_id("Project", project.id)},  # a MEMBER, not OWNER/MANAGER
    ]
    for filter in forbidden:
        body = await gql(USAGE, {"groupBy": "USER", "filter": filter}, token=token)
        assert error_codes(body) == ["FORBIDDEN"], filter
        assert body["data"] == {"apiUsage": None}
    outsider = await sign_in("user@example.com")
    body = await gql(
        USAGE,
        {"groupBy": "DAY", "filter": {"projectId": global_id("Project", project.id)}},
        token=outsider,
    )
    assert error_codes(body) == ["NOT_FOUND"]
    assert error_codes(await gql(USAGE, {"groupBy": "DAY"})) == ["UNAUTHENTICATED"]


@pytest.mark.parametrize("role", [ProjectRole.OWNER, ProjectRole.MANAGER])
async def test_a_project_owner_or_manager_reads_the_project_usage(
    gql: GraphQLClient, db: AsyncSession, sign_in: Any, role: ProjectRole
) -> None:
    owner = await create_user(db, roles=(RoleName.PROJECT_MANAGER,))
    manager = await create_user(db)
    member = await create_user(db)
    project = await create_project(
        db, creator=owner, members={manager.id: ProjectRole.MANAGER, member.id: ProjectRole.MEMBER}
    )
    other = await create_project(db, creator=member)
    await create_usage(db, user=member, project=project, created_at=DAY, input_tokens=10)
    await create_usage(db, user=owner, project=project, created_at=DAY, input_tokens=20)
    await create_usage(db, user=member, project=other, created_at=DAY, input_tokens=40)
    reader = owner if role is ProjectRole.OWNER else manager
    token = await sign_in(reader.email)
    project_id = global_id("Project", project.id)

    per_user = await usage(gql, token, "USER", projectId=project_id, **WINDOW)
    assert sorted((b["key"], b["inputTokens"]) for b in per_user) == sorted(
        [(global_id("User", member.id), 10), (global_id("User", owner.id), 20)]
    )
    one_user = await usage(
        gql,
        token,
        "PROJECT",
        projectId=project_id,
        userId=global_id("User", member.id),
        **WINDOW,
    )
    assert one_user == [
        {"key": project_id, "requests": 1, "inputTokens": 10, "outputTokens": 5, "costUsd": 0.001}
    ]
    # The member's usage in another project stays hidden.
    body = await gql(
        USAGE,
        {"groupBy": "DAY", "filter": {"userId": global_id("User", member.id)}},
        token=token,
    )
    assert error_codes(body) == ["FORBIDDEN"]


async def test_bad_input_is_a_clean_client_error(gql: GraphQLClient, sign_in: Any) -> None:
    token = await sign_in("admin@example.com")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"projectId": "%%%"}, "filter.projectId"),
        ({"projectId": global_id("Thread", uuid.uuid4())}, "filter.projectId"),
        ({"userId": "VXNlcjpub3QtYS11dWlk"}, "filter.userId"),  # "User:not-a-uuid"
        ({"from": "2001-03-05T00:00:00Z", "to": "2001-03-04T00:00:00Z"}, "filter.from"),
        ({"to": "2001-03-05T00:00:00"}, "filter.to"),
    ]
    for filter, field in cases:
        body = await gql(USAGE, {"groupBy": "DAY", "filter": filter}, token=token)
        assert error_codes(body) == ["BAD_USER_INPUT"], (filter, body)
        assert body["errors"][0]["extensions"]["field"] == field
        assert "Traceback" not in str(body)
        assert "SELECT" not in str(body)
    # An unknown group is refused by GraphQL validation before anything runs.
    inline = await gql("{ apiUsage(groupBy: HOUR) { key } }", token=token)
    assert error_codes(inline) == ["GRAPHQL_VALIDATION_FAILED"]
    assert inline.get("data") is None
    # As a variable: refused before execution, with nothing internal in the answer.
    response = await gql.post(USAGE, {"groupBy": "WEEK"}, token=token)
    body = response.json()
    assert body.get("data") is None
    assert body["errors"]
    for secret in ("Traceback", "KeyError", "SELECT"):
        assert secret not in response.text
