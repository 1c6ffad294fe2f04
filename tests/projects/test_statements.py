"""No N+1: the nested projects query costs the same number of SQL statements for 2 projects
as for 20, counted on the engine with a `before_cursor_execute` listener."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from atlas_gql.ai.models import Thread
from atlas_gql.auth.models import RoleName
from atlas_gql.projects import members, projects, settings
from atlas_gql.projects.models import ProjectRole
from tests.conftest import counting_statements

NESTED = """
query ($first: Int!) {
  projects(first: $first) {
    totalCount
    edges { node {
      name
      createdBy { email }
      members(first: 10) { totalCount edges { node { role user { email } } } }
      settings { key }
      viewerRole
      threads(first: 3) { edges { node { title } } }
    } }
  }
}"""


async def seed_projects(db: AsyncSession, owner: Any, others: list[Any], count: int) -> None:
    """`count` projects of `owner`, each with members, a setting and four threads."""
    for index in range(count):
        project = await projects.create_project(
            db=db, actor=owner.actor, data=projects.ProjectCreate(name=f"Nested {index:02d}")
        )
        for other, role in zip(others, (ProjectRole.MEMBER, ProjectRole.VIEWER), strict=True):
            await members.add_member(
                db=db,
                actor=owner.actor,
                project_id=project.id,
                data=members.MemberAdd(user_id=other.user.id, role=role),
            )
        await settings.set_setting(
            db=db,
            actor=owner.actor,
            project_id=project.id,
            data=settings.SettingSet(key="color", value=index),
        )
        for number in range(4):
            db.add(Thread(title=f"T{number}", project_id=project.id, created_by_id=owner.user.id))
    await db.commit()


async def test_nested_query_statements_do_not_grow_with_page_size(
    gql: Any, make_person: Any, db: AsyncSession, engine: AsyncEngine
) -> None:
    owner = await make_person(RoleName.PROJECT_MANAGER, label="owner")
    others = [await make_person(label="member"), await make_person(label="viewer")]
    await seed_projects(db, owner, others, 20)

    counts: dict[int, int] = {}
    for first in (2, 20):
        with counting_statements(engine) as statements:
            body = await gql(NESTED, {"first": first}, token=owner.token)
        assert "errors" not in body, body
        edges = body["data"]["projects"]["edges"]
        assert len(edges) == first
        for edge in edges:
            node = edge["node"]
            assert node["createdBy"]["email"] == owner.user.email
            assert node["members"]["totalCount"] == 3
            assert {member["node"]["user"]["email"] for member in node["members"]["edges"]} == {
                owner.user.email,
                *(other.user.email for other in others),
            }
            assert node["settings"] == [{"key": "color"}]
            assert node["viewerRole"] == "OWNER"
            assert len(node["threads"]["edges"]) == 3
        counts[first] = len(statements)
    assert counts[2] == counts[20], counts
    # viewer + projects (page, total) + createdBy + members (page, total) + users + settings
    # + viewerRole + threads (page, total), plus the session's savepoint bookkeeping.
    assert counts[20] <= 16, counts
