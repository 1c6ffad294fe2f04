"""The compiled path as served: over HTTP, with ATLAS_COMPILED_READS on (the default), every
request answers exactly what the resolver path alone answers (ATLAS_COMPILED_READS=false),
errors included; the queries it serves cost one SQL statement each, whatever the page sizes;
the choice is counted."""

from __future__ import annotations

import json
from typing import Any

import pytest

from atlas_gql.graph.views import GRAPHQL_RESPONSE_JSON
from tests.graph.compiled.conftest import VIEWERS, Both, Served
from tests.graph.compiled.test_equality import CASES, ISSUE_QUERY, NODE_QUERY, node_ids

SIGNED_IN = [viewer for viewer in VIEWERS if viewer != "anonymous"]


async def post(
    served: Any,
    query: str,
    variables: dict[str, Any] | None = None,
    *,
    token: str | None,
    accept: str | None = None,
) -> tuple[int, str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    headers["Content-Type"] = "application/json"
    if accept:
        headers["Accept"] = accept
    # json.dumps escapes what UTF-8 cannot carry (a lone surrogate stays `\ud800`).
    body = json.dumps({"query": query, "variables": variables})
    response = await served.client.post("/graphql", content=body, headers=headers)
    return response.status_code, response.headers["content-type"], response.json()


def without_request_ids(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: without_request_ids(item) for key, item in value.items() if key != "requestId"}
    if isinstance(value, list | tuple):
        return [without_request_ids(item) for item in value]
    return value


async def same_over_http(
    both: Both, served: Served, query: str, variables: dict[str, Any] | None, viewer: str
) -> Any:
    """Both apps answer the same status, media type and JSON (key order included)."""
    token = both.token(viewer)
    expected = await post(both, query, variables, token=token)
    answered = await post(served, query, variables, token=token)
    assert answered[:2] == expected[:2], viewer
    # (each response's own request id aside: the resolver path's errors carry theirs)
    got, want = without_request_ids(answered[2]), without_request_ids(expected[2])
    assert json.dumps(got) == json.dumps(want), (viewer, want)
    return answered[2]


@pytest.mark.parametrize("case", list(CASES))
async def test_served_answers_what_the_resolver_path_answers(
    both: Both, served: Served, case: str
) -> None:
    query, variables = CASES[case](both.world)
    for viewer in VIEWERS:
        compiled_before = served.stats.compiled
        body = await same_over_http(both, served, query, variables, viewer)
        # Every signed-in answer without an error (and only those) came from one statement.
        served_compiled = served.stats.compiled - compiled_before
        assert served_compiled == (viewer != "anonymous" and "errors" not in body), viewer


async def test_node_of_every_type_over_http(both: Both, served: Served) -> None:
    for node_id in node_ids(both.world).values():
        for viewer in SIGNED_IN:
            await same_over_http(both, served, NODE_QUERY, {"id": node_id}, viewer)


async def test_the_issue_query_is_one_statement_per_request(
    both: Both, served: Served, served_off: Served
) -> None:
    token = both.token("owner")
    for _ in range(2):  # prepares the statement on both pooled connections
        await post(served, ISSUE_QUERY, token=token)
    with served.counter.counting() as statements:
        for _ in range(3):
            status, _, body = await post(served, ISSUE_QUERY, token=token)
            assert status == 200
            assert "errors" not in body
    assert len(statements) == 3, statements
    # One prepared statement each: no BEGIN, no ROLLBACK, no pool check around it.
    assert statements == ["bind_execute"] * 3, statements

    await post(served_off, ISSUE_QUERY, token=token)
    with served_off.counter.counting() as statements:
        await post(served_off, ISSUE_QUERY, token=token)
    # The resolver path: BEGIN, the session check on the operation's own connection, the
    # projects page, its creators, members, their users, threads; ROLLBACK. No totalCount is
    # selected, so nothing is counted; the pool does not re-check a connection just used.
    assert len(statements) == 8, statements
    assert statements[0] == "BEGIN ISOLATION LEVEL REPEATABLE READ;"  # one snapshot
    assert statements[1].startswith("SELECT users.id, users.email")  # the session check
    assert statements[-1] == "ROLLBACK;"

    # totalCount selected: each selected level counts, once per request.
    counted = ISSUE_QUERY.replace("members(first: 10) {", "members(first: 10) { totalCount")
    counted = counted.replace("projects(first: 20) {", "projects(first: 20) { totalCount")
    await post(served_off, counted, token=token)
    with served_off.counter.counting() as statements:
        await post(served_off, counted, token=token)
    assert len(statements) == 10, statements
    assert sum("count(*)" in statement for statement in statements) == 2


TYPICAL = {
    "threads -> assistant, project, messages(last: n)": (
        """query ($n: Int, $m: Int) { threads(first: $n) { edges { node { id title
             assistant { name instructions } project { name }
             messages(last: $m) { edges { node { content createdAt } } } } } } }""",
        [{"n": 1, "m": 1}, {"n": 100, "m": 100}],
    ),
    "users": (
        "query ($n: Int) { users(first: $n) { totalCount nodes { email roles { name } } } }",
        [{"n": 1}, {"n": 100}],
    ),
    "activityLogs": (
        """query ($n: Int) { activityLogs(first: $n) { edges { node { action
             user { email permissions } } } } }""",
        [{"n": 1}, {"n": 100}],
    ),
    "projects -> members -> user": (
        """query ($n: Int, $m: Int) { projects(first: $n) { totalCount nodes { name
             members(first: $m) { totalCount nodes { role user { email roles { name } } } }
             threads(first: $m) { nodes { title createdBy { name } } } } } }""",
        [{"n": 1, "m": 1}, {"n": 40, "m": 40}],
    ),
}


@pytest.mark.parametrize("shape", list(TYPICAL))
async def test_typical_shapes_cost_one_statement_whatever_the_page_sizes(
    both: Both, served: Served, shape: str
) -> None:
    query, sizes = TYPICAL[shape]
    token = both.token("admin")
    for variables in sizes:
        for _ in range(2):  # prepared on both pooled connections
            await post(served, query, variables, token=token)
        with served.counter.counting() as statements:
            status, _, body = await post(served, query, variables, token=token)
        assert status == 200, body
        assert "errors" not in body, body
        assert len(statements) == 1, statements


async def test_node_of_each_type_is_one_statement(both: Both, served: Served) -> None:
    token = both.token("admin")
    for node_id in node_ids(both.world).values():
        for _ in range(2):  # prepared on both pooled connections
            await post(served, NODE_QUERY, {"id": node_id}, token=token)
        with served.counter.counting() as statements:
            await post(served, NODE_QUERY, {"id": node_id}, token=token)
        assert len(statements) == 1, (node_id, statements)


async def test_media_types_follow_the_accept_header(both: Both, served: Served) -> None:
    token = both.token("member")
    for accept in (None, GRAPHQL_RESPONSE_JSON, "application/json", "*/*"):
        expected = await post(both, "{ me { email } }", token=token, accept=accept)
        answered = await post(served, "{ me { email } }", token=token, accept=accept)
        assert answered == expected, accept


@pytest.mark.parametrize(
    ("query", "variables", "kind"),
    [
        ('mutation { deleteProject(id: "garbage") }', None, "not a query"),
        ("{ apiUsage(groupBy: DAY) { key } }", None, "not compiled"),
        ("{ projects(first: 101) { totalCount } }", None, "refused"),
        ("query ($s: String) { users(filter: {search: $s}) { totalCount } }", {"s": "a\x00b"},
         "refused"),
        ('{ users(filter: {search: "a\\u0000b"}) { totalCount } }', None, "refused"),
        ("query ($s: String) { users(filter: {search: $s}) { totalCount } }",
         {"s": "\ud800"}, "refused"),
        ("{ nope }", None, "refused"),
        ("query ($n: Int!) { projects(first: $n) { totalCount } }", {"n": "x"}, "refused"),
    ],
)  # fmt: skip
async def test_what_falls_back_is_answered_by_the_resolver_path_and_counted(
    both: Both, served: Served, query: str, variables: Any, kind: str
) -> None:
    token = both.token("admin")
    before = served.stats.fallback_reasons[kind]
    expected = await post(both, query, variables, token=token)
    answered = await post(served, query, variables, token=token)
    # (each error has its own requestId)
    assert without_request_ids(answered) == without_request_ids(expected)
    assert served.stats.fallback_reasons[kind] == before + 1


async def test_a_known_mutation_falls_back_before_its_token_is_read(
    both: Both, served: Served
) -> None:
    query = 'mutation { deleteProject(id: "garbage") }'
    await post(served, query, token=both.token("admin"))  # the guard now holds the document
    before = served.stats.fallback_reasons["not a query"]
    # (Were the token read first, this would count as "not eligible": no valid token.)
    answered = await post(served, query, token="not-a-jwt")
    expected = await post(both, query, token="not-a-jwt")
    assert without_request_ids(answered) == without_request_ids(expected)
    assert served.stats.fallback_reasons["not a query"] == before + 1


async def test_bad_or_missing_tokens_take_the_resolver_path(both: Both, served: Served) -> None:
    before = served.stats.fallback_reasons["not eligible"]
    for token in (None, "not-a-jwt", both.token("admin") + "x"):  # type: ignore[operator]
        answered = await post(served, "{ me { email } }", token=token)
        expected = await post(both, "{ me { email } }", token=token)
        assert without_request_ids(answered) == without_request_ids(expected)
    assert served.stats.fallback_reasons["not eligible"] == before + 3


async def test_a_malformed_body_answers_as_before(both: Both, served: Served) -> None:
    token = both.token("admin")
    for body in (b"[1]", b"{", b'{"query": 1}', b'"text"'):
        responses = [
            await app.client.post(
                "/graphql",
                content=body,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            for app in (both, served)
        ]
        assert responses[0].status_code == responses[1].status_code, body
        assert responses[0].json() == responses[1].json(), body


async def test_get_requests_are_served_too(both: Both, served: Served) -> None:
    token = both.token("manager")
    params = {"query": "query ($n: Int) { projects(first: $n) { nodes { name } } }",
              "variables": json.dumps({"n": 2})}  # fmt: skip
    before = served.stats.compiled
    responses = [
        await app.client.get(
            "/graphql", params=params, headers={"Authorization": f"Bearer {token}"}
        )
        for app in (both, served)
    ]
    assert responses[1].status_code == responses[0].status_code == 200
    assert responses[1].json() == responses[0].json()
    assert served.stats.compiled == before + 1


async def test_compiled_reads_off_serves_nothing_compiled(both: Both, served_off: Served) -> None:
    token = both.token("admin")
    await post(served_off, ISSUE_QUERY, token=token)
    assert served_off.stats.compiled == 0
    assert served_off.stats.fallback == 0  # the compiled path is not even asked


BRANCH_QUERY = """
query ($id: ID!, $n: Int!) {
  thread(id: $id) {
    activeLeaf { id }
    messages(first: $n) { totalCount edges { node { id content parent { id } } } }
  }
}"""
BRANCH_ARROWS = BRANCH_QUERY.replace("parent { id }", "parent { id } siblings { id } siblingIndex")


async def test_a_branch_costs_the_same_statements_whatever_the_page(
    both: Both, served: Served, served_off: Served
) -> None:
    """Issue 15: Thread.messages is the active branch (a recursive CTE), with each message's
    siblings: compiled, one statement; on the resolver path, a fixed number, whatever the page
    size. Both answer the same, without the abandoned branch but with its sibling."""
    token = both.token("member")
    thread_id = both.world.gid("Thread", both.world.threads["alpha-1"].id)
    counts: dict[str, set[int]] = {"compiled": set(), "resolver": set()}
    for n in (2, 7):
        variables = {"id": thread_id, "n": n}
        body = await same_over_http(both, served, BRANCH_ARROWS, variables, "member")
        edges = body["data"]["thread"]["messages"]["edges"]
        assert body["data"]["thread"]["messages"]["totalCount"] == 7
        assert all("Abandoned" not in edge["node"]["content"] for edge in edges)
        if n == 7:
            # Message 3 has the abandoned answer as an older sibling.
            assert [len(edge["node"]["siblings"]) for edge in edges] == [1, 1, 1, 2, 1, 1, 1]
            assert edges[3]["node"]["siblingIndex"] == 1
        for path, key in ((served, "compiled"), (served_off, "resolver")):
            await post(path, BRANCH_ARROWS, variables, token=token)
            with path.counter.counting() as statements:
                status, _, answer = await post(path, BRANCH_ARROWS, variables, token=token)
            assert status == 200
            assert "errors" not in answer
            counts[key].add(len(statements))
    assert counts["compiled"] == {1}
    assert len(counts["resolver"]) == 1
