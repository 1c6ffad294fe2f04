"""The one module of test factories (the habit of Polar's tests/fixtures/random_objects.py):
users with global roles, people signed in (a session and its access token), API keys, projects and
their members and settings, assistants, threads, messages, and log rows.

Every factory takes the session first, adds its row with sensible defaults (any column can
be given through keywords, e.g. `created_at=`), flushes, and returns the row. Factories never
commit: the caller's transaction (usually the test's rolled-back one) decides, except
`create_person`, whose session must be visible to the app's own sessions (see there).
Fixtures that bind a factory to a test's session live with the tests that use them."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from atlas_gql.ai.models import Assistant, Message, MessageRole, MessageStatus, Thread
from atlas_gql.auth.actor import Actor
from atlas_gql.auth.models import ApiKey, ApiKeyScope, Role, RoleName, User, UserRole
from atlas_gql.auth.passwords import hash_password
from atlas_gql.auth.sessions import load_viewer_for_session, start_session
from atlas_gql.auth.viewer import Viewer
from atlas_gql.config import Settings
from atlas_gql.ids import encode_global_id
from atlas_gql.logs.models import ActivityLog, ApiUsageLog, ErrorLog, ErrorSource
from atlas_gql.projects.models import Project, ProjectMember, ProjectRole, ProjectSetting

# bcrypt's cheapest cost: users that sign in with a password hash it once each.
TEST_BCRYPT_ROUNDS = 4


def unique_email(label: str, domain: str = "example.com") -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}@{domain}"


async def _saved(db: AsyncSession, row: Any) -> Any:
    db.add(row)
    await db.flush()
    return row


# -- auth ------------------------------------------------------------------------------------


async def role_id(db: AsyncSession, role: RoleName) -> uuid.UUID:
    """The id of a seeded global role."""
    found: uuid.UUID = (
        await db.execute(sa.select(col(Role.id)).where(col(Role.name) == role))
    ).scalar_one()
    return found


async def create_user(
    db: AsyncSession,
    *,
    roles: Iterable[RoleName] = (RoleName.USER,),
    label: str = "user",
    email: str | None = None,
    password: str | None = None,
    **fields: Any,
) -> User:
    """A user holding `roles`. Without `password` the hash matches no password (the user
    signs in through a session made by `create_person`, not with a password)."""
    password_hash = (
        await hash_password(password, rounds=TEST_BCRYPT_ROUNDS) if password else "not-a-hash"
    )
    user: User = await _saved(
        db, User(email=email or unique_email(label), password_hash=password_hash, **fields)
    )
    for role in roles:
        db.add(UserRole(user_id=user.id, role_id=await role_id(db, role)))
    await db.flush()
    return user


@dataclass
class Person:
    """A signed-in user: their row, an access token of their session, their Viewer."""

    user: User
    token: str
    viewer: Viewer

    @property
    def global_id(self) -> str:
        return encode_global_id("User", self.user.id)

    @property
    def actor(self) -> Actor:
        return Actor(viewer=self.viewer)


async def start_test_session(db: AsyncSession, settings: Settings, user: User) -> str:
    """A session of `user`; its access token."""
    tokens = await start_session(db=db, settings=settings, user_id=user.id)
    return tokens.access_token


async def create_person(
    db: AsyncSession, settings: Settings, role: RoleName = RoleName.USER, *, label: str = "person"
) -> Person:
    """A new user with the global `role`, signed in. Commits (in a test, the test's savepoint)
    so the session is visible to the app's own sessions, which read it per request."""
    user = await create_user(db, roles=(role,), label=label)
    tokens = await start_session(db=db, settings=settings, user_id=user.id)
    await db.commit()
    viewer = await load_viewer_for_session(db=db, user_id=user.id, session_id=tokens.session_id)
    assert viewer is not None
    return Person(user=user, token=tokens.access_token, viewer=viewer)


async def create_api_key(
    db: AsyncSession,
    user: User,
    scopes: Iterable[ApiKeyScope] = (ApiKeyScope.READ,),
    **fields: Any,
) -> ApiKey:
    """A key row of `user` with `scopes` (its secret is never known: for rules that take a
    key's id; `auth.apikeys.create_api_key` makes usable ones)."""
    key: ApiKey = await _saved(
        db,
        ApiKey(
            user_id=user.id,
            name="factory",
            prefix="atlas_sk_factory",
            secret_hash=uuid.uuid4().hex * 2,
            scopes=[scope.value for scope in scopes],
            **fields,
        ),
    )
    return key


# -- projects --------------------------------------------------------------------------------


async def create_project(
    db: AsyncSession,
    *,
    creator: User,
    members: Mapping[uuid.UUID, ProjectRole] | None = None,
    creator_joins: bool = True,
    **fields: Any,
) -> Project:
    """A project of `creator`, who joins it as OWNER (as `createProject` does) unless
    `creator_joins` is false; `members`: more people (user ids) and their roles."""
    fields.setdefault("name", f"Project {uuid.uuid4().hex[:6]}")
    project: Project = await _saved(db, Project(created_by_id=creator.id, **fields))
    joining = {creator.id: ProjectRole.OWNER} if creator_joins else {}
    for user_id, role in {**joining, **(members or {})}.items():
        db.add(ProjectMember(project_id=project.id, user_id=user_id, role=role))
    await db.flush()
    return project


async def add_member(
    db: AsyncSession, project: Project | uuid.UUID, user: User, role: ProjectRole, **fields: Any
) -> ProjectMember:
    """`user` joins `project` (a row or its id) with `role`."""
    project_id = project.id if isinstance(project, Project) else project
    member: ProjectMember = await _saved(
        db, ProjectMember(project_id=project_id, user_id=user.id, role=role, **fields)
    )
    return member


async def set_setting(db: AsyncSession, project: Project, key: str, value: Any) -> ProjectSetting:
    setting: ProjectSetting = await _saved(
        db, ProjectSetting(project_id=project.id, setting_key=key, value=value)
    )
    return setting


# -- ai --------------------------------------------------------------------------------------


async def create_assistant(
    db: AsyncSession, *, creator: User, project: Project | None = None, **fields: Any
) -> Assistant:
    fields.setdefault("name", "Assistant")
    fields.setdefault("model", "gpt-4o-mini")
    assistant: Assistant = await _saved(
        db,
        Assistant(created_by_id=creator.id, project_id=project.id if project else None, **fields),
    )
    return assistant


async def create_thread(
    db: AsyncSession,
    *,
    creator: User,
    project: Project | None = None,
    assistant: Assistant | None = None,
    **fields: Any,
) -> Thread:
    thread: Thread = await _saved(
        db,
        Thread(
            created_by_id=creator.id,
            project_id=project.id if project else None,
            assistant_id=assistant.id if assistant else None,
            **fields,
        ),
    )
    return thread


async def create_message(
    db: AsyncSession,
    *,
    thread: Thread,
    role: MessageRole = MessageRole.USER,
    status: MessageStatus = MessageStatus.COMPLETED,
    **fields: Any,
) -> Message:
    message: Message = await _saved(
        db, Message(thread_id=thread.id, role=role, status=status, **fields)
    )
    return message


# -- logs ------------------------------------------------------------------------------------


async def create_usage(
    db: AsyncSession,
    *,
    user: User | None,
    project: Project | None,
    created_at: datetime,
    model: str = "gpt-4o-mini",
    input_tokens: int = 10,
    output_tokens: int = 5,
    cost: str = "0.001000",
) -> ApiUsageLog:
    """One priced model call (an ApiUsageLog row)."""
    row: ApiUsageLog = await _saved(
        db,
        ApiUsageLog(
            user_id=user.id if user else None,
            project_id=project.id if project else None,
            model=model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=Decimal(cost),
            created_at=created_at,
        ),
    )
    return row


async def create_activity(
    db: AsyncSession,
    *,
    created_at: datetime,
    user: User | None = None,
    project: Project | None = None,
    action: str = "test.action",
    **fields: Any,
) -> ActivityLog:
    fields.setdefault("entity_type", "Test")
    fields.setdefault("entity_id", str(uuid.uuid4()))
    fields.setdefault("ip_address", "198.51.100.1")
    fields.setdefault("user_agent", "pytest")
    row: ActivityLog = await _saved(
        db,
        ActivityLog(
            user_id=user.id if user else None,
            project_id=project.id if project else None,
            action=action,
            created_at=created_at,
            **fields,
        ),
    )
    return row


async def create_error(
    db: AsyncSession,
    *,
    created_at: datetime,
    source: ErrorSource = ErrorSource.GRAPHQL,
    message: str = "boom",
    **fields: Any,
) -> ErrorLog:
    fields.setdefault("request_id", uuid.uuid4().hex)
    fields.setdefault("error_type", "builtins.RuntimeError")
    # A row of its own (logs/audit.py folds repeats of one fingerprint in one window).
    fields.setdefault("fingerprint", uuid.uuid4().hex)
    fields.setdefault("window_start", created_at)
    fields.setdefault("last_seen_at", created_at)
    row: ErrorLog = await _saved(
        db, ErrorLog(source=source, message=message, created_at=created_at, **fields)
    )
    return row
