"""activityLogs: who reads what, newest first, keyset pages, filters and bad input."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from atlas_gql.auth.models import RoleName
from atlas_gql.ids import encode_global_id as global_id
from atlas_gql.projects.models import ProjectRole
from tests.conftest import GraphQLClient, counting_statements, error_codes
from tests.factories import create_activity, create_project, create_user

ACTIVITY = """
query Activity($first: Int, $after: String, $filter: ActivityLogFilter) {
  activityLogs(first: $first, after: $after, filter: $filter) {
    totalCount
    pageInfo { hasNextPage endCursor }
    edges { cursor node {
      id action entityType entityId projectId ipAddress userAgent details createdAt
      user { id email }
    } }
  }
}
"""
# A moment no other test writes rows at.
BASE = datetime(2003, 5, 6, 12, 0, tzinfo=UTC)


def nodes(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [edge["node"] for edge in body["data"]["activityLogs"]["edges"]]


async def test_admin_reads_everything_newest_first_in_pages(
    gql: GraphQLClient, db: AsyncSession, sign_in: Any
) -> None:
    actor = await create_user(db)
    project = await create_project(db, creator=actor)
    rows = [
        await create_activity(
            db,
            created_at=BASE + timedelta(minutes=minute),
            user=actor,
            project=project if minute % 2 else None,
            action=f"test.step{minute}",
            details={"n": minute},
        )
        for minute in range(5)
    ]
    token = await sign_in("admin@example.com")
    seen: list[dict[str, Any]] = []
    after = None
    for _ in range(3):
        body = await gql(
            ACTIVITY,
            {"first": 2, "after": after, "filter": {"userId": global_id("User", actor.id)}},
            token=token,
        )
        assert "errors" not in body, body
        connection = body["data"]["activityLogs"]
        assert connection["totalCount"] == 5
        seen.extend(nodes(body))
        after = connection["pageInfo"]["endCursor"]
        if not connection["pageInfo"]["hasNextPage"]:
            break
    assert [node["action"] for node in seen] == [f"test.step{m}" for m in (4, 3, 2, 1, 0)]
    newest = seen[0]
    assert newest["id"] == global_id("ActivityLog", rows[4].id)
    assert newest["user"] == {"id": global_id("User", actor.id), "email": actor.email}
    assert newest["projectId"] is None
    assert seen[1]["projectId"] == global_id("Project", project.id)
    assert newest["details"] == {"n": 4}
    assert newest["ipAddress"] == "198.51.100.1"
    assert newest["userAgent"] == "pytest"
    assert newest["entityType"] == "Test"
    assert datetime.fromisoformat(newest["createdAt"]) == BASE + timedelta(minutes=4)


async def test_filters_combine_and_the_window_is_half_open(
    gql: GraphQLClient, db: AsyncSession, sign_in: Any
) -> None:
    actor = await create_user(db)
    for minute, action in ((0, "a.one"), (1, "a.two"), (2, "a.one"), (3, "a.one")):
        await create_activity(
            db,
            created_at=BASE + timedelta(minutes=minute),
            user=actor,
            action=action,
            entity_type="Thing" if minute < 3 else "Other",
        )
    token = await sign_in("admin@example.com")
    user_id = global_id("User", actor.id)

    async def actions(**filter: Any) -> list[tuple[str, str]]:
        body = await gql(ACTIVITY, {"filter": {"userId": user_id, **filter}}, token=token)
        assert "errors" not in body, body
        return [(node["action"], node["createdAt"][14:16]) for node in nodes(body)]

    # [12:01, 12:03) written with another offset: 14:01+02:00 is 12:01Z.
    window = {"from": "2003-05-06T14:01:00+02:00", "to": "2003-05-06T12:03:00Z"}
    assert await actions(**window) == [("a.one", "02"), ("a.two", "01")]
    assert await actions(action="a.one") == [("a.one", "03"), ("a.one", "02"), ("a.one", "00")]
    assert await actions(action="a.one", entityType="Thing") == [("a.one", "02"), ("a.one", "00")]
    assert await actions(action="missing") == []


async def test_user_without_a_managed_project_is_forbidden(
    gql: GraphQLClient, db: AsyncSession, sign_in: Any
) -> None:
    owner = await create_user(db)
    member = await create_user(db)
    project = await create_project(db, creator=owner, members={member.id: ProjectRole.MEMBER})
    await create_activity(db, created_at=BASE, user=owner, project=project)
    body = await gql(ACTIVITY, {}, token=await sign_in(member.email))
    assert error_codes(body) == ["FORBIDDEN"]
    assert body["data"] == {"activityLogs": None}
    body = await gql(ACTIVITY, {}, token=await sign_in("user@example.com"))
    assert error_codes(body) == ["FORBIDDEN"]
    assert error_codes(await gql(ACTIVITY, {})) == ["UNAUTHENTICATED"]


async def test_project_manager_reads_only_their_projects(
    gql: GraphQLClient, db: AsyncSession, sign_in: Any
) -> None:
    viewer = await create_user(db, roles=(RoleName.PROJECT_MANAGER,))
    stranger = await create_user(db)
    managed = await create_project(db, creator=stranger, members={viewer.id: ProjectRole.MANAGER})
    owned = await create_project(db, creator=viewer)
    joined = await create_project(db, creator=stranger, members={viewer.id: ProjectRole.MEMBER})
    foreign = await create_project(db, creator=stranger)
    for minute, project in enumerate((managed, owned, joined, foreign, None)):
        await create_activity(
            db,
            created_at=BASE + timedelta(minutes=minute),
            user=stranger,
            project=project,
            action=f"test.p{minute}",
        )
    token = await sign_in(viewer.email)
    window = {"from": "2003-05-06T12:00:00Z", "to": "2003-05-06T13:00:00Z"}

    body = await gql(ACTIVITY, {"filter": window}, token=token)
    assert "errors" not in body, body
    assert [node["action"] for node in nodes(body)] == ["test.p1", "test.p0"]

    body = await gql(
        ACTIVITY,
        {"filter": {**window, "projectId": global_id("Project", managed.id)}},
        token=token,
    )
    assert [node["action"] for node in nodes(body)] == ["test.p0"]
    # A member without the MANAGER role: FORBIDDEN; not a member: NOT_FOUND (no existence leak).
    body = await gql(
        ACTIVITY, {"filter": {"projectId": global_id("Project", joined.id)}}, token=token
    )
    assert error_codes(body) == ["FORBIDDEN"]
    body = await gql(
        ACTIVITY, {"filter": {"projectId": global_id("Project", foreign.id)}}, token=token
    )
    assert error_codes(body) == ["NOT_FOUND"]


async def test_activity_rows_as_nodes_follow_the_same_rule(
    gql: GraphQLClient, db: AsyncSession, sign_in: Any
) -> None:
    owner = await create_user(db)
    member = await create_user(db)
    project = await create_project(db, creator=owner, members={member.id: ProjectRole.MEMBER})
    row = await create_activity(db, created_at=BASE, user=member, project=project, action="x.y")
    query = "query($id: ID!) { node(id: $id) { ... on ActivityLog { action } } }"
    variables = {"id": global_id("ActivityLog", row.id)}
    assert (await gql(query, variables, token=await sign_in(owner.email)))["data"] == {
        "node": {"action": "x.y"}
    }
    assert (await gql(query, variables, token=await sign_in("admin@example.com")))["data"] == {
        "node": {"action": "x.y"}
    }
    assert (await gql(query, variables, token=await sign_in(member.email)))["data"] == {
        "node": None
    }


async def test_bad_input_is_a_clean_client_error(gql: GraphQLClient, sign_in: Any) -> None:
    token = await sign_in("admin@example.com")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"filter": {"userId": "not-an-id"}}, "filter.userId"),
        ({"filter": {"projectId": global_id("User", uuid.uuid4())}}, "filter.projectId"),
        ({"filter": {"from": "2003-05-06T13:00:00Z", "to": "2003-05-06T12:00:00Z"}}, "filter.from"),
        ({"filter": {"from": "2003-05-06T12:00:00Z", "to": "2003-05-06T12:00:00Z"}}, "filter.from"),
        ({"filter": {"from": "2003-05-06T12:00:00"}}, "filter.from"),
        ({"first": 101}, "first"),
        ({"after": "garbage!"}, "after"),
    ]
    for variables, field in cases:
        body = await gql(ACTIVITY, variables, token=token)
        assert error_codes(body) == ["BAD_USER_INPUT"], (variables, body)
        assert body["errors"][0]["extensions"]["field"] == field
        text = str(body)
        assert "Traceback" not in text
        assert "SELECT" not in text
    body = await gql(ACTIVITY, {"filter": {"from": "yesterday"}}, token=token)
    assert body["errors"]
    assert "Traceback" not in str(body)
    assert body.get("data") is None


async def test_statements_do_not_grow_with_the_page_size(
    gql: GraphQLClient, db: AsyncSession, sign_in: Any, engine: AsyncEngine
) -> None:
    users = [await create_user(db) for _ in range(6)]
    for minute, user in enumerate(users):
        await create_activity(db, created_at=BASE + timedelta(minutes=minute), user=user)
    token = await sign_in("admin@example.com")
    window = {"from": "2003-05-06T12:00:00Z", "to": "2003-05-06T13:00:00Z"}

    async def measure(first: int) -> int:
        with counting_statements(engine) as statements:
            body = await gql(ACTIVITY, {"first": first, "filter": window}, token=token)
        assert len(nodes(body)) == first
        return len(statements)

    assert await measure(2) == await measure(6)
