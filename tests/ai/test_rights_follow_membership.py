"""Rights follow membership (issue 10 part 4.1): having created a thread or a shared assistant
gives rights in a project only while its creator holds a current role there. Every role
transition is tried, made through the API by the project's OWNER, then every creator right.
(ASGI app, rolled-back transaction; replies that run are in test_rights_live.py.)"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from atlas_gql.ai.models import Assistant, Thread
from atlas_gql.config import Settings
from atlas_gql.ids import decode_id_of
from atlas_gql.projects.models import ProjectRole
from tests.conftest import GraphQLClient, error_codes
from tests.factories import create_person

ROLES = list(ProjectRole)
REMOVED = None  # the last "role": no longer a member

CREATE_PROJECT = 'mutation { createProject(input: {name: "Rights"}) { id } }'
ADD = (
    "mutation($p: ID!, $u: ID!, $r: ProjectRole!) "
    "{ addProjectMember(projectId: $p, userId: $u, role: $r) { role } }"
)
UPDATE = (
    "mutation($p: ID!, $u: ID!, $r: ProjectRole!) "
    "{ updateProjectMember(projectId: $p, userId: $u, role: $r) { role } }"
)
REMOVE = "mutation($p: ID!, $u: ID!) { removeProjectMember(projectId: $p, userId: $u) }"
CREATE_ASSISTANT = """
mutation($p: ID) {
  createAssistant(input: {name: "Team helper", instructions: "Be kind.", projectId: $p}) { id }
}"""
UPDATE_ASSISTANT = """
mutation($id: ID!) {
  updateAssistant(id: $id, input: {name: "Hijacked", instructions: "Be evil.",
    model: "gpt-4.1-mini"}) { name instructions }
}"""
DELETE_ASSISTANT = "mutation($id: ID!) { deleteAssistant(id: $id) }"
CREATE_THREAD = """
mutation($p: ID, $a: ID!) {
  createThread(input: {projectId: $p, assistantId: $a, title: "Mine"}) { id }
}"""
RENAME_THREAD = 'mutation($id: ID!) { updateThread(id: $id, input: {title: "Renamed"}) { title } }'
DELETE_THREAD = "mutation($id: ID!) { deleteThread(id: $id) }"
SEND = """
mutation($id: ID!) {
  sendMessage(input: {threadId: $id, content: "Still mine?"}) { userMessage { id } }
}"""
READ_THREAD = "query($id: ID!) { thread(id: $id) { title } }"
NODE = "query($id: ID!) { node(id: $id) { id } }"


@dataclass
class Team:
    """A fresh project: its OWNER (the project manager who created it) and a creator to demote."""

    project: str
    owner: str
    creator: str
    creator_id: str
    manager: str


@pytest.fixture
def new_user(db: AsyncSession, settings: Settings) -> Any:
    """`await new_user()` -> (token, global id) of a new USER (who has USE_AI)."""

    async def make() -> tuple[str, str]:
        person = await create_person(db, settings, label="r")
        return person.token, person.global_id

    return make


async def data(gql: GraphQLClient, query: str, variables: dict[str, Any], token: str) -> Any:
    body = await gql(query, variables, token=token)
    assert "errors" not in body, body
    return body["data"]


@pytest.fixture
def team(gql: GraphQLClient, sign_in: Any, new_user: Any) -> Any:
    """`await team(role)` -> a new project where the creator starts with `role`."""

    async def make(role: ProjectRole) -> Team:
        owner = await sign_in("pm@example.com")
        project = (await data(gql, CREATE_PROJECT, {}, owner))["createProject"]["id"]
        creator, creator_id = await new_user()
        manager, manager_id = await new_user()
        for user_id, member_role in ((creator_id, role), (manager_id, ProjectRole.MANAGER)):
            await data(gql, ADD, {"p": project, "u": user_id, "r": member_role.value}, owner)
        return Team(project, owner, creator, creator_id, manager)

    return make


async def move(gql: GraphQLClient, team: Team, role: ProjectRole | None) -> None:
    """The OWNER changes the creator's role (None: removes them)."""
    if role is None:
        await data(gql, REMOVE, {"p": team.project, "u": team.creator_id}, team.owner)
    else:
        await data(
            gql, UPDATE, {"p": team.project, "u": team.creator_id, "r": role.value}, team.owner
        )


