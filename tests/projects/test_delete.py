"""deleteProject: OWNER or ADMIN only; takes members, settings, assistants, threads, messages
and their file attachments with it; logs keep their rows."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from atlas_gql.ai.models import (
    Assistant,
    AssociableType,
    File,
    FileAssociation,
    Message,
    MessageRole,
    MessageStatus,
    Thread,
)
from atlas_gql.auth.models import RoleName
from atlas_gql.ids import decode_id_of
from atlas_gql.logs.models import ActivityLog
from atlas_gql.projects.models import Project, ProjectMember, ProjectSetting
from tests.conftest import error_codes
from tests.projects.conftest import (
    ADD_MEMBER,
    DELETE_PROJECT,
    PROJECT,
    SET_SETTING,
    create_project,
)


async def _count(db: AsyncSession, model: Any, *where: Any) -> int:
    return int(
        (await db.execute(sa.select(sa.func.count()).select_from(model).where(*where))).scalar_one()
    )


async def test_delete_project_takes_its_content(
    gql: Any, make_person: Any, db: AsyncSession
) -> None:
    owner = await make_person(RoleName.PROJECT_MANAGER)
    manager = await make_person()
    outsider = await make_person()
    project_id = await create_project(gql, owner, "Doomed")
    project_uuid = decode_id_of(project_id, "Project")
    await gql(
        ADD_MEMBER,
        {"projectId": project_id, "userId": manager.global_id, "role": "MANAGER"},
        token=owner.token,
    )
    await gql(SET_SETTING, {"projectId": project_id, "key": "k", "value": 1}, token=owner.token)
    assistant = Assistant(
        name="A", model="gpt-4o-mini", project_id=project_uuid, created_by_id=owner.user.id
    )
    thread = Thread(title="T", project_id=project_uuid, created_by_id=owner.user.id)
    db.add_all([assistant, thread])
    await db.flush()
    message = Message(
        thread_id=thread.id,
        user_id=owner.user.id,
        role=MessageRole.USER,
        content="hi",
        status=MessageStatus.COMPLETED,
    )
    file = File(filename="a.txt", bytes=1, uploaded_by_id=owner.user.id)
    db.add_all([message, file])
    await db.flush()
    db.add_all(
        [
            FileAssociation(
                file_id=file.id, associable_type=AssociableType.THREAD, associable_id=thread.id
            ),
            FileAssociation(
                file_id=file.id, associable_type=AssociableType.MESSAGE, associable_id=message.id
            ),
            FileAssociation(
                file_id=file.id,
                associable_type=AssociableType.ASSISTANT,
                associable_id=assistant.id,
            ),
        ]
    )
    await db.commit()

    assert error_codes(await gql(DELETE_PROJECT, {"id": project_id}, token=outsider.token)) == [
        "NOT_FOUND"
    ]
    assert error_codes(await gql(DELETE_PROJECT, {"id": project_id}, token=manager.token)) == [
        "FORBIDDEN"
    ]
    assert await _count(db, Thread, col(Thread.project_id) == project_uuid) == 1

    deleted = await gql(DELETE_PROJECT, {"id": project_id}, token=owner.token)
    assert deleted["data"] == {"deleteProject": project_id}
    assert (await gql(PROJECT, {"id": project_id}, token=owner.token))["data"] == {"project": None}
    assert await _count(db, Project, col(Project.id) == project_uuid) == 0
    assert await _count(db, ProjectMember, col(ProjectMember.project_id) == project_uuid) == 0
    assert await _count(db, ProjectSetting, col(ProjectSetting.project_id) == project_uuid) == 0
    assert await _count(db, Assistant, col(Assistant.id) == assistant.id) == 0
    assert await _count(db, Thread, col(Thread.id) == thread.id) == 0
    assert await _count(db, Message, col(Message.id) == message.id) == 0
    assert await _count(db, FileAssociation, col(FileAssociation.file_id) == file.id) == 0
    assert await _count(db, File, col(File.id) == file.id) == 1
    # The log keeps the story; the deletion row names the project in entity_id.
    log = (
        await db.execute(
            sa.select(ActivityLog).where(
                col(ActivityLog.action) == "project.delete",
                col(ActivityLog.entity_id) == str(project_uuid),
            )
        )
    ).scalar_one()
    assert log.user_id == owner.user.id
    assert log.details == {"name": "Doomed", "projectId": str(project_uuid)}
    assert await _count(db, ActivityLog, col(ActivityLog.entity_id) == str(project_uuid)) >= 2
    again = await gql(DELETE_PROJECT, {"id": project_id}, token=owner.token)
    assert error_codes(again) == ["NOT_FOUND"]


async def test_admin_deletes_any_project(gql: Any, make_person: Any, db: AsyncSession) -> None:
    owner = await make_person(RoleName.PROJECT_MANAGER)
    admin = await make_person(RoleName.ADMIN)
    project_id = await create_project(gql, owner, "Admin's call")
    assert (await gql(DELETE_PROJECT, {"id": project_id}, token=admin.token))["data"] == {
        "deleteProject": project_id
    }
    project_uuid = decode_id_of(project_id, "Project")
    assert await _count(db, Project, col(Project.id) == project_uuid) == 0
