"""Where domains above `projects` plug into it, so that `projects` never imports them.

The AI domain keeps rows inside a project (assistants, threads, messages and their file
attachments) and gives meaning to some of its settings; it registers what projects must ask
it (`atlas_gql.ai.project_content`, imported with the `atlas_gql.ai` package). Hooks run in
the caller's transaction."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

from sqlalchemy.ext.asyncio import AsyncSession

from atlas_gql.db.session import ReadSession

# Runs before a project row is deleted: removes what its foreign keys do not cascade to.
ProjectDeletionHook: TypeAlias = Callable[[AsyncSession, uuid.UUID], Awaitable[None]]
# Checks the value of one setting key of a project (raises BadInput when it is wrong).
SettingCheck: TypeAlias = Callable[[ReadSession, uuid.UUID, Any], Awaitable[None]]

_before_delete: list[ProjectDeletionHook] = []
_setting_checks: dict[str, SettingCheck] = {}


def on_project_delete(hook: ProjectDeletionHook) -> ProjectDeletionHook:
    """Register `hook` to run when a project is deleted (usable as a decorator)."""
    if hook not in _before_delete:
        _before_delete.append(hook)
    return hook


def check_setting(key: str) -> Callable[[SettingCheck], SettingCheck]:
    """Register the check of setting `key`'s values (a decorator)."""

    def register(check: SettingCheck) -> SettingCheck:
        _setting_checks[key] = check
        return check

    return register


async def before_project_delete(db: AsyncSession, project_id: uuid.UUID) -> None:
    for hook in _before_delete:
        await hook(db, project_id)


async def check_setting_value(db: ReadSession, project_id: uuid.UUID, key: str, value: Any) -> None:
    check = _setting_checks.get(key)
    if check is not None:
        await check(db, project_id, value)
