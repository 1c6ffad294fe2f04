"""Members and project roles: who may add, change and remove whom; the last OWNER stays."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from atlas_gql.auth.models import RoleName
from atlas_gql.ids import decode_global_id, decode_id_of, encode_global_id
from atlas_gql.logs.models import ActivityLog
from atlas_gql.projects.models import ProjectMember
from tests.conftest import error_codes
from tests.projects.conftest import (
    ADD_MEMBER,
    PROJECT,
    REMOVE_MEMBER,
    UPDATE_MEMBER,
    create_project,
)

MEMBERS = """
query ($id: ID!) { project(id: $id) { members { edges { node { id user { id } } } } } }
"""


async def _add(gql: Any, actor: Any, project_id: str, person: Any, role: str) -> dict[str, Any]:
    body: dict[str, Any] = await gql(
        ADD_MEMBER,
        {"projectId": project_id, "userId": person.global_id, "role": role},
        token=actor.token,
    )
    return body


async def test_add_member_errors(gql: Any, make_person: Any) -> None:
    owner = await make_person(RoleName.PROJECT_MANAGER)
    member = await make_person()
    project_id = await create_project(gql, owner, "Members")

    unknown = {
        "projectId": project_id,
        "userId": encode_global_id("User", uuid.uuid4()),
        "role": "MEMBER",
    }
    assert error_codes(await gql(ADD_MEMBER, unknown, token=owner.token)) == ["NOT_FOUND"]
    not_a_user = {**unknown, "userId": project_id}
    body = await gql(ADD_MEMBER, not_a_user, token=owner.token)
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert body["errors"][0]["extensions"]["field"] == "userId"
    missing_project = {**unknown, "projectId": encode_global_id("Project", uuid.uuid4())}
    assert error_codes(await gql(ADD_MEMBER, missing_project, token=owner.token)) == ["NOT_FOUND"]
    # A MEMBER may not add anyone (FORBIDDEN: they can see the project).
    assert "errors" not in await _add(gql, owner, project_id, member, "MEMBER")
    newcomer = await make_person()
    assert error_codes(await _add(gql, member, project_id, newcomer, "VIEWER")) == ["FORBIDDEN"]


async def test_manager_manages_members_but_not_owners(gql: Any, make_person: Any) -> None:
    owner = await make_person(RoleName.PROJECT_MANAGER)
    manager = await make_person()
    someone = await make_person()
    project_id = await create_project(gql, owner, "Managed")
    assert "errors" not in await _add(gql, owner, project_id, manager, "MANAGER")

    # A MANAGER cannot add an OWNER, nor promote to OWNER, nor touch an OWNER.
    assert error_codes(await _add(gql, manager, project_id, someone, "OWNER")) == ["FORBIDDEN"]
    added = await _add(gql, manager, project_id, someone, "MEMBER")
    assert added["data"]["addProjectMember"]["role"] == "MEMBER"
    promote = {"projectId": project_id, "userId": someone.global_id, "role": "OWNER"}
    assert error_codes(await gql(UPDATE_MEMBER, promote, token=manager.token)) == ["FORBIDDEN"]
    demote_owner = {"projectId": project_id, "userId": owner.global_id, "role": "MEMBER"}
    assert error_codes(await gql(UPDATE_MEMBER, demote_owner, token=manager.token)) == ["FORBIDDEN"]
    remove_owner = {"projectId": project_id, "userId": owner.global_id}
    assert error_codes(await gql(REMOVE_MEMBER, remove_owner, token=manager.token)) == ["FORBIDDEN"]
    # ...but manages the others.
    to_manager = {"projectId": project_id, "userId": someone.global_id, "role": "MANAGER"}
    changed = await gql(UPDATE_MEMBER, to_manager, token=manager.token)
    assert changed["data"]["updateProjectMember"]["role"] == "MANAGER"
    members_before = await gql(MEMBERS, {"id": project_id}, token=manager.token)
    membership_id = next(
        edge["node"]["id"]
        for edge in members_before["data"]["project"]["members"]["edges"]
        if edge["node"]["user"]["id"] == someone.global_id
    )
    removed = await gql(
        REMOVE_MEMBER, {"projectId": project_id, "userId": someone.global_id}, token=manager.token
    )
    # The removed membership's ID, for a normalised cache to evict.
    assert removed["data"] == {"removeProjectMember": membership_id}
    again = await gql(
        REMOVE_MEMBER, {"projectId": project_id, "userId": someone.global_id}, token=manager.token
    )
    assert error_codes(again) == ["NOT_FOUND"]


async def test_last_owner_cannot_leave_or_be_demoted(
    gql: Any, make_person: Any, db: AsyncSession
) -> None:
    owner = await make_person(RoleName.PROJECT_MANAGER)
    admin = await make_person(RoleName.ADMIN)
    heir = await make_person()
    project_id = await create_project(gql, owner, "Dynasty")
    me = {"projectId": project_id, "userId": owner.global_id}

    assert error_codes(await gql(REMOVE_MEMBER, me, token=owner.token)) == ["CONFLICT"]
    demote = {**me, "role": "MANAGER"}
    assert error_codes(await gql(UPDATE_MEMBER, demote, token=owner.token)) == ["CONFLICT"]
    # Not even an ADMIN can leave a project without an OWNER.
    assert error_codes(await gql(REMOVE_MEMBER, me, token=admin.token)) == ["CONFLICT"]

    # Ownership transfer: the OWNER makes another member OWNER, then steps down.
    assert "errors" not in await _add(gql, owner, project_id, heir, "MEMBER")
    crowned = await gql(
        UPDATE_MEMBER,
        {"projectId": project_id, "userId": heir.global_id, "role": "OWNER"},
        token=owner.token,
    )
    assert crowned["data"]["updateProjectMember"]["role"] == "OWNER"
    stepped_down = await gql(UPDATE_MEMBER, demote, token=owner.token)
    assert stepped_down["data"]["updateProjectMember"]["role"] == "MANAGER"
    # Now the heir is the last OWNER.
    heir_leaves = {"projectId": project_id, "userId": heir.global_id}
    assert error_codes(await gql(REMOVE_MEMBER, heir_leaves, token=heir.token)) == ["CONFLICT"]

    project_uuid = decode_id_of(project_id, "Project")
    roles = dict(
        (
            await db.execute(
                sa.select(col(ProjectMember.user_id), col(ProjectMember.role)).where(
                    col(ProjectMember.project_id) == project_uuid
                )
            )
        ).all()
    )
    assert roles == {owner.user.id: "MANAGER", heir.user.id: "OWNER"}


async def test_member_may_leave(gql: Any, make_person: Any, db: AsyncSession) -> None:
    owner = await make_person(RoleName.PROJECT_MANAGER)
    viewer = await make_person()
    project_id = await create_project(gql, owner, "Leaving")
    assert "errors" not in await _add(gql, owner, project_id, viewer, "VIEWER")
    # A VIEWER may not remove others...
    kick_owner = {"projectId": project_id, "userId": owner.global_id}
    assert error_codes(await gql(REMOVE_MEMBER, kick_owner, token=viewer.token)) == ["FORBIDDEN"]
    # ...but may leave; afterwards the project does not exist for them.
    leave = {"projectId": project_id, "userId": viewer.global_id}
    left = (await gql(REMOVE_MEMBER, leave, token=viewer.token))["data"]["removeProjectMember"]
    assert decode_global_id(left)[0] == "ProjectMember"
    assert (await gql(PROJECT, {"id": project_id}, token=viewer.token))["data"] == {"project": None}
    assert error_codes(await gql(REMOVE_MEMBER, leave, token=viewer.token)) == ["NOT_FOUND"]
    details = (
        await db.execute(
            sa.select(col(ActivityLog.details)).where(
                col(ActivityLog.action) == "member.remove",
                col(ActivityLog.project_id) == decode_id_of(project_id, "Project"),
            )
        )
    ).scalar_one()
    assert details == {"userId": str(viewer.user.id), "role": "VIEWER", "left": True}


async def test_admin_manages_any_project(gql: Any, make_person: Any) -> None:
    owner = await make_person(RoleName.PROJECT_MANAGER)
    admin = await make_person(RoleName.ADMIN)
    someone = await make_person()
    project_id = await create_project(gql, owner, "Supervised")
    added = await _add(gql, admin, project_id, someone, "OWNER")
    assert added["data"]["addProjectMember"]["role"] == "OWNER"
    seen = await gql(PROJECT, {"id": project_id}, token=admin.token)
    assert seen["data"]["project"]["viewerRole"] is None
    assert seen["data"]["project"]["members"]["totalCount"] == 2
