"""Fixtures of the projects tests: people with a global role and a signed-in session, and
GraphQL documents shared by the test modules."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from atlas_gql.auth.models import RoleName
from atlas_gql.config import Settings
from tests.factories import Person, create_person


@pytest.fixture
def make_person(db: AsyncSession, settings: Settings) -> Any:
    """`await make_person(RoleName.PROJECT_MANAGER)` -> a new user with that global role, a
    session (access token) and their Viewer (tests/factories.py, `create_person`)."""

    async def make(role: RoleName = RoleName.USER, *, label: str = "person") -> Person:
        return await create_person(db, settings, role, label=label)

    return make


CREATE_PROJECT = """
mutation ($input: CreateProjectInput!) {
  createProject(input: $input) { id name description viewerRole createdBy { email } }
}"""

PROJECT = """
query ($id: ID!) {
  project(id: $id) {
    id name viewerRole members { totalCount edges { node { role user { email } } } }
  }
}"""

UPDATE_PROJECT = """
mutation ($id: ID!, $input: UpdateProjectInput!) {
  updateProject(id: $id, input: $input) { id name description }
}"""

ADD_MEMBER = """
mutation ($projectId: ID!, $userId: ID!, $role: ProjectRole!) {
  addProjectMember(projectId: $projectId, userId: $userId, role: $role) {
    id role user { email } project { name }
  }
}"""

UPDATE_MEMBER = """
mutation ($projectId: ID!, $userId: ID!, $role: ProjectRole!) {
  updateProjectMember(projectId: $projectId, userId: $userId, role: $role) { id role }
}"""

REMOVE_MEMBER = """
mutation ($projectId: ID!, $userId: ID!) {
  removeProjectMember(projectId: $projectId, userId: $userId)
}"""

SET_SETTING = """
mutation ($projectId: ID!, $key: String!, $value: JSON!) {
  setProjectSetting(projectId: $projectId, key: $key, value: $value) { key value updatedAt }
}"""

DELETE_SETTING = """
mutation ($projectId: ID!, $key: String!) {
  deleteProjectSetting(projectId: $projectId, key: $key) { id settings { key } }
}
"""

DELETE_PROJECT = "mutation ($id: ID!) { deleteProject(id: $id) }"


async def create_project(
    gql: Any, person: Person, name: str, description: str | None = None
) -> str:
    """Create a project through the API as `person`; its global id."""
    body = await gql(
        CREATE_PROJECT, {"input": {"name": name, "description": description}}, token=person.token
    )
    assert "errors" not in body, body
    project_id: str = body["data"]["createProject"]["id"]
    return project_id
