"""The issue's acceptance scenario, end to end through GraphQL."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from atlas_gql.auth.models import RoleName
from atlas_gql.ids import decode_id_of
from atlas_gql.logs.models import ActivityLog
from atlas_gql.projects.models import ProjectSetting
from tests.conftest import error_codes
from tests.projects.conftest import (
    ADD_MEMBER,
    CREATE_PROJECT,
    PROJECT,
    SET_SETTING,
    UPDATE_MEMBER,
    UPDATE_PROJECT,
    create_project,
)


async def test_apollo_scenario(gql: Any, make_person: Any, db: AsyncSession) -> None:
    pm = await make_person(RoleName.PROJECT_MANAGER, label="pm")
    outsider = await make_person(RoleName.USER, label="outsider")
    viewer = await make_person(RoleName.USER, label="viewer")

    # A PROJECT_MANAGER creates "Apollo" and is its OWNER.
    created = await gql(CREATE_PROJECT, {"input": {"name": "  Apollo  "}}, token=pm.token)
    assert "errors" not in created, created
    apollo = created["data"]["createProject"]
    assert apollo["name"] == "Apollo"
    assert apollo["viewerRole"] == "OWNER"
    assert apollo["createdBy"]["email"] == pm.user.email
    apollo_id = apollo["id"]

    # An empty name is BAD_USER_INPUT.
    empty = await gql(CREATE_PROJECT, {"input": {"name": "   "}}, token=pm.token)
    assert error_codes(empty) == ["BAD_USER_INPUT"]
    assert empty["errors"][0]["extensions"]["field"] == "name"

    # A non-member gets null for it and NOT_FOUND updating it.
    assert (await gql(PROJECT, {"id": apollo_id}, token=outsider.token))["data"] == {
        "project": None
    }
    denied = await gql(
        UPDATE_PROJECT, {"id": apollo_id, "input": {"name": "Mine"}}, token=outsider.token
    )
    assert error_codes(denied) == ["NOT_FOUND"]

    # The owner adds a VIEWER; twice is a CONFLICT.
    add = {"projectId": apollo_id, "userId": viewer.global_id, "role": "VIEWER"}
    added = await gql(ADD_MEMBER, add, token=pm.token)
    assert "errors" not in added, added
    assert added["data"]["addProjectMember"]["role"] == "VIEWER"
    assert added["data"]["addProjectMember"]["project"]["name"] == "Apollo"
    assert error_codes(await gql(ADD_MEMBER, add, token=pm.token)) == ["CONFLICT"]

    # The viewer sees it with viewerRole VIEWER and two members...
    seen = await gql(PROJECT, {"id": apollo_id}, token=viewer.token)
    assert seen["data"]["project"]["viewerRole"] == "VIEWER"
    assert seen["data"]["project"]["members"]["totalCount"] == 2
    roles = [edge["node"]["role"] for edge in seen["data"]["project"]["members"]["edges"]]
    assert sorted(roles) == ["OWNER", "VIEWER"]
    # ...and is FORBIDDEN to update it or its settings.
    forbidden = await gql(
        UPDATE_PROJECT, {"id": apollo_id, "input": {"name": "Viewer's"}}, token=viewer.token
    )
    assert error_codes(forbidden) == ["FORBIDDEN"]
    setting = {"projectId": apollo_id, "key": "theme", "value": {"dark": True}}
    assert error_codes(await gql(SET_SETTING, setting, token=viewer.token)) == ["FORBIDDEN"]

    # The owner promotes them to MANAGER, who sets a JSON setting.
    promoted = await gql(UPDATE_MEMBER, {**add, "role": "MANAGER"}, token=pm.token)
    assert promoted["data"]["updateProjectMember"]["role"] == "MANAGER"
    value = {"dark": True, "accent": "#ff6600", "panels": [1, 2, 3], "nested": {"a": None}}
    stored = await gql(SET_SETTING, {**setting, "value": value}, token=viewer.token)
    assert "errors" not in stored, stored
    assert stored["data"]["setProjectSetting"]["value"] == value

    # Setting the same key again updates the one row.
    again = await gql(SET_SETTING, {**setting, "value": [1, "two"]}, token=viewer.token)
    assert again["data"]["setProjectSetting"]["value"] == [1, "two"]
    project_uuid = decode_id_of(apollo_id, "Project")
    rows = (
        await db.execute(
            sa.select(ProjectSetting).where(col(ProjectSetting.project_id) == project_uuid)
        )
    ).scalars()
    assert [(row.setting_key, row.value) for row in rows] == [("theme", [1, "two"])]

    # The project's ActivityLog tells the story.
    actions = (
        await db.execute(
            sa.select(col(ActivityLog.action))
            .where(col(ActivityLog.project_id) == project_uuid)
            .order_by(col(ActivityLog.created_at), col(ActivityLog.action))
        )
    ).scalars()
    assert sorted(actions) == sorted(
        ["project.create", "member.add", "member.update", "setting.set", "setting.set"]
    )


async def test_create_project_needs_create_project_permission(gql: Any, make_person: Any) -> None:
    plain = await make_person(RoleName.USER)
    body = await gql(CREATE_PROJECT, {"input": {"name": "Nope"}}, token=plain.token)
    assert error_codes(body) == ["FORBIDDEN"]
    anonymous = await gql(CREATE_PROJECT, {"input": {"name": "Nope"}})
    assert error_codes(anonymous) == ["UNAUTHENTICATED"]


async def test_name_limits_and_update(gql: Any, make_person: Any, db: AsyncSession) -> None:
    pm = await make_person(RoleName.PROJECT_MANAGER)
    too_long = await gql(CREATE_PROJECT, {"input": {"name": "x" * 201}}, token=pm.token)
    assert error_codes(too_long) == ["BAD_USER_INPUT"]
    project_id = await create_project(gql, pm, "x" * 200, "first")
    renamed = await gql(
        UPDATE_PROJECT, {"id": project_id, "input": {"name": " Zeus "}}, token=pm.token
    )
    assert renamed["data"]["updateProject"] == {
        "id": project_id,
        "name": "Zeus",
        "description": "first",
    }
    cleared = await gql(
        UPDATE_PROJECT, {"id": project_id, "input": {"description": None}}, token=pm.token
    )
    assert cleared["data"]["updateProject"]["description"] is None
    assert cleared["data"]["updateProject"]["name"] == "Zeus"
    blank = await gql(UPDATE_PROJECT, {"id": project_id, "input": {"name": ""}}, token=pm.token)
    assert error_codes(blank) == ["BAD_USER_INPUT"]
    wrong_kind = await gql(
        UPDATE_PROJECT, {"id": pm.global_id, "input": {"name": "A"}}, token=pm.token
    )
    assert error_codes(wrong_kind) == ["BAD_USER_INPUT"]
    updates = (
        await db.execute(
            sa.select(col(ActivityLog.details)).where(
                col(ActivityLog.action) == "project.update",
                col(ActivityLog.project_id) == decode_id_of(project_id, "Project"),
            )
        )
    ).scalars()
    assert sorted(details["changed"] for details in updates) == [["description"], ["name"]]
