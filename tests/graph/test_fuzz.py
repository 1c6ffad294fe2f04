"""Issue 10 part 6: property-based fuzzing of the whole schema. hypothesis-graphql generates
documents for every query and mutation (valid ones, and ones with one schema violation),
with literal arguments or with the root field's arguments lifted into variables; each is
sent over HTTP to the real ASGI app as an anonymous, a signed-in and an administrator
viewer. No answer may be a 5xx or carry INTERNAL_SERVER_ERROR, and every error has a code.

Bounded in the suite (FUZZ_EXAMPLES examples per viewer, 60 by default: about a minute in
all); `make fuzz` runs many more (FUZZ_EXAMPLES=2000 by default there). A failure prints the
document and variables that caused it; fix the code, then keep the case in
tests/graph/test_input_sanitising.py or beside its feature."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import httpx
import pytest
from graphql import (
    ArgumentNode,
    BooleanValueNode,
    DocumentNode,
    FieldNode,
    FloatValueNode,
    IntValueNode,
    ListValueNode,
    NameNode,
    NullValueNode,
    ObjectFieldNode,
    ObjectValueNode,
    OperationDefinitionNode,
    StringValueNode,
    ValueNode,
    VariableDefinitionNode,
    VariableNode,
    parse,
    parse_type,
    print_ast,
    value_from_ast_untyped,
)
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis_graphql import Mode, from_schema
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from atlas_gql.app import create_app
from atlas_gql.auth.account import find_user_by_email
from atlas_gql.auth.sessions import start_session
from atlas_gql.config import Settings
from atlas_gql.db.engine import create_engine
from atlas_gql.db.url import DatabaseTarget
from atlas_gql.graph.schema import build_schema
from tests.ai.fake_openai import FakeOpenAI
from tests.conftest import make_settings, migrated_and_seeded

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES") or 60)
SCHEMA = build_schema()._schema

names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,8}", fullmatch=True)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**31), max_value=2**31 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(names, children, max_size=3),
    max_leaves=8,
)


def as_value_node(value: Any) -> ValueNode:
    """A JSON value as a GraphQL literal."""
    if value is None:
        return NullValueNode()
    if isinstance(value, bool):
        return BooleanValueNode(value=value)
    if isinstance(value, int):
        return IntValueNode(value=str(value))
    if isinstance(value, float):
        return FloatValueNode(value=repr(value))
    if isinstance(value, str):
        return StringValueNode(value=value)
    if isinstance(value, list):
        return ListValueNode(values=tuple(as_value_node(item) for item in value))
    return ObjectValueNode(
        fields=tuple(
            ObjectFieldNode(name=NameNode(value=key), value=as_value_node(item))
            for key, item in value.items()
        )
    )


def string_node(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[ValueNode]:
    return strategy.map(lambda text: StringValueNode(value=text))


CUSTOM_SCALARS: dict[str, st.SearchStrategy[ValueNode]] = {
    "DateTime": string_node(
        st.datetimes(timezones=st.just(UTC)).map(lambda moment: moment.isoformat())
        | st.datetimes().map(lambda moment: moment.isoformat())
        | st.text(max_size=30)
    ),
    "JSON": json_values.map(as_value_node),
    # Only a multipart request carries a file: over JSON, any value is a client error.
    "Upload": string_node(st.text(max_size=10)),
}


def lift_root_arguments(document: DocumentNode) -> tuple[DocumentNode, dict[str, Any]]:
    """The document with each root field's argument literals moved into variables."""
    operation = document.definitions[0]
    assert isinstance(operation, OperationDefinitionNode)
    root = SCHEMA.get_root_type(operation.operation)
    assert root is not None
    definitions: list[VariableDefinitionNode] = []
    variables: dict[str, Any] = {}
    selections = []
    for selection in operation.selection_set.selections:
        if not isinstance(selection, FieldNode) or selection.name.value not in root.fields:
            selections.append(selection)
            continue
        field = root.fields[selection.name.value]
        arguments = []
        for argument in selection.arguments or ():
            if argument.name.value not in field.args:
                arguments.append(argument)
                continue
            name = f"v{len(definitions)}"
            type_node = parse_type(str(field.args[argument.name.value].type))
            definitions.append(
                VariableDefinitionNode(
                    variable=VariableNode(name=NameNode(value=name)), type=type_node, directives=()
                )
            )
            variables[name] = value_from_ast_untyped(argument.value)
            arguments.append(
                ArgumentNode(name=argument.name, value=VariableNode(name=NameNode(value=name)))
            )
        selections.append(
            FieldNode(
                alias=selection.alias,
                name=selection.name,
                arguments=tuple(arguments),
                directives=selection.directives,
                selection_set=selection.selection_set,
            )
        )
    lifted = OperationDefinitionNode(
        operation=operation.operation,
        name=operation.name,
        variable_definitions=tuple(definitions),
        directives=operation.directives,
        selection_set=type(operation.selection_set)(selections=tuple(selections)),
    )
    return DocumentNode(definitions=(lifted,)), variables


