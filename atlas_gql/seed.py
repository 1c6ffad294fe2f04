"""The idempotent seed: roles, permissions and grants; three users; a sample project with an
assistant, a thread and a few messages. Run it as often as you like: same rows."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from atlas_gql.ai.models import Assistant, Message, MessageRole, MessageStatus, Thread
from atlas_gql.auth.models import (
    Permission,
    PermissionName,
    Role,
    RoleName,
    RolePermission,
    User,
    UserRole,
)
from atlas_gql.auth.passwords import hash_password_sync, validate_password
from atlas_gql.config import Settings
from atlas_gql.projects.models import Project, ProjectMember, ProjectRole

logger = logging.getLogger(__name__)

ROLE_PERMISSIONS: dict[RoleName, tuple[PermissionName, ...]] = {
    RoleName.ADMIN: (
        PermissionName.CREATE_PROJECT,
        PermissionName.MANAGE_USERS,
        PermissionName.USE_AI,
    ),
    RoleName.PROJECT_MANAGER: (PermissionName.CREATE_PROJECT, PermissionName.USE_AI),
    RoleName.USER: (PermissionName.USE_AI,),
}
ROLE_DESCRIPTIONS = {
    RoleName.ADMIN: "Administers the whole workspace.",
    RoleName.PROJECT_MANAGER: "Creates and runs projects.",
    RoleName.USER: "Uses AI assistants in the projects they belong to.",
}
PERMISSION_DESCRIPTIONS = {
    PermissionName.CREATE_PROJECT: "Create projects.",
    PermissionName.MANAGE_USERS: "List, create, deactivate users and change their roles.",
    PermissionName.USE_AI: "Create assistants and threads, and send messages.",
}
SEED_USERS: tuple[tuple[str, str, RoleName], ...] = (
    ("admin@example.com", "Ada Admin", RoleName.ADMIN),
    ("user@example.com", "Uma User", RoleName.USER),
    ("pm@example.com", "Pat Manager", RoleName.PROJECT_MANAGER),
)
SAMPLE_PROJECT_NAME = "Sample Project"
SAMPLE_ASSISTANT_NAME = "Sample Assistant"
SAMPLE_THREAD_TITLE = "Welcome to ATLAS"
SAMPLE_MESSAGES: tuple[tuple[MessageRole, str], ...] = (
    (MessageRole.USER, "Hello! What can this workspace do?"),
    (
        MessageRole.ASSISTANT,
        "Hi! Create projects, invite your team, configure assistants and chat with them here. "
        "Replies stream live to everyone viewing the thread.",
    ),
    (MessageRole.USER, "Great, thanks."),
)


@dataclass(frozen=True)
class SeedReport:
    roles: int
    permissions: int
    users: int
    created_sample: bool


async def _ensure_roles_and_permissions(db: AsyncSession) -> dict[RoleName, Role]:
    await db.execute(
        insert(Role)
        .values([{"name": name.value, "description": ROLE_DESCRIPTIONS[name]} for name in RoleName])
        .on_conflict_do_nothing(index_elements=["name"])
    )
    await db.execute(
        insert(Permission)
        .values(
            [
                {"name": name.value, "description": PERMISSION_DESCRIPTIONS[name]}
                for name in PermissionName
            ]
        )
        .on_conflict_do_nothing(index_elements=["name"])
    )
    roles = {role.name: role for role in (await db.execute(sa.select(Role))).scalars()}
    permissions = {p.name: p for p in (await db.execute(sa.select(Permission))).scalars()}
    grants = [
        {"role_id": roles[role].id, "permission_id": permissions[permission].id}
        for role, granted in ROLE_PERMISSIONS.items()
        for permission in granted
    ]
    await db.execute(
        insert(RolePermission)
        .values(grants)
        .on_conflict_do_nothing(index_elements=["role_id", "permission_id"])
    )
    return roles


async def _ensure_user(
    db: AsyncSession, *, email: str, name: str, password_hash: str, role: Role
) -> User:
    user = (
        await db.execute(sa.select(User).where(sa.func.lower(col(User.email)) == email.lower()))
    ).scalar_one_or_none()
    if user is None:
        user = User(email=email, name=name, password_hash=password_hash)
        db.add(user)
        await db.flush()
    await db.execute(
        insert(UserRole)
        .values(user_id=user.id, role_id=role.id)
        .on_conflict_do_nothing(index_elements=["user_id", "role_id"])
    )
    return user


async def _ensure_sample_project(db: AsyncSession, *, owner: User, member: User) -> bool:
    existing = (
        await db.execute(
            sa.select(Project).where(
                col(Project.name) == SAMPLE_PROJECT_NAME, col(Project.created_by_id) == owner.id
            )
        )
    ).scalar_one_or_none()
    if existing is not None:
        return False
    project = Project(
        name=SAMPLE_PROJECT_NAME, description="A place to try ATLAS.", created_by_id=owner.id
    )
    db.add(project)
    await db.flush()
    db.add_all(
        [
            ProjectMember(project_id=project.id, user_id=owner.id, role=ProjectRole.OWNER),
            ProjectMember(project_id=project.id, user_id=member.id, role=ProjectRole.MEMBER),
        ]
    )
    assistant = Assistant(
        name=SAMPLE_ASSISTANT_NAME,
        description="A helpful general assistant.",
        model="gpt-4o-mini",
        instructions="You are a concise, friendly assistant for the ATLAS workspace.",
        temperature=0.7,
        project_id=project.id,
        created_by_id=owner.id,
    )
    db.add(assistant)
    await db.flush()
    thread = Thread(
        title=SAMPLE_THREAD_TITLE,
        project_id=project.id,
        assistant_id=assistant.id,
        created_by_id=member.id,
    )
    db.add(thread)
    await db.flush()
    started = datetime.now(UTC)
    # A chain: each message follows the one before (the thread's one branch).
    parent_id: uuid.UUID | None = None
    for offset, (role, content) in enumerate(SAMPLE_MESSAGES):
        message = Message(
            thread_id=thread.id,
            parent_id=parent_id,
            user_id=member.id if role is MessageRole.USER else None,
            assistant_id=assistant.id if role is MessageRole.ASSISTANT else None,
            role=role,
            content=content,
            status=MessageStatus.COMPLETED,
            model=assistant.model if role is MessageRole.ASSISTANT else None,
            created_at=started + timedelta(milliseconds=offset),
        )
        db.add(message)
        parent_id = message.id
    thread.active_leaf_id = parent_id
    await db.flush()
    return True


async def seed(db: AsyncSession, *, settings: Settings) -> SeedReport:
    """Create what is missing of the seed, in the caller's transaction (the caller commits)."""
    validate_password(settings.atlas_seed_password, field="ATLAS_SEED_PASSWORD")
    # Serialise concurrent seeds (several workers starting at once).
    await db.execute(sa.text("SELECT pg_advisory_xact_lock(727274)"))
    roles = await _ensure_roles_and_permissions(db)
    password_hash = await asyncio.to_thread(hash_password_sync, settings.atlas_seed_password)
    users = {
        email: await _ensure_user(
            db, email=email, name=name, password_hash=password_hash, role=roles[role]
        )
        for email, name, role in SEED_USERS
    }
    created = await _ensure_sample_project(
        db, owner=users["pm@example.com"], member=users["user@example.com"]
    )
    return SeedReport(
        roles=len(roles), permissions=len(PermissionName), users=len(users), created_sample=created
    )


async def database_is_empty(db: AsyncSession) -> bool:
    """True when no user exists yet (`serve` seeds such a database)."""
    return (await db.execute(sa.select(sa.func.count()).select_from(User))).scalar_one() == 0
