"""Member changes decide under their lock (issue 10 part 4.2): two transactions on two
connections, ordered explicitly. The first makes its change and holds it uncommitted; the
second starts (its unlocked first check still sees the old roles) and is seen waiting for the
lock in `pg_stat_activity`; then the first commits. The second must decide with the roles as
they are now: a demoted OWNER loses, and the project never ends without an OWNER.
(Committed data in the live database: each case makes its own users and project.)"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlmodel import col

from atlas_gql.auth.actor import Actor
from atlas_gql.auth.models import PermissionName, RoleName, User
from atlas_gql.auth.viewer import Viewer
from atlas_gql.db.engine import create_engine
from atlas_gql.db.url import DatabaseTarget
from atlas_gql.errors import AtlasError, Conflict, Forbidden, NotFound
from atlas_gql.projects.members import MemberAdd, MemberUpdate, add_member, remove_member
from atlas_gql.projects.members import update_member as change_member
from atlas_gql.projects.models import Project, ProjectMember, ProjectRole
from atlas_gql.projects.projects import delete_project
from tests.live import wait_until

OWNER, MANAGER, MEMBER = ProjectRole.OWNER, ProjectRole.MANAGER, ProjectRole.MEMBER
Change = Callable[[AsyncSession], Awaitable[Any]]


@pytest.fixture
async def engine(live_database: DatabaseTarget) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(live_database, pool_size=4)
    yield engine
    await engine.dispose()


@dataclass
class Crew:
    project_id: uuid.UUID
    people: dict[str, uuid.UUID]

    def actor(self, name: str) -> Actor:
        viewer = Viewer(
            user_id=self.people[name],
            session_id=uuid.uuid4(),
            email=f"{name}@example.com",
            roles=frozenset({RoleName.USER}),
            permissions=frozenset({PermissionName.USE_AI}),
        )
        return Actor(viewer=viewer)


async def make_crew(engine: AsyncEngine, roles: dict[str, ProjectRole | None]) -> Crew:
    """A new project whose members hold `roles` (None: a user outside the project)."""
    people = {}
    async with AsyncSession(engine, expire_on_commit=False) as db:
        for name in roles:
            user = User(email=f"race-{name}-{uuid.uuid4().hex[:10]}@example.com", password_hash="x")
            db.add(user)
            await db.flush()
            people[name] = user.id
        project = Project(name="Race", created_by_id=next(iter(people.values())))
        db.add(project)
        await db.flush()
        for name, role in roles.items():
            if role is not None:
                db.add(ProjectMember(project_id=project.id, user_id=people[name], role=role))
        await db.commit()
    return Crew(project.id, people)


async def roles_now(engine: AsyncEngine, crew: Crew) -> dict[str, ProjectRole]:
    names = {user_id: name for name, user_id in crew.people.items()}
    async with AsyncSession(engine) as db:
        rows = await db.execute(
            sa.select(col(ProjectMember.user_id), col(ProjectMember.role)).where(
                col(ProjectMember.project_id) == crew.project_id
            )
        )
        return {names[user_id]: role for user_id, role in rows}


async def race(engine: AsyncEngine, first: Change, second: Change) -> AtlasError | None:
    """Run `first` and hold it uncommitted; start `second`, wait until it waits for a lock,
    commit `first`; the error `second` ended with (None: it went through and committed)."""
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    watcher_engine = engine.execution_options(isolation_level="AUTOCOMMIT")
    async with sessions() as one, sessions() as two, watcher_engine.connect() as watcher:
        await first(one)
        pid = (await two.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one()
        task: asyncio.Future[Any] = asyncio.ensure_future(second(two))

        async def waits_for_a_lock() -> bool:
            assert not task.done(), task  # it must not decide before `first` commits
            state = await watcher.execute(
                sa.text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid"),
                {"pid": pid},
            )
            return state.scalar_one_or_none() == "Lock"

        await wait_until(waits_for_a_lock)
        await one.commit()
        try:
            await task
        except AtlasError as error:
            await two.rollback()
            return error
        await two.commit()
        return None


def demote(crew: Crew, who: str, whom: str, role: ProjectRole = MANAGER) -> Change:
    return lambda db: change_member(
        db=db,
        actor=crew.actor(who),
        project_id=crew.project_id,
        user_id=crew.people[whom],
        data=MemberUpdate(role=role),
    )


def remove(crew: Crew, who: str, whom: str) -> Change:
    return lambda db: remove_member(
        db=db, actor=crew.actor(who), project_id=crew.project_id, user_id=crew.people[whom]
    )


def add(crew: Crew, who: str, whom: str, role: ProjectRole) -> Change:
    return lambda db: add_member(
        db=db,
        actor=crew.actor(who),
        project_id=crew.project_id,
        data=MemberAdd(user_id=crew.people[whom], role=role),
    )


async def test_a_demoted_owner_loses_the_race_to_demote_another_owner(engine: AsyncEngine) -> None:
    crew = await make_crew(engine, {"ann": OWNER, "bob": OWNER, "cid": OWNER})
    lost = await race(engine, demote(crew, "ann", "bob"), demote(crew, "bob", "cid"))
    assert isinstance(lost, Forbidden)
    assert await roles_now(engine, crew) == {"ann": OWNER, "bob": MANAGER, "cid": OWNER}


async def test_two_owners_demoting_each_other_leave_one_owner(engine: AsyncEngine) -> None:
    crew = await make_crew(engine, {"ann": OWNER, "bob": OWNER})
    lost = await race(engine, demote(crew, "ann", "bob"), demote(crew, "bob", "ann"))
    # Bob is a MANAGER by the time he decides: he may not touch an OWNER.
    assert isinstance(lost, Forbidden)
    assert await roles_now(engine, crew) == {"ann": OWNER, "bob": MANAGER}


@pytest.mark.parametrize(
    "second",
    [
        pytest.param(lambda crew: remove(crew, "bob", "cid"), id="removes an owner"),
        pytest.param(lambda crew: demote(crew, "bob", "dee", OWNER), id="grants owner"),
        pytest.param(lambda crew: add(crew, "bob", "eve", OWNER), id="adds an owner"),
    ],
)
async def test_a_demoted_owner_can_no_longer_act_as_one(
    engine: AsyncEngine, second: Callable[[Crew], Change]
) -> None:
    crew = await make_crew(
        engine, {"ann": OWNER, "bob": OWNER, "cid": OWNER, "dee": MEMBER, "eve": None}
    )
    lost = await race(engine, demote(crew, "ann", "bob"), second(crew))
    assert isinstance(lost, Forbidden)
    assert await roles_now(engine, crew) == {
        "ann": OWNER,
        "bob": MANAGER,
        "cid": OWNER,
        "dee": MEMBER,
    }


@pytest.mark.parametrize(
    "second",
    [
        pytest.param(lambda crew: demote(crew, "bob", "dee", ProjectRole.VIEWER), id="changes"),
        pytest.param(lambda crew: remove(crew, "bob", "dee"), id="removes"),
        pytest.param(lambda crew: add(crew, "bob", "eve", MEMBER), id="adds"),
    ],
)
async def test_a_demoted_manager_can_no_longer_manage_members(
    engine: AsyncEngine, second: Callable[[Crew], Change]
) -> None:
    crew = await make_crew(engine, {"ann": OWNER, "bob": MANAGER, "dee": MEMBER, "eve": None})
    lost = await race(engine, demote(crew, "ann", "bob", MEMBER), second(crew))
    assert isinstance(lost, Forbidden)
    assert await roles_now(engine, crew) == {"ann": OWNER, "bob": MEMBER, "dee": MEMBER}


async def test_a_removed_owner_can_no_longer_change_members(engine: AsyncEngine) -> None:
    crew = await make_crew(engine, {"ann": OWNER, "bob": OWNER, "dee": MEMBER})
    lost = await race(engine, remove(crew, "ann", "bob"), demote(crew, "bob", "dee", OWNER))
    assert isinstance(lost, NotFound)
    assert await roles_now(engine, crew) == {"ann": OWNER, "dee": MEMBER}


async def test_two_owners_leaving_at_once_leave_one(engine: AsyncEngine) -> None:
    crew = await make_crew(engine, {"ann": OWNER, "bob": OWNER})
    lost = await race(engine, remove(crew, "ann", "ann"), remove(crew, "bob", "bob"))
    assert isinstance(lost, Conflict)
    assert await roles_now(engine, crew) == {"bob": OWNER}


async def test_a_demoted_owner_cannot_delete_the_project(engine: AsyncEngine) -> None:
    crew = await make_crew(engine, {"ann": OWNER, "bob": OWNER})

    def delete(db: AsyncSession) -> Awaitable[None]:
        return delete_project(db=db, actor=crew.actor("bob"), project_id=crew.project_id)

    lost = await race(engine, demote(crew, "ann", "bob"), delete)
    assert isinstance(lost, Forbidden)
    assert await roles_now(engine, crew) == {"ann": OWNER, "bob": MANAGER}


async def test_the_winner_still_decides_alone(engine: AsyncEngine) -> None:
    """The lock does not refuse what is still allowed: an OWNER whose co-owner was promoted
    meanwhile still demotes a third one."""
    crew = await make_crew(engine, {"ann": OWNER, "bob": OWNER, "cid": OWNER, "dee": MEMBER})
    lost = await race(engine, demote(crew, "ann", "dee", OWNER), demote(crew, "bob", "cid"))
    assert lost is None
    assert await roles_now(engine, crew) == {
        "ann": OWNER,
        "bob": OWNER,
        "cid": MANAGER,
        "dee": OWNER,
    }
