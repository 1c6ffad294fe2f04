"""The operation boundary (graph/errors.py, graph/execution.py) on a small schema of its own:
each mutation field is a unit (a failed one leaves nothing written and none of its after-commit
work run, the others keep theirs), the session commits once for a mutation and never for a
query, and no field is abandoned in the middle of a statement."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from strawberry.types import Info

from atlas_gql.db.session import after_commit
from atlas_gql.errors import BadInput
from atlas_gql.graph.context import Context
from atlas_gql.graph.errors import ErrorMappingExtension
from atlas_gql.graph.execution import AtlasExecutor
from atlas_gql.logs.audit import record_activity

ACTION = "test.boundary"
# What the after-commit hooks of the mutations saw run, by name.
HOOKS_RUN: list[str] = []
# Set when the slow sibling finished its statement.
SLOW_DONE: list[bool] = []


async def _write(info: Info[Context, None], name: str) -> None:
    db = info.context.db
    record_activity(db=db, action=ACTION, user_id=None, details={"name": name})
    await db.flush()

    async def hook() -> None:
        HOOKS_RUN.append(name)

    after_commit(db, hook)


@strawberry.type
class Written:
    name: str

    @strawberry.field
    def echo(self) -> str:
        """Non-null, and refused for names starting with `payload-fails`: the error reaches the
        (nullable) mutation field, which is then null."""
        if self.name.startswith("payload-fails"):
            raise BadInput("The payload is refused.", field="echo")
        return self.name


@strawberry.type
class Query:
    @strawberry.field
    async def write_in_a_query(self, info: Info[Context, None], name: str) -> bool:
        await _write(info, name)
        return True

    @strawberry.field
    async def slow(self, info: Info[Context, None]) -> int:
        value = (await info.context.db.execute(sa.text("SELECT 7 FROM pg_sleep(0.2)"))).scalar()
        SLOW_DONE.append(True)
        return int(value or 0)

    @strawberry.field
    async def refused(self) -> int:
        await asyncio.sleep(0)
        raise BadInput("Refused at once.", field="refused")


@strawberry.type
class Mutation:
    @strawberry.mutation
    async def write(
        self, info: Info[Context, None], name: str, fail: bool = False
    ) -> Written | None:
        await _write(info, name)
        if fail:
            raise BadInput("This write is refused.", field="fail")
        return Written(name=name)


SCHEMA = strawberry.Schema(
    query=Query,
    mutation=Mutation,
    extensions=[ErrorMappingExtension],
    execution_context_class=AtlasExecutor,
)


@pytest.fixture
def run(app: Any) -> Any:
    services = app.state.atlas["services"]

    async def run(document: str) -> Any:
        request = Request({"type": "http", "headers": [], "client": ("192.0.2.1", 1)})
        context = Context(services=services, request=request)
        return await SCHEMA.execute(document, context_value=context)

    return run


async def written(db: AsyncSession, names: list[str]) -> list[str]:
    rows = await db.execute(
        sa.text(
            "SELECT details->>'name' FROM activity_logs WHERE action = :action "
            "AND details->>'name' = ANY(:names) ORDER BY created_at"
        ),
        {"action": ACTION, "names": names},
    )
    return [row[0] for row in rows]


def codes(result: Any) -> dict[tuple[Any, ...], str]:
    return {tuple(error.path or ()): error.extensions["code"] for error in result.errors or []}


@pytest.fixture(autouse=True)
def clean_records() -> None:
    HOOKS_RUN.clear()
    SLOW_DONE.clear()


async def test_a_failed_mutation_leaves_nothing_and_the_others_keep_their_effect(
    run: Any, db: AsyncSession
) -> None:
    a, b, c, d = (f"{letter}-{uuid.uuid4().hex[:8]}" for letter in "abcd")
    result = await run(
        f'mutation {{ a: write(name: "{a}") {{ name }} '
        f'b: write(name: "{b}", fail: true) {{ name }} '
        f'c: write(name: "payload-fails-{c}") {{ echo }} '
        f'd: write(name: "{d}") {{ name echo }} }}'
    )

    assert result.data == {"a": {"name": a}, "b": None, "c": None, "d": {"name": d, "echo": d}}
    assert codes(result) == {("b",): "BAD_USER_INPUT", ("c", "echo"): "BAD_USER_INPUT"}
    assert await written(db, [a, b, f"payload-fails-{c}", d]) == [a, d]
    assert [a, d] == HOOKS_RUN


async def test_a_first_mutation_that_fails_leaves_nothing(run: Any, db: AsyncSession) -> None:
    a, b = (f"{letter}-{uuid.uuid4().hex[:8]}" for letter in "ab")
    result = await run(
        f'mutation {{ a: write(name: "{a}", fail: true) {{ name }} '
        f'b: write(name: "{b}") {{ name }} }}'
    )

    assert result.data == {"a": None, "b": {"name": b}}
    assert await written(db, [a, b]) == [b]
    assert [b] == HOOKS_RUN


async def test_a_query_never_commits(run: Any, db: AsyncSession) -> None:
    name = f"query-{uuid.uuid4().hex[:8]}"
    result = await run(f'{{ writeInAQuery(name: "{name}") }}')

    assert result.errors is None
    assert result.data == {"writeInAQuery": True}
    assert await written(db, [name]) == []
    assert HOOKS_RUN == []


async def test_a_sibling_in_the_middle_of_a_statement_is_not_abandoned(
    run: Any, db: AsyncSession
) -> None:
    """`refused` fails a non-null root field while `slow` waits on the database: the whole data
    is null (as the schema says), `refused` keeps its code, and `slow` finishes its statement
    before the session is closed, so the connection stays usable."""
    result = await run("{ slow refused }")

    assert result.data is None
    assert codes(result) == {("refused",): "BAD_USER_INPUT"}
    assert SLOW_DONE == [True]
    assert (await run("{ slow }")).data == {"slow": 7}
    assert (await db.execute(sa.text("SELECT 1"))).scalar() == 1
