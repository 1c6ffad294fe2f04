"""searchMessages: full-text search over the messages the viewer may read (docs/search.md).

Each test builds its own small world inside the rolled-back transaction: two projects, people
in each role, personal threads, messages with words no other test uses.

Size: a little under 500 lines on purpose: one feature's tests around one world fixture, in
the order of docs/search.md (scope, filters, query language, snippets, pages, bad input)."""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlmodel import col

from atlas_gql.ai.models import Assistant, Message, MessageRole, MessageStatus, Thread
from atlas_gql.auth.models import RoleName
from atlas_gql.db.tables import table_of
from atlas_gql.ids import encode_global_id
from atlas_gql.projects.models import Project, ProjectMember, ProjectRole
from tests.conftest import GraphQLClient, counting_statements, error_codes
from tests.factories import Person
from tests.projects.conftest import make_person

__all__ = ["make_person"]  # the fixture, shared with tests/projects

SEARCH = """
query($q: String!, $first: Int, $after: String, $filter: MessageSearchFilter) {
  searchMessages(query: $q, first: $first, after: $after, filter: $filter) {
    totalCount
    pageInfo { hasNextPage hasPreviousPage endCursor }
    edges { cursor node { rank snippet message { id content role } thread { id title } } }
  }
}"""

BASE_TIME = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@dataclass
class World:
    db: AsyncSession
    alice: Person  # MEMBER of Apollo
    bob: Person  # MEMBER of Borealis
    vera: Person  # VIEWER of Apollo
    admin: Person
    apollo: Project
    borealis: Project
    assistant: Assistant  # Apollo's
    threads: dict[str, Thread]
    _minutes: int = 0

    async def thread(
        self,
        name: str,
        *,
        by: Person,
        project: Project | None,
        assistant: Assistant | None = None,
    ) -> Thread:
        thread = Thread(
            title=name,
            project_id=project.id if project else None,
            assistant_id=(assistant or self.assistant).id,
            created_by_id=by.user.id,
        )
        self.db.add(thread)
        await self.db.flush()
        self.threads[name] = thread
        return thread

    async def say(
        self,
        thread: str,
        content: str,
        *,
        role: MessageRole = MessageRole.USER,
        status: MessageStatus = MessageStatus.COMPLETED,
        at: datetime | None = None,
    ) -> Message:
        """A message, each one a minute after the last unless `at` is given."""
        self._minutes += 1
        message = Message(
            thread_id=self.threads[thread].id,
            role=role,
            status=status,
            content=content,
            created_at=at or BASE_TIME + timedelta(minutes=self._minutes),
        )
        self.db.add(message)
        await self.db.commit()
        return message


@pytest.fixture
async def world(db: AsyncSession, make_person: Any) -> World:
    alice = await make_person(label="alice")
    bob = await make_person(label="bob")
    vera = await make_person(label="vera")
    admin = await make_person(RoleName.ADMIN, label="admin")
    apollo = Project(name="Apollo", created_by_id=alice.user.id)
    borealis = Project(name="Borealis", created_by_id=bob.user.id)
    db.add_all([apollo, borealis])
    await db.flush()
    db.add_all(
        [
            ProjectMember(project_id=apollo.id, user_id=alice.user.id, role=ProjectRole.MEMBER),
            ProjectMember(project_id=apollo.id, user_id=vera.user.id, role=ProjectRole.VIEWER),
            ProjectMember(project_id=borealis.id, user_id=bob.user.id, role=ProjectRole.MEMBER),
        ]
    )
    assistant = Assistant(
        name="Apollo helper", model="gpt-4o-mini", project_id=apollo.id, created_by_id=alice.user.id
    )
    db.add(assistant)
    await db.flush()
    world = World(db, alice, bob, vera, admin, apollo, borealis, assistant, {})
    await world.thread("apollo-1", by=alice, project=apollo)
    await world.thread("apollo-2", by=vera, project=apollo)
    await world.thread("borealis-1", by=bob, project=borealis)
    await world.thread("alice-own", by=alice, project=None)
    await world.thread("bob-own", by=bob, project=None)
    await db.commit()
    return world


