"""Thread titles (issue 15 part 2): named after the first reply by ATLAS_TITLE_MODEL in the
background, announced as ThreadUpdated, counted in usage (purpose TITLE) and budgets;
generateThreadTitle on demand; failures leave the title and an ErrorLog row. Live server and
the fake OpenAI (its non-streamed Responses and chat calls)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import col

from atlas_gql.ai.events import ThreadPayload, ThreadUpdated, decode_event, encode_event
from atlas_gql.ai.models import Thread
from atlas_gql.ai.titles import clean_title
from atlas_gql.auth.models import User
from atlas_gql.ids import decode_id_of
from atlas_gql.logs.models import ActivityLog, ApiUsageLog, ErrorLog, UsagePurpose
from tests.ai.conftest import AIServer, StartServer
from tests.ai.fake_openai import Behaviour
from tests.conftest import error_codes
from tests.live import EVENTS_SUBSCRIPTION, Subscription, wait_until

TITLE_MODEL = "gpt-4.1-nano"
EVENTS = EVENTS_SUBSCRIPTION.replace(
    "... on MessageDelta { delta }",
    "... on MessageDelta { delta }\n    ... on ThreadUpdated { thread { id title updatedAt } }",
)
GENERATE = """mutation($id: ID!) {
  generateThreadTitle(input: {threadId: $id}) { id title }
}"""
TITLE_QUERY = "query($id: ID!) { thread(id: $id) { title } }"


def _runtime(ai: AIServer) -> Any:
    return ai.server.app.state.atlas["runtime"]


async def _rows(ai: AIServer, statement: Any) -> list[Any]:
    async with _runtime(ai).sessionmaker() as db:
        return list((await db.execute(statement)).scalars())


def _title_calls(ai: AIServer) -> list[Any]:
    return [
        call
        for call in ai.fake.requests
        if call.path in ("/v1/responses", "/v1/chat/completions")
        and isinstance(call.body, dict)
        and not call.body.get("stream")
        and not call.body.get("background")
    ]


async def _titles_settled(ai: AIServer) -> None:
    """Wait for the app's background title tasks (the signal: none left)."""

    def settled() -> bool:
        tasks = _runtime(ai).background_tasks
        return not any((task.get_name() or "").startswith("title-") for task in tasks)

    await wait_until(settled)


async def _reply(ai: AIServer, thread_id: str, subscription: Subscription, text: str) -> None:
    body = await ai.send(thread_id, text)
    assert "errors" not in body, body
    events = await subscription.until_final()
    assert events[-1]["__typename"] == "MessageCompleted", events


async def _title(ai: AIServer, thread_id: str) -> str | None:
    data = await ai.client.data(TITLE_QUERY, {"id": thread_id}, token=ai.people.member)
    title: str | None = data["thread"]["title"]
    return title


async def test_the_first_reply_names_an_untitled_thread(start_ai_server: StartServer) -> None:
    ai = await start_ai_server(atlas_auto_titles=True, atlas_title_model=TITLE_MODEL)
    ai.fake.then_complete(Behaviour(deltas=('"Planning a trip', ' to Lisbon."\n'), output_tokens=5))
    thread_id = await ai.new_thread(title=None)
    async with ai.client.subscribe(ai.people.member, thread_id, query=EVENTS) as subscription:
        await _reply(ai, thread_id, subscription, "Help me plan a trip to Lisbon")
        # The reply's final event came first; the title follows, numbered after it.
        updated = await subscription.event()
    assert updated["__typename"] == "ThreadUpdated"
    assert updated["thread"]["id"] == thread_id
    assert updated["thread"]["title"] == "Planning a trip to Lisbon"
    assert await _title(ai, thread_id) == "Planning a trip to Lisbon"

    (call,) = _title_calls(ai)
    assert call.body["model"] == TITLE_MODEL
    assert call.body["store"] is False
    assert "Help me plan a trip to Lisbon" in call.body["input"]
    assert "Hello, this is ATLAS." in call.body["input"]  # the reply the fake streamed
    (usage,) = await _rows(
        ai,
        sa.select(ApiUsageLog).where(
            col(ApiUsageLog.thread_id) == decode_id_of(thread_id, "Thread"),
            col(ApiUsageLog.purpose) == UsagePurpose.TITLE,
        ),
    )
    assert (usage.model, usage.output_tokens, usage.status) == (TITLE_MODEL, 5, "completed")
    assert usage.message_id == decode_id_of(updated["messageId"], "Message")
    # apiUsage groups and filters by purpose.
    data = await ai.client.data(
        """query($project: ID!) { apiUsage(groupBy: PURPOSE, filter: {projectId: $project,
             purpose: TITLE}) { key requests outputTokens } }""",
        {"project": ai.people.project_id},
        token=ai.people.admin,
    )
    assert [bucket["key"] for bucket in data["apiUsage"]] == ["TITLE"]
    assert data["apiUsage"][0]["requests"] >= 1

    # A second reply does not name the thread again.
    async with ai.client.subscribe(ai.people.member, thread_id, query=EVENTS) as subscription:
        await _reply(ai, thread_id, subscription, "And Porto?")
    await _titles_settled(ai)
    assert len(_title_calls(ai)) == 1


