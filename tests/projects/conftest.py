"""Fixtures of the projects tests: people with a global role and a signed-in session, and
GraphQL documents shared by the test modules."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from atlas_gql.auth.actor import Actor
from atlas_gql.auth.models import Role, RoleName, User, UserRole
from atlas_gql.auth.sessions import load_viewer_for_session, start_session
from atlas_gql.auth.viewer import Viewer
from atlas_gql.config import Settings
from atlas_gql.ids import encode_global_id


@dataclass
class Person:
    user: User
    token: str
    viewer: Viewer

    @property
    def global_id(self) -> str:
        return encode_global_id("User", self.user.id)

    @property
    def actor(self) -> Actor:
        return Actor(viewer=self.viewer)


@pytest.fixture
def make_person(db: AsyncSession, settings: Settings) -> Any:
    """`await make_person(RoleName.PROJECT_MANAGER)` -> a new user with that global role, a
    session (access token) and their Viewer (inside the test's rolled-back transaction)."""

    async def make(role: RoleName = RoleName.USER, *, label: str = "person") -> Person:
        user = User(email=f"{label}-{uuid.uuid4().hex[:8]}@example.com", password_hash="x")
        db.add(user)
        await db.flush()
        role_id = (
            await db.execute(sa.select(col(Role.id)).where(col(Role.name) == role))
        ).scalar_one()
        db.add(UserRole(user_id=user.id, role_id=role_id))
        tokens = await start_session(db=db, settings=settings, user_id=user.id)
        await db.commit()
        viewer = await load_viewer_for_session(db=db, user_id=user.id, session_id=tokens.session_id)
        assert viewer is not None
        return Person(user=user, token=tokens.access_token, viewer=viewer)

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
