"""Field-level visibility (issue 10 part 12), the same on both paths: another user's global
roles and permissions answer `[]` except to themselves and holders of MANAGE_USERS (co-members
see name and email); an assistant's instructions answer null to those who may not change it,
wherever the assistant is reached (a thread, the list, node)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.graph.compiled.conftest import Both, Served
from tests.graph.compiled.test_served import same_over_http

MEMBERS = """query ($id: ID!) { project(id: $id) { members(first: 20) { nodes {
  user { email name roles { name } permissions } } } } }"""
CREATOR = """query ($id: ID!) { thread(id: $id) { createdBy { email name roles { name }
  permissions } assistant { name instructions } } }"""
ACTIVITY = "{ activityLogs { nodes { action user { email roles { name } permissions } } } }"


def users_by_email(data: Any) -> dict[str, Any]:
    nodes = data["project"]["members"]["nodes"]
    return {node["user"]["email"]: node["user"] for node in nodes}


@pytest.mark.parametrize("path", ["resolvers", "compiled"])
async def test_co_members_see_name_and_email_not_roles(
    both: Both, served: Served, path: str
) -> None:
    world = both.world
    variables = {"id": world.gid("Project", world.projects["alpha"].id)}
    app = both if path == "resolvers" else served
    token = both.token("member")
    response = await app.client.post(
        "/graphql",
        json={"query": MEMBERS, "variables": variables},
        headers={"Authorization": f"Bearer {token}"},
    )
    users = users_by_email(response.json()["data"])
    mine = users.pop(world.users["member"].email)
    assert mine["roles"] == [{"name": "USER"}]
    assert mine["permissions"] == ["USE_AI"]
    owner = users[world.users["owner"].email]
    assert owner["name"] == "Olga Owner"
    for user in users.values():
        assert user["roles"] == []
        assert user["permissions"] == []


async def test_holders_of_manage_users_see_everyone_s_roles(both: Both, served: Served) -> None:
    world = both.world
    variables = {"id": world.gid("Project", world.projects["alpha"].id)}
    data = await same_over_http(both, served, MEMBERS, variables, "admin")
    users = users_by_email(data["data"])
    assert users[world.users["owner"].email]["roles"] == [
        {"name": "PROJECT_MANAGER"},
        {"name": "USER"},
    ]
    assert "CREATE_PROJECT" in users[world.users["owner"].email]["permissions"]


@pytest.mark.parametrize("viewer", ["admin", "owner", "manager", "member", "viewer"])
async def test_thread_creator_and_assistant_instructions(
    both: Both, served: Served, viewer: str
) -> None:
    world = both.world
    # alpha-2: started by the owner, answered by the member's *personal* assistant.
    variables = {"id": world.gid("Thread", world.threads["alpha-2"].id)}
    data = (await same_over_http(both, served, CREATOR, variables, viewer))["data"]["thread"]
    creator, assistant = data["createdBy"], data["assistant"]
    assert creator["email"] == world.users["owner"].email
    sees_roles = viewer in ("admin", "owner")
    assert bool(creator["roles"]) is sees_roles
    assert bool(creator["permissions"]) is sees_roles
    assert assistant["name"] == "Member's own"
    # No instructions stored on that one; the shared one (alpha-1) has some.
    shared = {"id": world.gid("Thread", world.threads["alpha-1"].id)}
    shared_data = (await same_over_http(both, served, CREATOR, shared, viewer))["data"]
    instructions = shared_data["thread"]["assistant"]["instructions"]
    # The shared assistant: its creator (the manager), MANAGER+ of alpha, ADMIN.
    may_change = viewer in ("admin", "owner", "manager")
    assert instructions == ("Be kind." if may_change else None), viewer


async def test_activity_rows_show_their_users_roles_to_manage_users_only(
    both: Both, served: Served
) -> None:
    for viewer, sees in (("admin", True), ("owner", False), ("manager", False)):
        data = (await same_over_http(both, served, ACTIVITY, None, viewer))["data"]
        nodes = data["activityLogs"]["nodes"]
        assert nodes, viewer
        for node in nodes:
            user = node["user"]
            mine = user["email"] == both.world.users[viewer].email
            assert bool(user["roles"]) is (sees or mine), (viewer, node)