async def test_a_failed_title_call_leaves_the_thread_untitled(start_ai_server: StartServer) -> None:
    ai = await start_ai_server(atlas_auto_titles=True)
    ai.fake.then_complete(Behaviour(kind="http_error", status=503, error_message="overloaded"))
    thread_id = await ai.new_thread(title=None)
    async with ai.client.subscribe(ai.people.member, thread_id, query=EVENTS) as subscription:
        await _reply(ai, thread_id, subscription, "Hello")
    path = f"title/{thread_id}"

    async def logged() -> bool:
        return bool(await _rows(ai, sa.select(ErrorLog).where(col(ErrorLog.path) == path)))

    await wait_until(logged)
    (error,) = await _rows(ai, sa.select(ErrorLog).where(col(ErrorLog.path) == path))
    assert error.upstream_status == 503
    assert error.details["purpose"] == "TITLE"
    assert await _title(ai, thread_id) is None
    assert len(_title_calls(ai)) == 1


async def test_titles_off_and_titled_threads_make_no_title_call(ai: AIServer) -> None:
    """ATLAS_AUTO_TITLES=false (the test kit's default) and a thread with a title: no call."""
    untitled = await ai.new_thread(title=None)
    async with ai.client.subscribe(ai.people.member, untitled, query=EVENTS) as subscription:
        await _reply(ai, untitled, subscription, "Hello")
    await _titles_settled(ai)
    assert _title_calls(ai) == []
    assert await _title(ai, untitled) is None