async def search(
    gql: GraphQLClient, token: str | None, query: str, **variables: Any
) -> dict[str, Any]:
    # As JSON with every non-ASCII character escaped, so a lone surrogate can be sent too.
    payload = json.dumps({"query": SEARCH, "variables": {"q": query, **variables}})
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    response = await gql.client.post("/graphql", content=payload, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def found(gql: GraphQLClient, who: Person, query: str, **variables: Any) -> list[str]:
    """The contents of the hits, in the order given."""
    body = await search(gql, who.token, query, **variables)
    assert "errors" not in body, body
    edges = body["data"]["searchMessages"]["edges"]
    return [edge["node"]["message"]["content"] for edge in edges]


def gid(type_name: str, row: Any) -> str:
    return encode_global_id(type_name, row.id)


# -- who finds what --------------------------------------------------------------------------


async def test_finds_words_across_the_threads_the_viewer_may_read_only(
    gql: GraphQLClient, world: World
) -> None:
    await world.say("apollo-1", "the zebracorn launch is on monday")
    await world.say(
        "apollo-2", "a zebracorn sighting in the second thread", role=MessageRole.ASSISTANT
    )
    await world.say("borealis-1", "borealis keeps its zebracorn secret")
    await world.say("alice-own", "my own zebracorn diary")
    await world.say("bob-own", "bob's private zebracorn notes")
    await world.say("apollo-1", "nothing to see here")

    assert sorted(await found(gql, world.alice, "zebracorn")) == [
        "a zebracorn sighting in the second thread",
        "my own zebracorn diary",
        "the zebracorn launch is on monday",
    ]
    # A VIEWER reads the project's threads (and so finds in them), not others' personal ones.
    assert sorted(await found(gql, world.vera, "zebracorn")) == [
        "a zebracorn sighting in the second thread",
        "the zebracorn launch is on monday",
    ]
    assert sorted(await found(gql, world.bob, "zebracorn")) == [
        "bob's private zebracorn notes",
        "borealis keeps its zebracorn secret",
    ]
    # ADMIN reads every thread (the threads rule), so finds in all of them.
    assert len(await found(gql, world.admin, "zebracorn")) == 5

    body = await search(gql, world.alice.token, "zebracorn")
    hits = body["data"]["searchMessages"]
    assert hits["totalCount"] == 3
    by_content = {edge["node"]["message"]["content"]: edge["node"] for edge in hits["edges"]}
    own = by_content["my own zebracorn diary"]
    assert own["thread"] == {"id": gid("Thread", world.threads["alice-own"]), "title": "alice-own"}
    assert own["snippet"] == "my own <mark>zebracorn</mark> diary"
    assert all(isinstance(node["rank"], float) and node["rank"] > 0 for node in by_content.values())


async def test_an_outsider_and_an_anonymous_caller_find_nothing(
    gql: GraphQLClient, world: World, make_person: Any
) -> None:
    await world.say("apollo-1", "quokkaberry harvest plans")
    outsider = await make_person(label="outsider")
    assert await found(gql, outsider, "quokkaberry") == []
    anonymous = await search(gql, None, "quokkaberry")
    assert error_codes(anonymous) == ["UNAUTHENTICATED"]
    assert anonymous["data"] == {"searchMessages": None}


async def test_a_removed_member_no_longer_finds_the_projects_messages(
    gql: GraphQLClient, world: World
) -> None:
    await world.say("apollo-1", "the narwhalite budget")
    await world.say("alice-own", "narwhalite, mine")
    assert len(await found(gql, world.alice, "narwhalite")) == 2
    await world.db.execute(
        sa.delete(ProjectMember).where(
            col(ProjectMember.project_id) == world.apollo.id,
            col(ProjectMember.user_id) == world.alice.user.id,
        )
    )
    await world.db.commit()
    assert await found(gql, world.alice, "narwhalite") == ["narwhalite, mine"]


async def test_messages_of_a_deleted_thread_are_gone(gql: GraphQLClient, world: World) -> None:
    await world.say("apollo-1", "glimmerfish recipe")
    await world.say("apollo-2", "glimmerfish again")
    deleted = await gql(
        "mutation($id: ID!) { deleteThread(id: $id) }",
        {"id": gid("Thread", world.threads["apollo-1"])},
        token=world.alice.token,
    )
    assert "errors" not in deleted, deleted
    assert await found(gql, world.alice, "glimmerfish") == ["glimmerfish again"]


async def test_a_streaming_reply_is_found_once_it_ends(gql: GraphQLClient, world: World) -> None:
    reply = await world.say(
        "apollo-1", "the moonquartz answer so far", role=MessageRole.ASSISTANT,
        status=MessageStatus.IN_PROGRESS,
    )  # fmt: skip
    assert await found(gql, world.alice, "moonquartz") == []
    messages = table_of(Message)
    await world.db.execute(
        sa.update(messages)
        .where(messages.c.id == reply.id)
        .values(status=MessageStatus.COMPLETED.value, content="the moonquartz answer, whole")
    )
    await world.db.commit()
    assert await found(gql, world.alice, "moonquartz") == ["the moonquartz answer, whole"]


# -- filters ---------------------------------------------------------------------------------


async def test_filters_narrow_the_hits(gql: GraphQLClient, world: World) -> None:
    other_assistant = Assistant(
        name="Second", model="gpt-4o-mini", project_id=world.apollo.id,
        created_by_id=world.alice.user.id,
    )  # fmt: skip
    world.db.add(other_assistant)
    await world.db.flush()
    await world.thread("apollo-3", by=world.alice, project=world.apollo, assistant=other_assistant)
    early = BASE_TIME - timedelta(days=10)
    await world.say("apollo-1", "sprocket one, early", at=early)
    await world.say("apollo-1", "sprocket two, a reply", role=MessageRole.ASSISTANT)
    await world.say("apollo-3", "sprocket three, other assistant")
    await world.say("alice-own", "sprocket four, personal")
    apollo = gid("Project", world.apollo)

    async def hits(**filter: Any) -> set[str]:
        return {
            text.split(",")[0] for text in await found(gql, world.alice, "sprocket", filter=filter)
        }

    assert await hits() == {"sprocket one", "sprocket two", "sprocket three", "sprocket four"}
    assert await hits(projectId=apollo) == {"sprocket one", "sprocket two", "sprocket three"}
    assert await hits(threadId=gid("Thread", world.threads["apollo-3"])) == {"sprocket three"}
    assert await hits(assistantId=gid("Assistant", other_assistant)) == {"sprocket three"}
    assert await hits(role="ASSISTANT") == {"sprocket two"}
    assert await hits(to=BASE_TIME.isoformat()) == {"sprocket one"}
    assert await hits(**{"from": BASE_TIME.isoformat()}) == {
        "sprocket two", "sprocket three", "sprocket four",
    }  # fmt: skip
    assert await hits(projectId=apollo, role="USER", **{"from": BASE_TIME.isoformat()}) == {
        "sprocket three"
    }
    # A project or thread the viewer may not see narrows to nothing, as `threads` does.
    assert await hits(projectId=gid("Project", world.borealis)) == set()
    assert await hits(threadId=gid("Thread", world.threads["bob-own"])) == set()


@pytest.mark.parametrize(
    ("filter", "field"),
    [
        ({"projectId": "garbage"}, "filter.projectId"),
        ({"threadId": encode_global_id("Project", uuid.uuid4())}, "filter.threadId"),
        ({"assistantId": "QXNzaXN0YW50Om5v"}, "filter.assistantId"),
        ({"from": "2026-03-01T12:00:00"}, "filter.from"),
        ({"from": "2026-03-02T00:00:00Z", "to": "2026-03-01T00:00:00Z"}, "filter.from"),
    ],
)
async def test_a_malformed_filter_is_bad_user_input(
    gql: GraphQLClient, world: World, filter: dict[str, Any], field: str
) -> None:
    body = await search(gql, world.alice.token, "sprocket", filter=filter)
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert body["errors"][0]["extensions"]["field"] == field
    assert body["data"] == {"searchMessages": None}


# -- the query language ------------------------------------------------------------------------


async def test_web_search_syntax(gql: GraphQLClient, world: World) -> None:
    await world.say("apollo-1", "the crimson fox jumps")
    await world.say("apollo-1", "a fox that is crimson")
    await world.say("apollo-1", "a crimson heron")
    await world.say("apollo-1", "deploying the teal server")
    await world.say("apollo-1", "we deployed it yesterday")

    async def hits(query: str) -> set[str]:
        return set(await found(gql, world.alice, query))

    assert await hits('"crimson fox"') == {"the crimson fox jumps"}
    assert await hits("crimson fox") == {"the crimson fox jumps", "a fox that is crimson"}
    assert await hits("crimson -fox") == {"a crimson heron"}
    assert await hits("heron or jumps") == {"a crimson heron", "the crimson fox jumps"}
    # English stemming: any form of a word finds the others.
    assert await hits("deployment") == {"deploying the teal server", "we deployed it yesterday"}
    # Case and punctuation do not matter.
    assert await hits("CRIMSON, Heron!") == {"a crimson heron"}


async def test_snippets_are_html_escaped_and_mark_the_matches(
    gql: GraphQLClient, world: World
) -> None:
    long_text = " ".join(["filler"] * 60 + ["opalwing", "is", "here"] + ["filler"] * 60)
    await world.say("apollo-1", 'if a < b && opalwing > c then \x02quote\x03 "it"')
    await world.say("apollo-2", long_text)
    body = await search(gql, world.alice.token, "opalwing")
    snippets = {
        edge["node"]["message"]["content"]: edge["node"]["snippet"]
        for edge in body["data"]["searchMessages"]["edges"]
    }
    assert len(snippets) == 2
    short = snippets.pop(long_text)
    # The text's own control characters are dropped: only the matches are marked.
    assert snippets.popitem()[1] == (
        "if a &lt; b &amp;&amp; <mark>opalwing</mark> &gt; c then quote &quot;it&quot;"
    )
    # A long text is cut around the match.
    assert short.startswith("filler ")
    assert "filler <mark>opalwing</mark> is here filler" in short
    assert len(short) < len(long_text) / 2


# -- pagination --------------------------------------------------------------------------------


async def test_pages_follow_each_other_without_gap_or_repeat(
    gql: GraphQLClient, world: World
) -> None:
    # Different ranks (how often the word occurs, the text's length) and equal ones.
    for index in range(7):
        repeats = 1 + index % 3
        await world.say("apollo-1", " ".join(["tanglewood"] * repeats + [f"note{index}"]))
    everything = await search(gql, world.alice.token, "tanglewood", first=100)
    edges = everything["data"]["searchMessages"]["edges"]
    assert len(edges) == 7
    ranks = [edge["node"]["rank"] for edge in edges]
    assert ranks == sorted(ranks, reverse=True)
    assert len(set(ranks)) > 1

    seen: list[str] = []
    after = None
    pages = 0
    while True:
        body = await search(gql, world.alice.token, "tanglewood", first=3, after=after)
        connection = body["data"]["searchMessages"]
        assert connection["totalCount"] == 7
        assert connection["pageInfo"]["hasPreviousPage"] is (after is not None)
        seen += [edge["node"]["message"]["id"] for edge in connection["edges"]]
        pages += 1
        if not connection["pageInfo"]["hasNextPage"]:
            break
        after = connection["pageInfo"]["endCursor"]
    assert pages == 3
    assert seen == [edge["node"]["message"]["id"] for edge in edges]
    # A message added after the first page was read shifts nothing: the next pages hold the
    # rest once each (and the newcomer where its rank puts it).
    first = await search(gql, world.alice.token, "tanglewood", first=3)
    cursor = first["data"]["searchMessages"]["pageInfo"]["endCursor"]
    newcomer = await world.say("apollo-1", "tanglewood tanglewood tanglewood tanglewood")
    rest = await search(gql, world.alice.token, "tanglewood", first=100, after=cursor)
    ids = [edge["node"]["message"]["id"] for edge in rest["data"]["searchMessages"]["edges"]]
    assert [id for id in ids if id != gid("Message", newcomer)] == seen[3:]


# A fixed id: parameter ids must be the same in every pytest-xdist worker.
SOME_ID = "6f1d2c3b-0a4e-4b5c-9d8e-7f6a5b4c3d2e"


def _cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage!",
        _cursor("not a pair"),
        _cursor([[0.5, "2026-03-01T12:00:00+00:00"], "not-a-uuid"]),
        _cursor([["high", "2026-03-01T12:00:00+00:00"], SOME_ID]),
        _cursor([[True, "2026-03-01T12:00:00+00:00"], SOME_ID]),
        _cursor([[0.5, "2026-03-01T12:00:00"], SOME_ID]),
        _cursor([[0.5, "yesterday"], SOME_ID]),
        _cursor([[0.5], SOME_ID]),
        _cursor(["2026-03-01T12:00:00+00:00", SOME_ID]),
        _cursor([[1e300, "2026-03-01T12:00:00+00:00"], SOME_ID]),
        base64.urlsafe_b64encode(
            f'[[NaN, "2026-03-01T12:00:00+00:00"], "{SOME_ID}"]'.encode()
        ).decode(),
    ],
)
async def test_a_malformed_cursor_is_bad_user_input(
    gql: GraphQLClient, world: World, cursor: str
) -> None:
    await world.say("apollo-1", "cursorium")
    body = await search(gql, world.alice.token, "cursorium", after=cursor)
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert body["errors"][0]["extensions"]["field"] == "after"


