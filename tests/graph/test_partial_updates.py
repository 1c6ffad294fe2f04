"""One partial-update rule for every update input: a field left out stays as it is, an explicit
null clears a nullable field, and null for a field that cannot be empty is BAD_USER_INPUT naming
the field (in a literal or in a variable alike), with nothing changed."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.conftest import GraphQLClient, error_codes

PROJECT = "id name description"
ASSISTANT = "id name model instructions temperature description"
THREAD = "id title"
USER = "id name isActive"


async def create(gql: GraphQLClient, token: str, mutation: str, name: str) -> dict[str, Any]:
    body = await gql(mutation, token=token)
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"][name]
    return data


@pytest.fixture
async def objects(gql: GraphQLClient, sign_in: Any) -> dict[str, Any]:
    """An admin's token, and a project, an assistant, a thread and a user to update."""
    token = await sign_in("admin@example.com")
    project = await create(
        gql,
        token,
        f'mutation {{ createProject(input: {{name: "P", description: "D"}}) {{ {PROJECT} }} }}',
        "createProject",
    )
    assistant = await create(
        gql,
        token,
        'mutation { createAssistant(input: {name: "A", instructions: "Be brief.", '
        f'temperature: 0.5, description: "For tests"}}) {{ {ASSISTANT} }} }}',
        "createAssistant",
    )
    thread = await create(
        gql,
        token,
        f'mutation {{ createThread(input: {{assistantId: "{assistant["id"]}", title: "T"}}) '
        f"{{ {THREAD} }} }}",
        "createThread",
    )
    email = f"partial-{uuid.uuid4().hex[:8]}@example.com"
    user = await create(
        gql,
        token,
        f'mutation {{ createUser(input: {{email: "{email}", password: "long-enough-1", '
        f'name: "U"}}) {{ {USER} }} }}',
        "createUser",
    )
    return {
        "token": token,
        "project": project,
        "assistant": assistant,
        "thread": thread,
        "user": user,
    }


# (mutation, object key, selection, a nullable field and its cleared value, a field that
# cannot be null)
CASES = {
    "updateProject": ("project", PROJECT, ("description", None), "name"),
    "updateAssistant": ("assistant", ASSISTANT, ("description", None), "model"),
    "updateThread": ("thread", THREAD, ("title", None), None),
    "updateUser": ("user", USER, ("name", None), "isActive"),
}


def update(mutation: str, selection: str) -> str:
    input_type = "Update" + mutation.removeprefix("update") + "Input"
    return (
        f"mutation($id: ID!, $input: {input_type}!) {{ "
        f"{mutation}(id: $id, input: $input) {{ {selection} }} }}"
    )


@pytest.mark.parametrize("mutation", list(CASES))
async def test_an_empty_input_changes_nothing(
    gql: GraphQLClient, objects: dict[str, Any], mutation: str
) -> None:
    key, selection, _, _ = CASES[mutation]
    before = objects[key]
    variables = {"id": before["id"], "input": {}}
    body = await gql(update(mutation, selection), variables, token=objects["token"])
    assert "errors" not in body, body
    assert body["data"][mutation] == before


@pytest.mark.parametrize("mutation", list(CASES))
async def test_an_explicit_null_clears_a_nullable_field_and_only_it(
    gql: GraphQLClient, objects: dict[str, Any], mutation: str
) -> None:
    key, selection, (field, cleared), _ = CASES[mutation]
    before = objects[key]
    assert before[field] is not None
    variables = {"id": before["id"], "input": {field: None}}
    body = await gql(update(mutation, selection), variables, token=objects["token"])
    assert "errors" not in body, body
    assert body["data"][mutation] == {**before, field: cleared}


@pytest.mark.parametrize("literal", [True, False], ids=["literal", "variable"])
@pytest.mark.parametrize("mutation", [name for name, case in CASES.items() if case[3]])
async def test_null_for_a_field_that_cannot_be_empty_is_refused_naming_it(
    gql: GraphQLClient, objects: dict[str, Any], mutation: str, literal: bool
) -> None:
    key, selection, _, not_null = CASES[mutation]
    before = objects[key]
    token = objects["token"]
    if literal:
        arguments = f'id: "{before["id"]}", input: {{{not_null}: null}}'
        body = await gql(f"mutation {{ {mutation}({arguments}) {{ {selection} }} }}", token=token)
    else:
        variables = {"id": before["id"], "input": {not_null: None}}
        body = await gql(update(mutation, selection), variables, token=token)
    assert body["data"] == {mutation: None}
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert body["errors"][0]["extensions"]["field"] == not_null
    assert not_null in body["errors"][0]["message"]
    variables = {"id": before["id"], "input": {}}
    unchanged = await gql(update(mutation, selection), variables, token=token)
    assert unchanged["data"][mutation] == before


async def test_update_thread_without_a_title_keeps_it(
    gql: GraphQLClient, objects: dict[str, Any]
) -> None:
    """Issue 11: `updateThread(input: {})` used to clear the title."""
    thread = objects["thread"]
    body = await gql(
        f'mutation {{ updateThread(id: "{thread["id"]}", input: {{}}) {{ title }} }}',
        token=objects["token"],
    )
    assert body["data"]["updateThread"] == {"title": "T"}
    # A variable left out of the input object is a field left out.
    body = await gql(
        "mutation($id: ID!, $title: String) { updateThread(id: $id, input: {title: $title}) "
        "{ title } }",
        {"id": thread["id"]},
        token=objects["token"],
    )
    assert body["data"]["updateThread"] == {"title": "T"}


# The update inputs the cases above exercise; a new one must be added there (and here).
COVERED_UPDATE_INPUTS = {
    "UpdateProjectInput",
    "UpdateAssistantInput",
    "UpdateThreadInput",
    "UpdateUserInput",
}


def test_every_update_input_distinguishes_omitted_from_null() -> None:
    """Issue 12 part 6: every `update*(id:, input:)` takes an input whose fields are all
    optional without a default (strawberry.Maybe): omitted and null stay distinct."""
    from graphql import GraphQLInputObjectType, GraphQLNonNull, Undefined

    from atlas_gql.graph.schema import build_schema

    schema = build_schema()._schema
    mutation = schema.mutation_type
    assert mutation is not None
    inputs = set()
    for name, field in mutation.fields.items():
        if not name.startswith("update") or "input" not in field.args:
            continue
        input_type = field.args["input"].type
        input_type = input_type.of_type if isinstance(input_type, GraphQLNonNull) else input_type
        assert isinstance(input_type, GraphQLInputObjectType)
        inputs.add(input_type.name)
        for field_name, input_field in input_type.fields.items():
            where = f"{input_type.name}.{field_name}"
            assert not isinstance(input_field.type, GraphQLNonNull), where
            assert input_field.default_value is Undefined, f"{where} has a default"
    assert inputs == COVERED_UPDATE_INPUTS
