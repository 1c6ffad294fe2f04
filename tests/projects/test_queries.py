"""Reading projects: `projects` pagination and filters, `project`, `node`, and a project's
threads; visibility for non-members and ADMIN."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from atlas_gql.ai.models import Thread
from atlas_gql.auth.models import RoleName
from atlas_gql.ids import decode_id_of, encode_global_id
from atlas_gql.projects import projects
from atlas_gql.projects.models import Project, ProjectMember, ProjectRole
from tests.conftest import error_codes
from tests.projects.conftest import ADD_MEMBER, create_project

PROJECTS = """
query ($first: Int, $after: String, $filter: ProjectFilter) {
  projects(first: $first, after: $after, filter: $filter) {
    totalCount
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
    edges { cursor node { id name viewerRole } }
  }
}"""

NODE = """
query ($id: ID!) {
  node(id: $id) {
    __typename id
    ... on Project { name viewerRole }
    ... on ProjectMember { role user { email } project { name } }
  }
}"""

THREADS = """
query ($id: ID!, $first: Int, $after: String) {
  project(id: $id) {
    threads(first: $first, after: $after) {
      totalCount
      pageInfo { hasNextPage endCursor }
      edges { node { id title } }
    }
  }
}"""


async def test_cursor_pagination_visits_each_of_24_projects_once(
    gql: Any, make_person: Any, db: AsyncSession
) -> None:
    owner = await make_person(RoleName.PROJECT_MANAGER)
    made = {
        (
            await projects.create_project(
                db=db, actor=owner.actor, data=projects.ProjectCreate(name=f"P{i:02d}")
            )
        ).name
        for i in range(24)
    }
    seen: list[str] = []
    after = None
    pages = 0
    while True:
        body = await gql(PROJECTS, {"first": 5, "after": after}, token=owner.token)
        assert "errors" not in body, body
        connection = body["data"]["projects"]
        assert connection["totalCount"] == 24 + pages  # one project is added per page below
        assert connection["pageInfo"]["hasPreviousPage"] is (after is not None)
        seen.extend(edge["node"]["name"] for edge in connection["edges"])
        pages += 1
        # Keyset cursors are stable under inserts: a newer project lands before the cursor.
        late = Project(
            name=f"Late {pages}",
            created_by_id=owner.user.id,
            created_at=datetime.now(UTC) + timedelta(hours=pages),
        )
        db.add(late)
        await db.flush()
        db.add(ProjectMember(project_id=late.id, user_id=owner.user.id, role=ProjectRole.OWNER))
        await db.commit()
        if not connection["pageInfo"]["hasNextPage"]:
            break
        after = connection["pageInfo"]["endCursor"]
        assert after == connection["edges"][-1]["cursor"]
    assert pages == 5
    assert len(seen) == 24
    assert set(seen) == made


async def test_page_size_and_cursor_are_checked(gql: Any, make_person: Any) -> None:
    owner = await make_person(RoleName.PROJECT_MANAGER)
    project_id = await create_project(gql, owner, "Checked")
    huge = await gql(PROJECTS, {"first": 100000}, token=owner.token)
    assert error_codes(huge) == ["BAD_USER_INPUT"]
    assert huge["errors"][0]["extensions"]["field"] == "first"
    assert error_codes(await gql(PROJECTS, {"first": -1}, token=owner.token)) == ["BAD_USER_INPUT"]
    for cursor in ("garbage", "bm90LWpzb24", encode_global_id("Project", uuid.uuid4())):
        bad = await gql(PROJECTS, {"first": 5, "after": cursor}, token=owner.token)
        assert error_codes(bad) == ["BAD_USER_INPUT"], cursor
        assert bad["errors"][0]["extensions"]["field"] == "after"
    nested = await gql(THREADS, {"id": project_id, "after": "garbage"}, token=owner.token)
    assert error_codes(nested) == ["BAD_USER_INPUT"]
    nested_huge = await gql(THREADS, {"id": project_id, "first": 101}, token=owner.token)
    assert error_codes(nested_huge) == ["BAD_USER_INPUT"]
    assert error_codes(await gql(PROJECTS, {"first": 5})) == ["UNAUTHENTICATED"]


async def test_filters_and_visibility(gql: Any, make_person: Any) -> None:
    owner = await make_person(RoleName.PROJECT_MANAGER)
    other = await make_person(RoleName.PROJECT_MANAGER)
    admin = await make_person(RoleName.ADMIN)
    mine = await create_project(gql, owner, "Moon 100% landing")
    theirs = await create_project(gql, other, "Moon base")
    await gql(
        ADD_MEMBER,
        {"projectId": theirs, "userId": owner.global_id, "role": "VIEWER"},
        token=other.token,
    )
    await create_project(gql, other, "Mars")

    async def names(person: Any, **filter: Any) -> list[str]:
        body = await gql(PROJECTS, {"first": 100, "filter": filter}, token=person.token)
        assert "errors" not in body, body
        return [edge["node"]["name"] for edge in body["data"]["projects"]["edges"]]

    # Created in one test transaction, they share created_at: the id orders them.
    assert set(await names(owner)) == {"Moon base", "Moon 100% landing"}
    assert set(await names(owner, search="MOON")) == {"Moon base", "Moon 100% landing"}
    assert await names(owner, search="100%") == ["Moon 100% landing"]
    assert await names(owner, search="%") == ["Moon 100% landing"]
    assert await names(owner, role="VIEWER") == ["Moon base"]
    assert await names(owner, role="OWNER") == ["Moon 100% landing"]
    assert await names(owner, search="Mars") == []
    # ADMIN sees every project (the seed's too), with no role in them.
    admin_names = await names(admin, search="M")
    assert {"Moon base", "Moon 100% landing", "Mars"} <= set(admin_names)
    assert await names(admin, role="OWNER") == []
    assert mine != theirs


async def test_node_resolves_projects_and_members(gql: Any, make_person: Any) -> None:
    owner = await make_person(RoleName.PROJECT_MANAGER)
    outsider = await make_person()
    admin = await make_person(RoleName.ADMIN)
    project_id = await create_project(gql, owner, "Noded")

    body = await gql(NODE, {"id": project_id}, token=owner.token)
    assert body["data"]["node"] == {
        "__typename": "Project",
        "id": project_id,
        "name": "Noded",
        "viewerRole": "OWNER",
    }
    assert (await gql(NODE, {"id": project_id}, token=outsider.token))["data"] == {"node": None}
    assert (await gql(NODE, {"id": project_id}))["data"] == {"node": None}
    as_admin = await gql(NODE, {"id": project_id}, token=admin.token)
    assert as_admin["data"]["node"]["name"] == "Noded"
    assert as_admin["data"]["node"]["viewerRole"] is None
    missing = encode_global_id("Project", uuid.uuid4())
    assert (await gql(NODE, {"id": missing}, token=admin.token))["data"] == {"node": None}

    members = await gql(
        "query ($id: ID!) { project(id: $id) { members { edges { node { id } } } } }",
        {"id": project_id},
        token=owner.token,
    )
    member_id = members["data"]["project"]["members"]["edges"][0]["node"]["id"]
    member = await gql(NODE, {"id": member_id}, token=owner.token)
    assert member["data"]["node"] == {
        "__typename": "ProjectMember",
        "id": member_id,
        "role": "OWNER",
        "user": {"email": owner.user.email},
        "project": {"name": "Noded"},
    }
    assert (await gql(NODE, {"id": member_id}, token=outsider.token))["data"] == {"node": None}
    assert (await gql(NODE, {"id": member_id}, token=admin.token))["data"]["node"]["role"] == (
        "OWNER"
    )


async def test_threads_newest_first_for_members_only(
    gql: Any, make_person: Any, db: AsyncSession
) -> None:
    owner = await make_person(RoleName.PROJECT_MANAGER)
    project_id = await create_project(gql, owner, "Threaded")
    project_uuid = decode_id_of(project_id, "Project")
    # Rows of one test transaction share now(), so the test sets created_at itself.
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for number in range(5):
        db.add(
            Thread(
                title=f"T{number}",
                project_id=project_uuid,
                created_by_id=owner.user.id,
                created_at=start + timedelta(minutes=number),
            )
        )
    await db.commit()
    first = await gql(THREADS, {"id": project_id, "first": 3}, token=owner.token)
    threads = first["data"]["project"]["threads"]
    assert [edge["node"]["title"] for edge in threads["edges"]] == ["T4", "T3", "T2"]
    assert threads["totalCount"] == 5
    assert threads["pageInfo"]["hasNextPage"] is True
    rest = await gql(
        THREADS,
        {"id": project_id, "first": 3, "after": threads["pageInfo"]["endCursor"]},
        token=owner.token,
    )
    rest_threads = rest["data"]["project"]["threads"]
    assert [edge["node"]["title"] for edge in rest_threads["edges"]] == ["T1", "T0"]
    assert rest_threads["pageInfo"]["hasNextPage"] is False