def documents(mode: Mode) -> st.SearchStrategy[Any]:
    return from_schema(SCHEMA, custom_scalars=CUSTOM_SCALARS, mode=mode, print_ast=lambda d: d)


requests = st.tuples(
    st.sampled_from([Mode.POSITIVE, Mode.POSITIVE, Mode.NEGATIVE]).flatmap(documents),
    st.booleans(),
)


@pytest.fixture(scope="session")
def fuzz_database(make_database: Any) -> DatabaseTarget:
    """A database of the fuzzer's own: what it changes is committed, as in production (and
    no other test's data depends on it)."""
    return migrated_and_seeded(make_database, "atlas_fuzz")


@dataclass
class Fuzzed:
    client: httpx.AsyncClient
    sessionmaker: async_sessionmaker[AsyncSession]
    settings: Settings


@pytest.fixture
async def fuzzed(fuzz_database: DatabaseTarget, fake_openai: FakeOpenAI) -> AsyncIterator[Fuzzed]:
    """The real app on its own database; replies go to the fake OpenAI."""
    settings = make_settings(fuzz_database, openai_base_url=fake_openai.base_url)
    engine = create_engine(fuzz_database, pool_size=5)
    app = create_app(settings, engine=engine)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, client=("198.51.100.77", 5555))
            async with httpx.AsyncClient(transport=transport, base_url="http://fuzz") as client:
                yield Fuzzed(client, async_sessionmaker(engine, expire_on_commit=False), settings)
    finally:
        await engine.dispose()


async def fresh_token(fuzzed: Fuzzed, email: str) -> str:
    async with fuzzed.sessionmaker() as db:
        user = await find_user_by_email(db=db, email=email)
        assert user is not None
        tokens = await start_session(db=db, settings=fuzzed.settings, user_id=user.id)
        await db.commit()
        return tokens.access_token


def check_answer(response: httpx.Response, sent: dict[str, Any]) -> None:
    where = json.dumps(sent)[:2000]
    assert response.status_code < 500, (response.status_code, response.text[:500], where)
    body = response.json()
    assert isinstance(body, dict), where
    for error in body.get("errors") or []:
        code = (error.get("extensions") or {}).get("code")
        assert code, (error, where)
        assert code != "INTERNAL_SERVER_ERROR", (error, where)


@pytest.mark.parametrize("viewer", [None, "user@example.com", "admin@example.com"])
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    database=None,
)
@given(request=requests)
async def test_no_generated_operation_reaches_an_internal_error(
    fuzzed: Fuzzed,
    viewer: str | None,
    request: tuple[DocumentNode, bool],
) -> None:
    document, lift = request
    variables: dict[str, Any] = {}
    if lift:
        document, variables = lift_root_arguments(document)
    sent = {"query": print_ast(document), "variables": variables}
    # A fresh session per example: a generated logout or deactivation must not leave the
    # next examples anonymous.
    headers = {}
    if viewer is not None:
        headers["Authorization"] = f"Bearer {await fresh_token(fuzzed, viewer)}"
    response = await fuzzed.client.post(
        "/graphql",
        content=json.dumps(sent),
        headers={**headers, "Content-Type": "application/json"},
    )
    check_answer(response, sent)


def test_lifting_keeps_the_document_valid() -> None:
    document = parse('mutation { createProject(input: {name: "x", description: null}) { id } }')
    lifted, variables = lift_root_arguments(document)
    assert print_ast(lifted).startswith("mutation ($v0: CreateProjectInput!)")
    assert variables == {"v0": {"name": "x", "description": None}}
