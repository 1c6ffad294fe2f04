"""An assistant's creator who left its project sees neither the project nor the assistant it
shares (rights follow membership, docs/security.md)."""

from __future__ import annotations

from typing import Any

from tests.conftest import GraphQLClient

ME = "{ me { id } }"


async def test_a_shared_assistant_is_gone_for_its_creator_once_removed(
    gql: GraphQLClient, sign_in: Any
) -> None:
    pm = await sign_in("pm@example.com")
    user = await sign_in("user@example.com")
    project = await gql(
        'mutation { createProject(input: {name: "Secret plans"}) { id } }', token=pm
    )
    project_id = project["data"]["createProject"]["id"]
    user_id = (await gql(ME, token=user))["data"]["me"]["id"]
    added = await gql(
        "mutation($p: ID!, $u: ID!) { addProjectMember(projectId: $p, userId: $u, role: MANAGER)"
        " { role } }",
        {"p": project_id, "u": user_id},
        token=pm,
    )
    assert added["data"]["addProjectMember"]["role"] == "MANAGER"
    created = await gql(
        'mutation($p: ID!) { createAssistant(input: {name: "Helper", model: "gpt-4o-mini",'
        " projectId: $p}) { id project { name } } }",
        {"p": project_id},
        token=user,
    )
    assistant = created["data"]["createAssistant"]
    assert assistant["project"] == {"name": "Secret plans"}
    removed = await gql(
        "mutation($p: ID!, $u: ID!) { removeProjectMember(projectId: $p, userId: $u) }",
        {"p": project_id, "u": user_id},
        token=pm,
    )
    assert removed["data"]["removeProjectMember"] is not None
    seen = await gql(
        "query($id: ID!) { node(id: $id) { ... on Assistant { name project { name } } } }",
        {"id": assistant["id"]},
        token=user,
    )
    assert seen["data"]["node"] is None
    listed = await gql("{ assistants(first: 100) { edges { node { id } } } }", token=user)
    assert assistant["id"] not in [e["node"]["id"] for e in listed["data"]["assistants"]["edges"]]
    changed = await gql(
        'mutation($id: ID!) { updateAssistant(id: $id, input: {name: "Mine"}) { id } }',
        {"id": assistant["id"]},
        token=user,
    )
    assert [e["extensions"]["code"] for e in changed["errors"]] == ["NOT_FOUND"]
