"""Document limits: every hostile document is refused (or accepted within every limit) with a
code, the checks are linear, and field merging is proven without graphql-core's quadratic
search. Times are never asserted: bench/document_limits.py measures them.

Size: over 400 lines on purpose: one hostile document per limit, side by side with the
documents that must still pass."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import httpx
import pytest
from graphql import (
    DocumentNode,
    GraphQLError,
    GraphQLSyntaxError,
    OverlappingFieldsCanBeMergedRule,
    build_schema,
    parse,
    validate,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atlas_gql.app import create_app
from atlas_gql.config import Settings
from atlas_gql.graph.limits import DocumentGuard, DocumentLimits
from atlas_gql.graph.limits.analysis import price
from atlas_gql.graph.limits.extension import (
    MAX_CACHED_DOCUMENT_BYTES,
    PreparedDocument,
    utf8_length,
)
from atlas_gql.graph.limits.overlap import FieldMergeCheck
from atlas_gql.graph.limits.structure import count_document
from atlas_gql.graph.schema import build_schema as build_atlas_schema
from tests.conftest import make_settings
from tests.graph.document_attacks import ATTACKS, Attack, largest

SETTINGS = Settings.model_construct(atlas_document_cache_bytes=0)
LIMITS = DocumentLimits.from_settings(SETTINGS)
GUARD = DocumentGuard(LIMITS)
SCHEMA = build_atlas_schema(SETTINGS)._schema
LIMIT_CODES = {"QUERY_TOO_COMPLEX", "PAYLOAD_TOO_LARGE"}


def prepare(document: str) -> PreparedDocument | GraphQLError:
    return GUARD.prepare(SCHEMA, document, cacheable=lambda: False)


def code_of(error: object) -> str | None:
    assert isinstance(error, GraphQLError), error
    code = (error.extensions or {}).get("code")
    return code if isinstance(code, str) else None


def assert_within_limits(document: str, prepared: PreparedDocument) -> None:
    """An accepted document respects every limit."""
    assert utf8_length(document) <= LIMITS.max_document_bytes
    assert getattr(prepared.document, "token_count", 0) <= LIMITS.max_tokens
    assert LIMITS.caps.first_exceeded(count_document(prepared.document)) is None
    assert prepared.analysis is not None
    for operation in prepared.analysis.operations:
        assert operation.depth <= LIMITS.max_depth
        assert operation.aliases <= LIMITS.max_aliases
        assert price(operation.cost, {}) <= LIMITS.max_cost


def assert_classified(document: str) -> PreparedDocument | GraphQLError:
    """The guard answers every document: accepted within the limits, or refused with a
    code (limits) or as a GraphQL error (syntax, validation); it never raises."""
    outcome = prepare(document)
    if isinstance(outcome, GraphQLError):
        assert code_of(outcome) in LIMIT_CODES or isinstance(outcome, GraphQLSyntaxError)
        return outcome
    for error in outcome.errors:
        assert error.message != "Validation aborted."
        assert code_of(error) in LIMIT_CODES | {None}
    if not outcome.errors:
        assert_within_limits(document, outcome)
    return outcome


PADDING = st.sampled_from(["", " ", "\n", "# a comment\n", ",", "\t"])


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    attack=st.sampled_from(ATTACKS),
    size=st.integers(min_value=1, max_value=3_000),
    padding=PADDING,
    repeat=st.integers(min_value=0, max_value=120_000),
)
def test_hostile_documents_are_classified(
    attack: Attack, size: int, padding: str, repeat: int
) -> None:
    document = attack.build(min(size, attack.most)) + padding * (repeat if padding else 0)
    assert_classified(document)


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda attack: attack.name)
def test_the_largest_variant_and_the_next_are_classified(attack: Attack) -> None:
    """Exactly at the byte and token limits, and one step past them."""
    found = largest(attack, max_bytes=LIMITS.max_document_bytes, max_tokens=LIMITS.max_tokens)
    sizes = [found[0], found[0] + 1] if found is not None else [1]
    for size in sizes:
        if size <= attack.most:
            assert_classified(attack.build(size))


@pytest.mark.parametrize(
    "name",
    [
        "fragment bomb",
        "aliased fragment bomb",
        "alias-doubling fragments",
        "duplicate fields",
        "distinct aliases",
        "conflicting aliases",
        "operations",
        "unused variables",
        "wide directives",
        "nested inline fragments",
        "deep invalid nesting",
        "nested pages",
    ],
)
def test_each_family_is_refused_for_being_too_complex(name: str) -> None:
    attack = next(attack for attack in ATTACKS if attack.name == name)
    found = largest(attack, max_bytes=LIMITS.max_document_bytes, max_tokens=LIMITS.max_tokens)
    assert found is not None
    outcome = prepare(found[1])
    error = outcome if isinstance(outcome, GraphQLError) else outcome.errors[0]
    assert code_of(error) == "QUERY_TOO_COMPLEX", error.message


def test_a_fragment_bomb_under_one_kilobyte_is_refused_by_its_cost() -> None:
    document = next(a for a in ATTACKS if a.name == "aliased fragment bomb").build(12)
    assert len(document) < 1024
    outcome = prepare(document)
    assert isinstance(outcome, PreparedDocument)
    assert [code_of(error) for error in outcome.errors] == ["QUERY_TOO_COMPLEX"]
    assert "aliases" in outcome.errors[0].message


def test_comments_and_whitespace_count_towards_the_byte_limit() -> None:
    padding = "#" + "x" * (LIMITS.max_document_bytes + 10)
    outcome = prepare("{ __typename }\n" + padding)
    assert isinstance(outcome, GraphQLError)
    assert code_of(outcome) == "PAYLOAD_TOO_LARGE"
    assert code_of(prepare("{ __typename" + " " * LIMITS.max_document_bytes + "}")) == (
        "PAYLOAD_TOO_LARGE"
    )
    # Multi-byte characters count as their UTF-8 bytes, not as characters.
    wide = "{ __typename }#" + "é" * (LIMITS.max_document_bytes // 2)
    assert len(wide) < LIMITS.max_document_bytes
    assert code_of(prepare(wide)) == "PAYLOAD_TOO_LARGE"


def test_comment_lines_count_as_tokens() -> None:
    comments = "# c\n" * (LIMITS.max_tokens + 1)
    outcome = prepare("{ __typename }\n" + comments)
    assert isinstance(outcome, GraphQLError)
    assert code_of(outcome) == "QUERY_TOO_COMPLEX"


def test_ordinary_documents_pass() -> None:
    introspection = next(a for a in ATTACKS if a.name == "introspection").build(1)
    relay = (
        "query Q($n: Int) { projects(first: $n) { edges { node { id name "
        + " ".join(f"...P{i}" for i in range(8))
        + " } } } } "
        + " ".join(
            f"fragment P{i} on Project {{ id name description createdBy {{ id name email }} "
            "members(first: 5) { totalCount edges { cursor node { id role user { id name } } } }"
            " }"
            for i in range(8)
        )
    )
    for document in (introspection, relay, "{ __typename }"):
        outcome = prepare(document)
        assert isinstance(outcome, PreparedDocument)
        assert outcome.errors == [], outcome.errors


# --- field merging: the linear check never proves a document graphql-core finds conflicting

MERGE_SCHEMA = build_schema(
    """
    interface Named { id: ID name(upper: Boolean): String }
    type Dog implements Named {
      id: ID name(upper: Boolean): String barks: Boolean nick: String owner: Person
      friends: [Named]
    }
    type Cat implements Named {
      id: ID name(upper: Boolean): String meows: Boolean nick: Int owner: Person
      friends: [Named]
    }
    type Person implements Named {
      id: ID name(upper: Boolean): String pets: [Pet] best: Named age: Int!
    }
    union Pet = Dog | Cat
    type Query { pet: Pet named: Named dog: Dog cat: Cat person(id: ID): Person people: [Person] }
    """
)
MERGE_FIELDS: dict[str, list[tuple[str, str | None]]] = {
    "Query": [("pet", "Pet"), ("named", "Named"), ("dog", "Dog"), ("cat", "Cat"),
              ("person", "Person"), ("people", "Person")],
    "Named": [("id", None), ("name", None)],
    "Dog": [("id", None), ("name", None), ("barks", None), ("nick", None), ("owner", "Person"),
            ("friends", "Named")],
    "Cat": [("id", None), ("name", None), ("meows", None), ("nick", None), ("owner", "Person"),
            ("friends", "Named")],
    "Person": [("id", None), ("name", None), ("pets", "Pet"), ("best", "Named"), ("age", None)],
    "Pet": [],
}  # fmt: skip
NARROWER = {"Query": [], "Named": ["Dog", "Cat", "Person"], "Pet": ["Dog", "Cat"],
            "Dog": ["Named"], "Cat": ["Named"], "Person": ["Named"]}  # fmt: skip
FRAGMENT_TYPES = ["Dog", "Cat", "Named", "Person", "Pet"]


@st.composite
def selections(draw: st.DrawFn, type_name: str, depth: int, fragments: int) -> str:
    parts: list[str] = []
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        kind = draw(st.sampled_from(["field", "field", "field", "inline", "spread"]))
        fields = MERGE_FIELDS[type_name]
        if kind == "field" and fields:
            name, child = draw(st.sampled_from(fields))
            alias = draw(st.sampled_from(["", "", "a: ", "b: "]))
            arguments = ""
            if name == "name":
                arguments = draw(st.sampled_from(["", "(upper: true)", "(upper: false)"]))
            elif name == "person":
                arguments = draw(st.sampled_from(["", '(id: "1")', '(id: "2")']))
            if child is None:
                parts.append(f"{alias}{name}{arguments}")
            elif depth > 0:
                inner = draw(selections(child, depth - 1, fragments))
                parts.append(f"{alias}{name}{arguments} {{ {inner} }}")
            else:
                parts.append(f"{alias}{name}{arguments} {{ __typename }}")
        elif kind == "inline" and NARROWER[type_name] and depth > 0:
            narrowed = draw(st.sampled_from(NARROWER[type_name]))
            parts.append(
                f"... on {narrowed} {{ {draw(selections(narrowed, depth - 1, fragments))} }}"
            )
        elif kind == "spread" and fragments > 0:
            parts.append(f"...F{draw(st.integers(min_value=0, max_value=fragments - 1))}")
        else:
            parts.append(draw(st.sampled_from(["__typename", "t: __typename"])))
    return " ".join(parts)


@st.composite
def merge_documents(draw: st.DrawFn) -> str:
    count = draw(st.integers(min_value=0, max_value=3))
    definitions = []
    for index in range(count):
        on = draw(st.sampled_from(FRAGMENT_TYPES))
        body = draw(selections(on, 2, 0))  # no spreads inside fragments: no cycles
        definitions.append(f"fragment F{index} on {on} {{ {body} }}")
    operation = draw(selections("Query", 3, count))
    return "{ " + operation + " } " + " ".join(definitions)


@settings(max_examples=int(os.environ.get("MERGE_EXAMPLES", "400")), deadline=None, database=None)
@given(merge_documents())
def test_the_linear_merge_check_never_misses_a_conflict(document: str) -> None:
    parsed: DocumentNode = parse(document)
    proven = FieldMergeCheck(MERGE_SCHEMA, parsed).run()
    conflicts = validate(MERGE_SCHEMA, parsed, [OverlappingFieldsCanBeMergedRule])
    if proven:
        assert conflicts == [], (document, conflicts)


def test_the_merge_check_proves_what_graphql_core_takes_quadratic_time_for() -> None:
    for document in (
        "{ " + "me { id } " * 240 + "}",
        "{ " + " ".join(f"me {{ a{i}: id }}" for i in range(120)) + " }",
        "{ " + " ".join(f"...F{i}" for i in range(60)) + " } " + " ".join(
            f"fragment F{i} on Query {{ me {{ id email roles {{ name }} }} }}" for i in range(60)
        ),
    ):  # fmt: skip
        assert FieldMergeCheck(SCHEMA, parse(document)).run()


def test_conflicts_still_get_graphql_cores_message() -> None:
    outcome = prepare("{ a: __typename a: me { id } }")
    assert isinstance(outcome, PreparedDocument)
    assert len(outcome.errors) == 1
    assert "conflict" in outcome.errors[0].message
    assert code_of(outcome.errors[0]) is None  # a validation error: GRAPHQL_VALIDATION_FAILED


# --- over HTTP: 413 / 400 with a code, whatever the client accepts


async def test_document_size_limit_over_post(client: httpx.AsyncClient) -> None:
    padded = "{ __typename }\n#" + "x" * LIMITS.max_document_bytes
    post = await client.post("/graphql", json={"query": padded})
    assert post.status_code == 413
    assert post.json()["errors"][0]["extensions"]["code"] == "PAYLOAD_TOO_LARGE"
    spaced = "{ __typename" + " " * (LIMITS.max_document_bytes - 20) + "}"
    accepted = await client.post("/graphql", json={"query": spaced})
    assert accepted.json() == {"data": {"__typename": "Query"}}


async def test_document_size_limit_over_get(database_target: Any) -> None:
    settings = make_settings(database_target, atlas_max_document_bytes=2_000)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            refused = await client.get("/graphql", params={"query": "{ __typename }#" + "x" * 2000})
            accepted = await client.get(
                "/graphql", params={"query": "{ __typename }#" + "x" * 1900}
            )
            socket_size = await client.post(
                "/graphql", json={"query": "{ __typename }#" + "é" * 1000}
            )
    assert refused.status_code == 413
    assert refused.json()["errors"][0]["extensions"]["code"] == "PAYLOAD_TOO_LARGE"
    assert accepted.json() == {"data": {"__typename": "Query"}}
    assert socket_size.status_code == 413  # 1,000 characters, 2,000 bytes


@pytest.mark.parametrize("accept", ["application/json", "application/graphql-response+json"])
async def test_too_complex_is_400_for_every_client(client: httpx.AsyncClient, accept: str) -> None:
    bomb = next(a for a in ATTACKS if a.name == "aliased fragment bomb").build(30)
    for _ in range(2):  # the second answer may come from the cache
        response = await client.post("/graphql", json={"query": bomb}, headers={"Accept": accept})
        assert response.status_code == 400
        body = response.json()
        assert "data" not in body
        assert body["errors"][0]["extensions"]["code"] == "QUERY_TOO_COMPLEX"


async def test_depth_and_alias_limits(client: httpx.AsyncClient) -> None:
    deep = "id"
    for _ in range(25):
        deep = f"roles {{ {deep} }}"
    response = await client.post("/graphql", json={"query": f"{{ me {{ {deep} }} }}"})
    assert response.status_code == 400
    error = response.json()["errors"][0]
    assert "exceeds maximum operation depth of 12" in error["message"]
    assert error["extensions"]["code"] == "QUERY_TOO_COMPLEX"

    # One alias over the alias limit, far under every other limit (tokens, depth, cost): the
    # refusal must be the alias limit's own.
    over = LIMITS.max_aliases + 1
    query = "{ " + " ".join(f"a{i}: __typename" for i in range(over)) + " }"
    assert 3 * over + 2 < LIMITS.max_tokens // 2  # `aN` `:` `__typename` per alias, braces
    response = await client.post("/graphql", json={"query": query})
    assert response.status_code == 400
    error = response.json()["errors"][0]
    assert error["extensions"]["code"] == "QUERY_TOO_COMPLEX"
    assert f"uses {over} aliases" in error["message"], error
    assert f"the limit is {LIMITS.max_aliases}." in error["message"], error
    assert "tokens" not in error["message"]
    allowed = " ".join(f"a{i}: __typename" for i in range(LIMITS.max_aliases))
    response = await client.post("/graphql", json={"query": f"{{ {allowed} }}"})
    assert response.status_code == 200
    assert len(response.json()["data"]) == LIMITS.max_aliases


async def test_token_limit_counts_comments(client: httpx.AsyncClient) -> None:
    fields = " ".join("__typename" for _ in range(LIMITS.max_tokens + 5))
    response = await client.post("/graphql", json={"query": f"{{ {fields} }}"})
    assert response.status_code == 400
    error = response.json()["errors"][0]
    assert "tokens" in error["message"]
    assert error["extensions"]["code"] == "QUERY_TOO_COMPLEX"


async def test_syntax_errors_stay_validation_errors(client: httpx.AsyncClient) -> None:
    for _ in range(2):
        body = (await client.post("/graphql", json={"query": "{ me { email "})).json()
        assert body.get("data") is None
        assert body["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
        assert "Syntax Error" in body["errors"][0]["message"]


async def test_only_signed_in_requests_enter_the_document_cache(
    app: Any, client: httpx.AsyncClient, sign_in: Any
) -> None:
    guard = app.state.atlas["schema"].document_guard
    assert guard.cache is not None
    before = len(guard.cache)
    await client.post("/graphql", json={"query": "{ anonymous: __typename }"})
    forged = {"Authorization": "Bearer not-a-signed-token"}
    await client.post("/graphql", json={"query": "{ forged: __typename }"}, headers=forged)
    assert len(guard.cache) == before
    token = await sign_in("user@example.com")
    response = await client.post(
        "/graphql",
        json={"query": "{ signedIn: __typename }"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.json() == {"data": {"signedIn": "Query"}}
    assert len(guard.cache) == before + 1
    assert guard.cache.get("{ signedIn: __typename }") is not None
    # An anonymous request reads what a signed-in one cached.
    again = await client.post("/graphql", json={"query": "{ signedIn: __typename }"})
    assert again.json() == {"data": {"signedIn": "Query"}}


def test_the_cache_is_bounded_by_bytes() -> None:
    guard = DocumentGuard(
        DocumentLimits.from_settings(Settings.model_construct(atlas_document_cache_bytes=400_000))
    )
    assert guard.cache is not None
    for index in range(2_000):
        document = f"{{ a{index}: __typename }}\n# " + "x" * 2_000
        guard.prepare(SCHEMA, document, cacheable=lambda: True)
        assert guard.cache.total_bytes <= 400_000
    assert 0 < len(guard.cache) < 2_000
    heavy = "{ __typename }#" + "x" * 30_000  # over an eighth of the budget: never kept
    guard.prepare(SCHEMA, heavy, cacheable=lambda: True)
    assert guard.cache.get(heavy) is None


def test_padded_documents_never_enter_the_cache() -> None:
    guard = DocumentGuard(dataclasses.replace(LIMITS, cache_bytes=10**9))
    assert guard.cache is not None
    padded = "{ __typename }#" + "x" * (MAX_CACHED_DOCUMENT_BYTES + 1)
    assert isinstance(guard.prepare(SCHEMA, padded, cacheable=lambda: True), PreparedDocument)
    assert len(guard.cache) == 0
    small = "{ __typename }#" + "x" * 100
    guard.prepare(SCHEMA, small, cacheable=lambda: True)
    assert guard.cache.get(small) is not None
