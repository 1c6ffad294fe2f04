"""A project's JSON settings: one row per key, set (inserted or replaced) and deleted by a
MANAGER or higher. Keys match `^[a-zA-Z][a-zA-Z0-9_.-]{0,63}$`; values are any JSON up to
64 KiB; known keys are checked (`monthlyTokenBudget` here, others by the domains that give
them meaning, through `hooks.check_setting`)."""

from __future__ import annotations

import json
import re
import uuid
from typing import Annotated, Any

import sqlalchemy as sa
from pydantic import AfterValidator
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from atlas_gql.auth.actor import Actor
from atlas_gql.config import TEXT_LIMITS
from atlas_gql.db.inputs import Command
from atlas_gql.db.session import ReadSession
from atlas_gql.errors import BadInput
from atlas_gql.projects.access import require_project_role
from atlas_gql.projects.hooks import check_setting_value
from atlas_gql.projects.models import Project, ProjectRole, ProjectSetting
from atlas_gql.projects.projects import load_project

SETTING_KEY_PATTERN = re.compile(rf"^[a-zA-Z][a-zA-Z0-9_.-]{{0,{TEXT_LIMITS.setting_key - 1}}}$")

# A setting whose values ATLAS reads, and so checks.
MONTHLY_TOKEN_BUDGET = "monthlyTokenBudget"


def validate_setting_key(key: str) -> str:
    if not SETTING_KEY_PATTERN.fullmatch(key):
        raise BadInput(
            f"A setting key starts with a letter and holds at most {TEXT_LIMITS.setting_key} "
            "letters, digits, '_', '.' or '-'.",
            field="key",
        )
    return key


def validate_setting_value(key: str, value: Any) -> None:
    """Any JSON up to 64 KiB (compact UTF-8); `monthlyTokenBudget` a non-negative integer."""
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > TEXT_LIMITS.setting_value_bytes:
        raise BadInput(
            f"A setting value must be at most {TEXT_LIMITS.setting_value_bytes} bytes of JSON "
            f"(this one is {size}).",
            field="value",
        )
    if key == MONTHLY_TOKEN_BUDGET and (
        not isinstance(value, int) or isinstance(value, bool) or value < 0
    ):
        raise BadInput(f"`{MONTHLY_TOKEN_BUDGET}` must be a non-negative integer.", field="value")


SettingKey = Annotated[str, AfterValidator(validate_setting_key)]


class SettingSet(Command):
    key: SettingKey
    value: Any


async def _require_manager(db: ReadSession, actor: Actor, project_id: uuid.UUID) -> None:
    await require_project_role(
        db, actor.viewer_required, project_id, ProjectRole.MANAGER, action="change its settings"
    )


async def set_setting(
    *, db: AsyncSession, actor: Actor, project_id: uuid.UUID, data: SettingSet
) -> ProjectSetting:
    """Set a JSON setting (MANAGER or higher), inserted or updated in one statement."""
    await _require_manager(db, actor, project_id)
    validate_setting_value(data.key, data.value)
    # Keys other domains give meaning to (`defaultAssistantId`: the AI domain's).
    await check_setting_value(db, project_id, data.key, data.value)
    insert = pg_insert(ProjectSetting).values(
        project_id=project_id, setting_key=data.key, value=data.value
    )
    upsert = insert.on_conflict_do_update(
        index_elements=[col(ProjectSetting.project_id), col(ProjectSetting.setting_key)],
        set_={"value": insert.excluded.value, "updated_at": sa.func.now()},
    ).returning(ProjectSetting)
    setting: ProjectSetting = (
        await db.execute(upsert, execution_options={"populate_existing": True})
    ).scalar_one()
    actor.record(db, "setting.set", setting, project_id=project_id, details={"key": data.key})
    return setting


async def delete_setting(
    *, db: AsyncSession, actor: Actor, project_id: uuid.UUID, key: str
) -> Project:
    """Remove a setting (MANAGER or higher; a key that is not set is left as it is) and return
    the project, whose settings changed."""
    await _require_manager(db, actor, project_id)
    validate_setting_key(key)
    deleted = (
        await db.execute(
            sa.delete(ProjectSetting)
            .where(
                col(ProjectSetting.project_id) == project_id,
                col(ProjectSetting.setting_key) == key,
            )
            .returning(col(ProjectSetting.id))
        )
    ).scalar_one_or_none()
    if deleted is not None:
        actor.record(
            db, "setting.delete", ("ProjectSetting", deleted), project_id=project_id,
            details={"key": key},
        )  # fmt: skip
    return await load_project(db, project_id)