def expected(role: ProjectRole | None, *, needs: set[ProjectRole]) -> str | None:
    """What a right answers after the transition: None (granted), FORBIDDEN (still a member who
    sees it, below the role) or NOT_FOUND (removed: the project's content does not exist)."""
    if role is None:
        return "NOT_FOUND"
    return None if role in needs else "FORBIDDEN"


def transitions(starts: list[ProjectRole]) -> list[tuple[ProjectRole, ProjectRole | None]]:
    return [(start, end) for start in starts for end in [*ROLES, REMOVED] if end != start]


def label(transition: tuple[ProjectRole, ProjectRole | None]) -> str:
    start, end = transition
    return f"{start.value}->{end.value if end else 'removed'}"


MEMBER_PLUS = {ProjectRole.OWNER, ProjectRole.MANAGER, ProjectRole.MEMBER}
MANAGER_PLUS = {ProjectRole.OWNER, ProjectRole.MANAGER}
THREAD_TRANSITIONS = transitions([ProjectRole.MEMBER, ProjectRole.MANAGER, ProjectRole.OWNER])
ASSISTANT_TRANSITIONS = transitions([ProjectRole.MANAGER, ProjectRole.OWNER])


@pytest.mark.parametrize("transition", THREAD_TRANSITIONS, ids=label)
async def test_a_thread_creator_keeps_rights_only_while_member(
    gql: GraphQLClient, team: Any, db: AsyncSession, transition: Any
) -> None:
    start, end = transition
    crew: Team = await team(start)
    assistant = (await data(gql, CREATE_ASSISTANT, {"p": crew.project}, crew.manager))[
        "createAssistant"
    ]["id"]
    thread = (await data(gql, CREATE_THREAD, {"p": crew.project, "a": assistant}, crew.creator))[
        "createThread"
    ]["id"]

    await move(gql, crew, end)

    outcome = expected(end, needs=MEMBER_PLUS)
    # Removed, the creator no longer sees the thread (`thread(id:)` answers null).
    reading = await data(gql, READ_THREAD, {"id": thread}, crew.creator)
    assert reading["thread"] == (None if end is None else {"title": "Mine"})
    renamed = await gql(RENAME_THREAD, {"id": thread}, token=crew.creator)
    assert error_codes(renamed) == ([outcome] if outcome else [])
    if outcome is not None:
        # Refused before anything upstream or stored: posting needs MEMBER+ too.
        assert error_codes(await gql(SEND, {"id": thread}, token=crew.creator)) == [outcome]
    deleted = await gql(DELETE_THREAD, {"id": thread}, token=crew.creator)
    assert error_codes(deleted) == ([outcome] if outcome else [])
    stored = await db.get(Thread, decode_id_of(thread, "Thread"), populate_existing=True)
    if outcome is None:
        assert stored is None
    else:
        assert stored is not None
        assert stored.title == "Mine"
        # A manager of the project still manages it.
        assert error_codes(await gql(RENAME_THREAD, {"id": thread}, token=crew.manager)) == []