async def test_statements_do_not_grow_with_the_page_size(
    gql: GraphQLClient, world: World, engine: AsyncEngine
) -> None:
    for index in range(12):
        await world.say(f"apollo-{1 + index % 2}", f"pebblestone number {index}")
    query = """query($n: Int) { searchMessages(query: "pebblestone", first: $n) { totalCount
      edges { node { snippet rank message { id content role } thread { id title } } } } }"""
    counts = {}
    for size in (2, 12):
        with counting_statements(engine) as statements:
            body = await gql(query, {"n": size}, token=world.alice.token)
        assert len(body["data"]["searchMessages"]["edges"]) == size
        counts[size] = len(statements)
    assert counts[2] == counts[12], counts


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    ["", "   ", "x" * 201, "the", "to be or not to be", "!!! ???", "-zebra"],
)
async def test_a_query_without_words_to_find_is_bad_user_input(
    gql: GraphQLClient, world: World, query: str
) -> None:
    body = await search(gql, world.alice.token, query)
    assert error_codes(body) == ["BAD_USER_INPUT"], body
    assert body["errors"][0]["extensions"]["field"] == "query"
    assert body["data"] == {"searchMessages": None}


@pytest.mark.parametrize("query", ["a\x00b", "\ud800", "whale\x00"])
async def test_a_query_with_a_nul_or_a_lone_surrogate_is_refused_before_it_runs(
    gql: GraphQLClient, world: World, query: str
) -> None:
    """The input layer (graph/limits/inputs.py) refuses it, naming the variable it came in."""
    body = await search(gql, world.alice.token, query)
    assert error_codes(body) == ["BAD_USER_INPUT"], body
    assert body["errors"][0]["extensions"]["field"] == "$q"
    assert not body.get("data")


