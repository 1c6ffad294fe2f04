"""Project.usageThisMonth: the month's tokens and cost, batched across projects."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from atlas_gql.ids import encode_global_id as global_id
from atlas_gql.logs.usage import month_start
from atlas_gql.projects.models import ProjectRole
from tests.conftest import GraphQLClient, counting_statements
from tests.factories import create_project, create_usage, create_user

PROJECT = """
query($id: ID!) { project(id: $id) {
  usageThisMonth { inputTokens outputTokens totalTokens costUsd requests }
} }
"""
PROJECTS = """
query($first: Int) { projects(first: $first) { nodes { id usageThisMonth { totalTokens } } } }
"""


async def test_members_see_the_month_usage_of_their_project(
    gql: GraphQLClient, db: AsyncSession, sign_in: Any
) -> None:
    owner = await create_user(db)
    viewer = await create_user(db)
    project = await create_project(db, creator=owner, members={viewer.id: ProjectRole.VIEWER})
    now = datetime.now(UTC)
    last_month = month_start(now) - timedelta(seconds=1)
    # (who, when, input tokens, output tokens, cost); last month's call does not count.
    calls = [
        (owner, now, 40, 2, "0.5"),
        (viewer, now, 8, 0, "0.25"),
        (owner, last_month, 999, 5, "1"),
    ]
    for user, created_at, input_tokens, output_tokens, cost in calls:
        await create_usage(
            db, user=user, project=project, created_at=created_at, input_tokens=input_tokens,
            output_tokens=output_tokens, cost=cost,
        )  # fmt: skip
    variables = {"id": global_id("Project", project.id)}
    expected = {
        "inputTokens": 48,
        "outputTokens": 2,
        "totalTokens": 50,
        "costUsd": 0.75,
        "requests": 2,
    }
    for email in (viewer.email, owner.email, "admin@example.com"):
        body = await gql(PROJECT, variables, token=await sign_in(email))
        assert body == {"data": {"project": {"usageThisMonth": expected}}}, email
    outsider = await gql(PROJECT, variables, token=await sign_in("user@example.com"))
    assert outsider == {"data": {"project": None}}


async def test_usage_of_many_projects_is_one_statement(
    gql: GraphQLClient, db: AsyncSession, sign_in: Any, engine: AsyncEngine
) -> None:
    owner = await create_user(db)
    now = datetime.now(UTC)
    for tokens in range(1, 6):
        project = await create_project(db, creator=owner)
        await create_usage(
            db, user=owner, project=project, created_at=now, input_tokens=tokens, output_tokens=0
        )
    token = await sign_in(owner.email)

    async def measure(first: int) -> tuple[int, list[int]]:
        with counting_statements(engine) as statements:
            body = await gql(PROJECTS, {"first": first}, token=token)
        assert "errors" not in body, body
        usage = [
            node["usageThisMonth"]["totalTokens"] for node in body["data"]["projects"]["nodes"]
        ]
        return len(statements), usage

    small, small_usage = await measure(2)
    large, large_usage = await measure(5)
    assert sorted(large_usage) == [1, 2, 3, 4, 5]
    assert len(small_usage) == 2
    assert small == large