async def test_generate_thread_title_on_demand(ai: AIServer) -> None:
    people = ai.people
    thread_id = await ai.new_thread(title="Old name")
    refused = await ai.client.gql(GENERATE, {"id": thread_id}, token=people.member)
    assert error_codes(refused) == ["CONFLICT"]  # no reply to name it after yet
    async with ai.client.subscribe(people.member, thread_id, query=EVENTS) as subscription:
        await _reply(ai, thread_id, subscription, "What is a GraphQL fragment?")
        ai.fake.then_complete(Behaviour(deltas=("GraphQL fragments explained",)))
        body = await ai.client.gql(GENERATE, {"id": thread_id}, token=people.member)
        assert body["data"]["generateThreadTitle"] == {
            "id": thread_id, "title": "GraphQL fragments explained",
        }  # fmt: skip
        updated = await subscription.event()
    assert updated["__typename"] == "ThreadUpdated"
    assert updated["thread"]["title"] == "GraphQL fragments explained"
    (activity,) = await _rows(
        ai,
        sa.select(ActivityLog).where(
            col(ActivityLog.action) == "thread.title",
            col(ActivityLog.entity_id) == str(decode_id_of(thread_id, "Thread")),
        ),
    )
    assert activity.details == {"model": ai.server.settings.atlas_title_model}

    # Wrong viewers: hidden thread NOT_FOUND, a project VIEWER may not rename: FORBIDDEN.
    for token, code in ((people.outsider, "NOT_FOUND"), (people.viewer, "FORBIDDEN")):
        body = await ai.client.gql(GENERATE, {"id": thread_id}, token=token)
        assert error_codes(body) == [code], body
    body = await ai.client.gql(GENERATE, {"id": "nonsense"}, token=people.member)
    assert error_codes(body) == ["BAD_USER_INPUT"]

    # Upstream failures: UPSTREAM_ERROR, the title stays, an ErrorLog row each.
    ai.fake.then_complete(Behaviour(kind="http_error", status=500), Behaviour(kind="empty"))
    for _ in range(2):
        body = await ai.client.gql(GENERATE, {"id": thread_id}, token=people.member)
        assert error_codes(body) == ["UPSTREAM_ERROR"], body
    assert await _title(ai, thread_id) == "GraphQL fragments explained"
    errors = await _rows(ai, sa.select(ErrorLog).where(col(ErrorLog.path) == f"title/{thread_id}"))
    assert len(errors) == 2
    # The empty answer still cost tokens: counted, as failed.
    usage = await _rows(
        ai,
        sa.select(col(ApiUsageLog.status)).where(
            col(ApiUsageLog.thread_id) == decode_id_of(thread_id, "Thread"),
            col(ApiUsageLog.purpose) == UsagePurpose.TITLE,
        ),
    )
    assert sorted(usage) == ["completed", "failed"]


async def test_generate_thread_title_respects_the_budget(ai: AIServer) -> None:
    manager = ai.people.manager
    thread_id = await ai.new_thread(token=manager)
    async with ai.client.subscribe(manager, thread_id, query=EVENTS) as subscription:
        body = await ai.send(thread_id, "Hi", token=manager)
        assert "errors" not in body, body
        await subscription.until_final()
    async with _runtime(ai).sessionmaker() as db:
        owner = await db.get(Thread, decode_id_of(thread_id, "Thread"))
        assert owner is not None
        user = await db.get(User, owner.created_by_id)
        assert user is not None
        user.monthly_token_budget = 1  # the reply used more
        await db.commit()
    body = await ai.client.gql(GENERATE, {"id": thread_id}, token=manager)
    assert error_codes(body) == ["QUOTA_EXCEEDED"], body
    assert body["errors"][0]["extensions"]["budget"] == "USER"
    assert _title_calls(ai) == []


async def test_titles_on_the_chat_completions_adapter(start_ai_server: StartServer) -> None:
    ai = await start_ai_server(atlas_openai_api="chat", atlas_auto_titles=True)
    ai.fake.then_complete(Behaviour(deltas=("Title: Small talk",)))
    thread_id = await ai.new_thread(title=None)
    async with ai.client.subscribe(ai.people.member, thread_id, query=EVENTS) as subscription:
        await _reply(ai, thread_id, subscription, "How are you?")
        updated = await subscription.event()
    assert updated["thread"]["title"] == "Small talk"
    (call,) = _title_calls(ai)
    assert call.path == "/v1/chat/completions"
    assert call.body["messages"][1]["content"].startswith("User: How are you?")


def test_clean_title_keeps_a_few_words_of_the_first_line() -> None:
    assert clean_title('  "Planning a trip."\nSecond line') == "Planning a trip"
    assert clean_title("**Title: Small   talk**") == "Small talk"
    assert clean_title("\u201cCaf\u00e9 au lait\u201d") == "Caf\u00e9 au lait"
    assert clean_title(" \n  \n") is None
    assert clean_title("x" * 500) == "x" * 300


def test_thread_updated_survives_the_redis_codec() -> None:
    now = datetime.now(UTC)
    event = ThreadUpdated(
        sequence=7,
        thread_id=uuid.uuid4(),
        message_id=uuid.uuid4(),
        thread=ThreadPayload(
            id=uuid.uuid4(), title="A title", created_by_id=uuid.uuid4(), created_at=now,
            updated_at=now,
        ),
    )  # fmt: skip
    assert decode_event(encode_event(event)) == event