@pytest.mark.parametrize("first", [-1, 101])
async def test_a_page_size_out_of_range_is_bad_user_input(
    gql: GraphQLClient, world: World, first: int
) -> None:
    body = await search(gql, world.alice.token, "zebra", first=first)
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert body["errors"][0]["extensions"]["field"] == "first"


async def test_a_refused_search_leaves_its_siblings_their_data(
    gql: GraphQLClient, world: World
) -> None:
    body = await gql(
        '{ me { id } searchMessages(query: "   ") { totalCount } }', token=world.alice.token
    )
    assert body["data"] == {"me": {"id": world.alice.global_id}, "searchMessages": None}
    assert error_codes(body) == ["BAD_USER_INPUT"]


@pytest.mark.parametrize(
    "query",
    ['"unclosed phrase', "or", "or or or", "-", "a | b", "a & b", "!a", "lumen:*", "(lumen",
     "lumen <-> x", "'lumen'", "\\", "lumen" + "x" * 190, "ΛΟΓΟΣ lumen", "😀 lumen"],
)  # fmt: skip
async def test_whatever_is_typed_is_a_search_or_bad_user_input(
    gql: GraphQLClient, world: World, query: str
) -> None:
    await world.say("apollo-1", "lumen in the dark")
    body = await search(gql, world.alice.token, query)
    if "errors" in body:
        assert error_codes(body) == ["BAD_USER_INPUT"], body
    else:
        assert isinstance(body["data"]["searchMessages"]["edges"], list)
