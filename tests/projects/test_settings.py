"""JSON settings: upsert, key and size rules, known keys, roles, delete."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from atlas_gql.ai.models import Assistant
from atlas_gql.auth.models import RoleName
from atlas_gql.ids import decode_id_of, encode_global_id
from atlas_gql.logs.models import ActivityLog
from atlas_gql.projects.models import ProjectSetting
from tests.conftest import error_codes
from tests.projects.conftest import ADD_MEMBER, DELETE_SETTING, SET_SETTING, create_project

SETTINGS = "query ($id: ID!) { project(id: $id) { settings { key value } } }"


async def test_upsert_keeps_one_row_per_key(gql: Any, make_person: Any, db: AsyncSession) -> None:
    owner = await make_person(RoleName.PROJECT_MANAGER)
    project_id = await create_project(gql, owner, "Configured")
    for value in ({"a": 1}, "text", 3.5, True, [None, {"deep": [1]}]):
        body = await gql(
            SET_SETTING,
            {"projectId": project_id, "key": "misc.v-1_x", "value": value},
            token=owner.token,
        )
        assert body["data"]["setProjectSetting"]["value"] == value, body
    await gql(SET_SETTING, {"projectId": project_id, "key": "alpha", "value": 0}, token=owner.token)
    listed = await gql(SETTINGS, {"id": project_id}, token=owner.token)
    assert listed["data"]["project"]["settings"] == [
        {"key": "alpha", "value": 0},
        {"key": "misc.v-1_x", "value": [None, {"deep": [1]}]},
    ]
    project_uuid = decode_id_of(project_id, "Project")
    count = (
        await db.execute(
            sa.select(sa.func.count()).where(col(ProjectSetting.project_id) == project_uuid)
        )
    ).scalar_one()
    assert count == 2
    actions = (
        await db.execute(
            sa.select(sa.func.count()).where(
                col(ActivityLog.project_id) == project_uuid,
                col(ActivityLog.action) == "setting.set",
            )
        )
    ).scalar_one()
    assert actions == 6


async def test_bad_keys_and_values(gql: Any, make_person: Any) -> None:
    owner = await make_person(RoleName.PROJECT_MANAGER)
    project_id = await create_project(gql, owner, "Strict")

    async def field_of(key: str, value: Any) -> tuple[list[str], str | None]:
        body = await gql(
            SET_SETTING, {"projectId": project_id, "key": key, "value": value}, token=owner.token
        )
        codes = error_codes(body)
        return codes, body["errors"][0]["extensions"].get("field") if codes else None

    for key in ("", "1abc", "has space", "a" * 65, "ünï"):
        assert await field_of(key, 1) == (["BAD_USER_INPUT"], "key"), key
    assert (await field_of("a" * 64, 1))[0] == []
    big = "x" * (64 * 1024)
    assert await field_of("big", big) == (["BAD_USER_INPUT"], "value")
    assert (await field_of("big", "x" * (64 * 1024 - 2)))[0] == []
    for budget in (-1, 1.5, "100", True, {"tokens": 5}):
        assert await field_of("monthlyTokenBudget", budget) == (["BAD_USER_INPUT"], "value")
    # JSON null is not a value (the argument is JSON!): refused before the resolver runs.
    assert (await field_of("nothing", None))[0] == ["BAD_USER_INPUT"]
    assert (await field_of("monthlyTokenBudget", 0))[0] == []
    assert (await field_of("monthlyTokenBudget", 2_000_000))[0] == []


async def test_default_assistant_must_be_an_assistant_of_the_project(
    gql: Any, make_person: Any, db: AsyncSession
) -> None:
    owner = await make_person(RoleName.PROJECT_MANAGER)
    project_id = await create_project(gql, owner, "Assisted")
    other_project_id = await create_project(gql, owner, "Elsewhere")
    mine = Assistant(
        name="Mine",
        model="gpt-4o-mini",
        project_id=decode_id_of(project_id, "Project"),
        created_by_id=owner.user.id,
    )
    theirs = Assistant(
        name="Theirs",
        model="gpt-4o-mini",
        project_id=decode_id_of(other_project_id, "Project"),
        created_by_id=owner.user.id,
    )
    db.add_all([mine, theirs])
    await db.commit()

    async def codes(value: Any) -> list[str]:
        body = await gql(
            SET_SETTING,
            {"projectId": project_id, "key": "defaultAssistantId", "value": value},
            token=owner.token,
        )
        return error_codes(body)

    assert await codes(encode_global_id("Assistant", theirs.id)) == ["BAD_USER_INPUT"]
    assert await codes(project_id) == ["BAD_USER_INPUT"]
    assert await codes("not an id") == ["BAD_USER_INPUT"]
    assert await codes(42) == ["BAD_USER_INPUT"]
    assert await codes(encode_global_id("Assistant", mine.id)) == []


async def test_roles_and_delete(gql: Any, make_person: Any, db: AsyncSession) -> None:
    owner = await make_person(RoleName.PROJECT_MANAGER)
    member = await make_person()
    outsider = await make_person()
    project_id = await create_project(gql, owner, "Deleting settings")
    await gql(
        ADD_MEMBER,
        {"projectId": project_id, "userId": member.global_id, "role": "MEMBER"},
        token=owner.token,
    )
    set_key = {"projectId": project_id, "key": "k", "value": {"v": 1}}
    assert error_codes(await gql(SET_SETTING, set_key, token=member.token)) == ["FORBIDDEN"]
    assert error_codes(await gql(SET_SETTING, set_key, token=outsider.token)) == ["NOT_FOUND"]
    assert "errors" not in await gql(SET_SETTING, set_key, token=owner.token)

    delete = {"projectId": project_id, "key": "k"}
    assert error_codes(await gql(DELETE_SETTING, delete, token=member.token)) == ["FORBIDDEN"]
    assert error_codes(await gql(DELETE_SETTING, delete, token=outsider.token)) == ["NOT_FOUND"]
    # Members read settings; outsiders do not see the project at all.
    seen = await gql(SETTINGS, {"id": project_id}, token=member.token)
    assert seen["data"]["project"]["settings"] == [{"key": "k", "value": {"v": 1}}]
    # The project answers, with its settings as they are now (a normalised cache updates).
    answer = {"deleteProjectSetting": {"id": project_id, "settings": []}}
    assert (await gql(DELETE_SETTING, delete, token=owner.token))["data"] == answer
    # Idempotent: deleting a key that is not set changes nothing, and is no error.
    assert (await gql(DELETE_SETTING, delete, token=owner.token))["data"] == answer
    assert (await gql(SETTINGS, {"id": project_id}, token=member.token))["data"]["project"] == {
        "settings": []
    }
    logged = (
        await db.execute(
            sa.select(col(ActivityLog.details)).where(
                col(ActivityLog.action) == "setting.delete",
                col(ActivityLog.project_id) == decode_id_of(project_id, "Project"),
            )
        )
    ).scalars()
    assert list(logged) == [{"key": "k"}]


async def test_a_set_setting_answers_its_project_for_caches(gql: Any, make_person: Any) -> None:
    """Issue 12 part 6: a mutation's answer reaches what it changed (the project's settings)."""
    owner = await make_person(RoleName.PROJECT_MANAGER)
    member = await make_person()
    project_id = await create_project(gql, owner, "Cached")
    await gql(
        ADD_MEMBER,
        {"projectId": project_id, "userId": member.global_id, "role": "MEMBER"},
        token=owner.token,
    )
    query = """
    mutation ($projectId: ID!, $key: String!, $value: JSON!) {
      setProjectSetting(projectId: $projectId, key: $key, value: $value) {
        key project { id settings { key value } }
      }
    }"""
    body = await gql(query, {"projectId": project_id, "key": "k", "value": 3}, token=owner.token)
    assert body["data"]["setProjectSetting"] == {
        "key": "k",
        "project": {"id": project_id, "settings": [{"key": "k", "value": 3}]},
    }
    # A MEMBER may not change settings: nothing answers.
    change = {"projectId": project_id, "key": "k", "value": 4}
    refused = await gql(query, change, token=member.token)
    assert error_codes(refused) == ["FORBIDDEN"]
    assert refused["data"] == {"setProjectSetting": None}