@pytest.mark.parametrize("transition", ASSISTANT_TRANSITIONS, ids=label)
async def test_a_shared_assistant_creator_keeps_rights_only_while_manager(
    gql: GraphQLClient, team: Any, db: AsyncSession, transition: Any
) -> None:
    start, end = transition
    crew: Team = await team(start)
    assistant = (await data(gql, CREATE_ASSISTANT, {"p": crew.project}, crew.creator))[
        "createAssistant"
    ]["id"]
    before = await db.get(Assistant, decode_id_of(assistant, "Assistant"))
    assert before is not None
    model = before.model
    assert model != "gpt-4.1-mini"

    await move(gql, crew, end)

    outcome = expected(end, needs=MANAGER_PLUS)
    seen = await gql(NODE, {"id": assistant}, token=crew.creator)
    assert seen["data"]["node"] == (None if end is None else {"id": assistant})
    updated = await gql(UPDATE_ASSISTANT, {"id": assistant}, token=crew.creator)
    assert error_codes(updated) == ([outcome] if outcome else [])
    row = await db.get(Assistant, decode_id_of(assistant, "Assistant"), populate_existing=True)
    assert row is not None
    if outcome is None:
        assert (row.name, row.instructions, row.model) == ("Hijacked", "Be evil.", "gpt-4.1-mini")
    else:
        # Nothing written: neither the instructions nor the model.
        assert (row.name, row.instructions, row.model) == ("Team helper", "Be kind.", model)
    deleted = await gql(DELETE_ASSISTANT, {"id": assistant}, token=crew.creator)
    assert error_codes(deleted) == ([outcome] if outcome else [])
    still = await db.get(Assistant, decode_id_of(assistant, "Assistant"), populate_existing=True)
    assert (still is None) == (outcome is None)
    if outcome is not None:
        # The project's managers keep it.
        assert (await data(gql, DELETE_ASSISTANT, {"id": assistant}, crew.manager)) == {
            "deleteAssistant": assistant
        }


async def test_rights_come_back_with_a_role_again(gql: GraphQLClient, team: Any) -> None:
    """Rights are read from the current membership on every check: removed, then added back
    as MEMBER, the creator renames their thread again."""
    crew: Team = await team(ProjectRole.MEMBER)
    assistant = (await data(gql, CREATE_ASSISTANT, {"p": crew.project}, crew.manager))[
        "createAssistant"
    ]["id"]
    thread = (await data(gql, CREATE_THREAD, {"p": crew.project, "a": assistant}, crew.creator))[
        "createThread"
    ]["id"]
    await move(gql, crew, None)
    assert error_codes(await gql(RENAME_THREAD, {"id": thread}, token=crew.creator)) == [
        "NOT_FOUND"
    ]
    await data(gql, ADD, {"p": crew.project, "u": crew.creator_id, "r": "VIEWER"}, crew.owner)
    assert error_codes(await gql(RENAME_THREAD, {"id": thread}, token=crew.creator)) == [
        "FORBIDDEN"
    ]
    await move(gql, crew, ProjectRole.MEMBER)
    renamed = await data(gql, RENAME_THREAD, {"id": thread}, crew.creator)
    assert renamed == {"updateThread": {"title": "Renamed"}}


async def test_personal_assistants_and_threads_stay_their_creators(
    gql: GraphQLClient, team: Any
) -> None:
    """Outside any project, the creator's rights do not depend on a project: removed from a
    project where they used their personal assistant, they still change and delete it, and
    their personal thread."""
    crew: Team = await team(ProjectRole.MEMBER)
    personal = (await data(gql, CREATE_ASSISTANT, {"p": None}, crew.creator))["createAssistant"][
        "id"
    ]
    in_project = (await data(gql, CREATE_THREAD, {"p": crew.project, "a": personal}, crew.creator))[
        "createThread"
    ]["id"]
    own = (await data(gql, CREATE_THREAD, {"p": None, "a": personal}, crew.creator))[
        "createThread"
    ]["id"]
    await move(gql, crew, None)
    assert error_codes(await gql(RENAME_THREAD, {"id": in_project}, token=crew.creator)) == [
        "NOT_FOUND"
    ]
    assert (await data(gql, RENAME_THREAD, {"id": own}, crew.creator)) == {
        "updateThread": {"title": "Renamed"}
    }
    updated = await data(gql, UPDATE_ASSISTANT, {"id": personal}, crew.creator)
    assert updated["updateAssistant"]["instructions"] == "Be evil."
    # Other people, managers of the project included, never change a personal assistant.
    assert error_codes(await gql(UPDATE_ASSISTANT, {"id": personal}, token=crew.manager)) == [
        "NOT_FOUND"
    ]
    assert (await data(gql, DELETE_ASSISTANT, {"id": personal}, crew.creator)) == {
        "deleteAssistant": personal
    }