async def test_thread_updated_shows_the_threads_active_leaf(ai: AIServer) -> None:
    """The thread in a ThreadUpdated event is the thread as it is: its `activeLeaf` (issue 15
    part 1) is the reply the thread ends with, as `thread(id)` answers, not null."""
    events = EVENTS.replace("thread { id title updatedAt }", "thread { id activeLeaf { id } }")
    thread_id = await ai.new_thread(title="Old name")
    async with ai.client.subscribe(ai.people.member, thread_id, query=events) as subscription:
        await _reply(ai, thread_id, subscription, "What is a GraphQL fragment?")
        ai.fake.then_complete(Behaviour(deltas=("GraphQL fragments explained",)))
        body = await ai.client.gql(GENERATE, {"id": thread_id}, token=ai.people.member)
        assert "errors" not in body, body
        updated = await subscription.event()
    assert updated["__typename"] == "ThreadUpdated"
    read = await ai.client.data(
        "query($id: ID!) { thread(id: $id) { activeLeaf { id } } }",
        {"id": thread_id},
        token=ai.people.member,
    )
    assert read["thread"]["activeLeaf"] is not None
    assert updated["thread"]["activeLeaf"] == read["thread"]["activeLeaf"]
    assert updated["thread"]["activeLeaf"]["id"] == updated["messageId"]


async def test_generate_thread_title_reads_the_branch_shown(ai: AIServer) -> None:
    """The title is drawn from the branch the thread shows (root to `activeLeaf`), not from
    the oldest reply of the tree: an edited question's branch names the thread, and switching
    back names it after the original again."""
    people = ai.people
    thread_id = await ai.new_thread(title="Old name")
    ai.fake.then(Behaviour(deltas=("About cats.",)))
    async with ai.client.subscribe(people.member, thread_id) as subscription:
        await _reply(ai, thread_id, subscription, "Tell me about cats")
    original = (
        await ai.client.data(
            "query($id: ID!) { thread(id: $id) { messages { nodes { id role } } } }",
            {"id": thread_id},
            token=people.member,
        )
    )["thread"]["messages"]["nodes"][0]
    assert original["role"] == "USER"
    ai.fake.then(Behaviour(deltas=("About dogs.",)))
    async with ai.client.subscribe(people.member, thread_id) as subscription:
        body = await ai.client.gql(
            "mutation($id: ID!) { editMessage(input: {messageId: $id, "
            'content: "Tell me about dogs"}) { assistantMessage { id } } }',
            {"id": original["id"]},
            token=people.member,
        )
        assert "errors" not in body, body
        # The subscription replays the kept events first (the earlier reply's final one
        # too): wait for the final event of the edited question's reply.
        reply_id = body["data"]["editMessage"]["assistantMessage"]["id"]
        while (await subscription.until_final())[-1]["messageId"] != reply_id:
            pass

    assert await _titled_after(ai, thread_id, "dogs") == "User: Tell me about dogs"

    # Back on the original branch: named after it.
    selected = await ai.client.gql(
        "mutation($id: ID!) { selectBranch(input: {messageId: $id}) { id } }",
        {"id": original["id"]},
        token=people.member,
    )
    assert "errors" not in selected, selected
    assert await _titled_after(ai, thread_id, "cats") == "User: Tell me about cats"


async def _titled_after(ai: AIServer, thread_id: str, animal: str) -> str:
    """generateThreadTitle, the model answering `animal` capitalised; the prompt's first line
    (the question), after checking the prompt holds that exchange only."""
    title = animal.capitalize()
    ai.fake.then_complete(Behaviour(deltas=(title,)))
    body = await ai.client.gql(GENERATE, {"id": thread_id}, token=ai.people.member)
    assert body["data"]["generateThreadTitle"]["title"] == title, body
    prompt: str = _title_calls(ai)[-1].body["input"]
    assert f"About {animal}." in prompt
    other = {"cats": "dogs", "dogs": "cats"}[animal]
    assert other not in prompt
    return prompt.splitlines()[0]
