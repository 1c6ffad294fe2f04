"""Assistant tools (issue 16): FILE_SEARCH over attached files with citations, WEB_SEARCH
with URL citations, tool activity on `threadEvents`, the vector stores kept in step with
attachments, who gets answers from which files, tool calls on usage rows, and the faults
(indexing fails, a tool call fails mid-stream, the chat adapter refuses tools)."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlmodel import col

from atlas_gql.ai.models import Assistant, Thread
from atlas_gql.logs.audit import ErrorLogPolicy
from atlas_gql.logs.models import ApiUsageLog, ErrorLog, ErrorSource
from tests.ai.conftest import AIServer, StartServer
from tests.ai.fake_openai import Behaviour
from tests.ai.fake_tools import WEB_TITLE, WEB_URL
from tests.ai.test_files import upload
from tests.ai.test_replies import rows, uuid_of
from tests.conftest import error_codes
from tests.live import wait_until

SECRET = b"The launch code of project Falcon is 7-4-1-9."

CREATE_ASSISTANT = """
mutation($input: CreateAssistantInput!) {
  createAssistant(input: $input) { id tools }
}"""
UPDATE_ASSISTANT = """
mutation($id: ID!, $input: UpdateAssistantInput!) {
  updateAssistant(id: $id, input: $input) { id tools }
}"""
ATTACH = "mutation($f: ID!, $t: ID!) { attachFile(fileId: $f, targetId: $t) { id indexStatus } }"
DETACH = "mutation($f: ID!, $t: ID!) { detachFile(fileId: $f, targetId: $t) { id indexStatus } }"
FILE = "query($id: ID!) { node(id: $id) { ... on File { id indexStatus indexError } } }"
CREATE_THREAD = """
mutation($input: CreateThreadInput!) { createThread(input: $input) { id } }"""
TOOL_EVENTS = """
subscription Events($threadId: ID!, $after: Int) {
  threadEvents(threadId: $threadId, afterSequence: $after) {
    __typename sequence messageId
    ... on MessageDelta { delta }
    ... on ToolCallStarted { callId tool query }
    ... on ToolCallCompleted { callId tool status query resultCount }
    ... on MessageCompleted {
      message { id content citations { kind title url quote startIndex endIndex file { id } } }
    }
    ... on MessageFailed { error message { id status } }
    ... on MessageCancelled { error message { id status } }
  }
}"""
MESSAGE_CITATIONS = """
query($id: ID!) {
  node(id: $id) { ... on Message { content citations { kind title file { id filename } } } }
}"""


async def assistant_with(
    ai: AIServer, tools: list[str], *, token: str, project_id: str | None = None
) -> str:
    data = await ai.client.data(
        CREATE_ASSISTANT,
        {"input": {"name": "Librarian", "tools": tools, "projectId": project_id}},
        token=token,
    )
    assert data["createAssistant"]["tools"] == tools
    assistant_id: str = data["createAssistant"]["id"]
    return assistant_id


async def indexed_file(
    ai: AIServer, target_id: str, *, token: str, name: str = "falcon.txt"
) -> str:
    """Upload SECRET as `name`, attach it to `target_id` and wait until it is indexed."""
    response = await upload(ai, SECRET, token=token, filename=name)
    file_id: str = response.json()["data"]["uploadFile"]["id"]
    attached = await ai.client.data(ATTACH, {"f": file_id, "t": target_id}, token=token)
    assert attached["attachFile"]["indexStatus"] == "IN_PROGRESS"
    await wait_until(lambda: status_is(ai, file_id, token, "COMPLETED"))
    return file_id


async def index_error_logged(ai: AIServer, file_id: str) -> ErrorLog:
    """The ErrorLog row of a file's failed indexing, once written: it is stored after the
    file's FAILED status (a transaction of its own), so a test that saw FAILED waits for it."""
    statement = sa.select(ErrorLog).where(col(ErrorLog.path) == f"index/{file_id}")
    await wait_until(lambda: rows(ai, statement))
    [logged] = await rows(ai, statement)
    assert isinstance(logged, ErrorLog)
    return logged


async def status_is(ai: AIServer, file_id: str, token: str, status: str) -> bool:
    """The file's indexStatus is `status` (a condition for `wait_until`)."""
    node = (await ai.client.data(FILE, {"id": file_id}, token=token))["node"]
    return bool(node["indexStatus"] == status)


async def thread_with(ai: AIServer, assistant_id: str, *, token: str, project: bool = True) -> str:
    project_id = ai.people.project_id if project else None
    data = await ai.client.data(
        CREATE_THREAD,
        {"input": {"assistantId": assistant_id, "projectId": project_id}},
        token=token,
    )
    thread_id: str = data["createThread"]["id"]
    return thread_id


async def exchange(
    ai: AIServer, thread_id: str, *, token: str, content: str = "What is the launch code?"
) -> list[dict[str, Any]]:
    """Send a message and return the reply's events up to its final one."""
    async with ai.client.subscribe(
        token, thread_id, after_sequence=None, query=TOOL_EVENTS
    ) as subscription:
        body = await ai.send(thread_id, content, token=token)
        assert "errors" not in body, body
        return await subscription.until_final()


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [event["__typename"] for event in events]


async def store_of(ai: AIServer, assistant_id: str) -> str:
    [store] = await rows(
        ai,
        sa.select(col(Assistant.vector_store_id)).where(col(Assistant.id) == uuid_of(assistant_id)),
    )
    assert store is not None
    return str(store)


async def test_file_search_cites_the_attached_file(ai: AIServer) -> None:
    people = ai.people
    assistant_id = await assistant_with(
        ai, ["FILE_SEARCH"], token=people.manager, project_id=people.project_id
    )
    file_id = await indexed_file(ai, assistant_id, token=people.manager)
    store_id = await store_of(ai, assistant_id)
    thread_id = await thread_with(ai, assistant_id, token=people.member)

    events = await exchange(ai, thread_id, token=people.member)

    # Tool activity comes before the text, numbered like every event.
    assert kinds(events)[:4] == [
        "MessageCreated",
        "MessageCreated",
        "ToolCallStarted",
        "ToolCallCompleted",
    ]
    assert kinds(events)[4] == "MessageDelta"
    assert kinds(events)[-1] == "MessageCompleted"
    sequences = [event["sequence"] for event in events]
    assert sequences == sorted(set(sequences))
    started, completed = events[2], events[3]
    assert started["tool"] == completed["tool"] == "FILE_SEARCH"
    assert started["callId"] == completed["callId"]
    assert completed["status"] == "COMPLETED"
    assert completed["query"] == "What is the launch code?"
    assert completed["resultCount"] == 1

    final = events[-1]["message"]
    assert SECRET.decode()[:40] in final["content"]
    [citation] = final["citations"]
    assert citation["kind"] == "FILE"
    assert citation["file"] == {"id": file_id}
    assert citation["title"] == "falcon.txt"
    assert citation["quote"] == SECRET.decode()
    assert citation["startIndex"] == citation["endIndex"] == len(final["content"])
    # Stored with the message.
    stored = (await ai.client.data(MESSAGE_CITATIONS, {"id": final["id"]}, token=people.viewer))[
        "node"
    ]
    assert stored["citations"] == [
        {"kind": "FILE", "title": "falcon.txt", "file": {"id": file_id, "filename": "falcon.txt"}}
    ]

    # The request: file search over the assistant's store (the thread has none), with results.
    call = ai.fake.calls("/v1/responses")[-1]
    assert call.body["tools"] == [{"type": "file_search", "vector_store_ids": [store_id]}]
    assert call.body["include"] == ["file_search_call.results"]

    # The call is priced on the usage row, and apiUsage shows it.
    [usage] = await rows(
        ai, sa.select(ApiUsageLog).where(col(ApiUsageLog.message_id) == uuid_of(final["id"]))
    )
    assert (usage.file_search_calls, usage.web_search_calls) == (1, 0)
    assert usage.tool_cost_usd == Decimal("0.002500")
    assert usage.cost_usd > usage.tool_cost_usd
    usage_query = """
    query($filter: ApiUsageFilter) {
      apiUsage(filter: $filter, groupBy: PROJECT) { fileSearchCalls webSearchCalls toolCostUsd }
    }"""
    buckets = (
        await ai.client.data(
            usage_query, {"filter": {"projectId": people.project_id}}, token=people.manager
        )
    )["apiUsage"]
    assert buckets[0]["fileSearchCalls"] >= 1
    assert buckets[0]["toolCostUsd"] >= 0.0025


async def test_detached_files_are_no_longer_cited(ai: AIServer) -> None:
    people = ai.people
    assistant_id = await assistant_with(ai, ["FILE_SEARCH"], token=people.member)
    thread_id = await thread_with(ai, assistant_id, token=people.member, project=False)
    # A file of the thread itself: the thread gets a store of its own.
    file_id = await indexed_file(ai, thread_id, token=people.member, name="thread-notes.txt")
    [thread_store] = await rows(
        ai, sa.select(col(Thread.vector_store_id)).where(col(Thread.id) == uuid_of(thread_id))
    )
    events = await exchange(ai, thread_id, token=people.member)
    assert [c["file"] for c in events[-1]["message"]["citations"]] == [{"id": file_id}]

    detached = await ai.client.data(DETACH, {"f": file_id, "t": thread_id}, token=people.member)
    assert detached["detachFile"]["indexStatus"] is None
    store = ai.fake.vector_stores.stores[thread_store]
    await wait_until(lambda: not store.files)

    events = await exchange(ai, thread_id, token=people.member)
    final = events[-1]["message"]
    assert final["citations"] == []
    assert SECRET.decode()[:20] not in final["content"]
    [completed] = [e for e in events if e["__typename"] == "ToolCallCompleted"]
    assert completed["resultCount"] == 0


async def test_another_projects_user_never_gets_the_file(ai: AIServer) -> None:
    people = ai.people
    shared = await assistant_with(
        ai, ["FILE_SEARCH"], token=people.manager, project_id=people.project_id
    )
    await indexed_file(ai, shared, token=people.manager)
    shared_store = await store_of(ai, shared)

    # A user outside the project, with their own assistant and thread.
    own = await assistant_with(ai, ["FILE_SEARCH"], token=people.outsider)
    await indexed_file(ai, own, token=people.outsider, name="mine.txt")
    own_store = await store_of(ai, own)
    thread_id = await thread_with(ai, own, token=people.outsider, project=False)
    events = await exchange(ai, thread_id, token=people.outsider)
    call = ai.fake.calls("/v1/responses")[-1]
    assert call.body["tools"] == [{"type": "file_search", "vector_store_ids": [own_store]}]
    [citation] = events[-1]["message"]["citations"]
    assert citation["title"] == "mine.txt"
    assert shared_store not in str(call.body)
    # They cannot use the project's assistant either.
    body = await ai.client.gql(
        CREATE_THREAD, {"input": {"assistantId": shared}}, token=people.outsider
    )
    assert error_codes(body) == ["NOT_FOUND"]


async def test_a_personal_assistants_files_serve_only_its_creator(ai: AIServer) -> None:
    """A manager's personal assistant in a project thread: the members post there, but only
    the manager's replies read the assistant's files (the others may not see them)."""
    people = ai.people
    personal = await assistant_with(ai, ["FILE_SEARCH"], token=people.manager)
    await indexed_file(ai, personal, token=people.manager)
    store = await store_of(ai, personal)
    thread_id = await thread_with(ai, personal, token=people.manager)

    events = await exchange(ai, thread_id, token=people.member)
    assert "tools" not in ai.fake.calls("/v1/responses")[-1].body
    assert events[-1]["message"]["citations"] == []
    assert SECRET.decode()[:20] not in events[-1]["message"]["content"]

    events = await exchange(ai, thread_id, token=people.manager)
    call = ai.fake.calls("/v1/responses")[-1]
    assert call.body["tools"] == [{"type": "file_search", "vector_store_ids": [store]}]
    assert [c["kind"] for c in events[-1]["message"]["citations"]] == ["FILE"]


async def test_web_search_gives_url_citations(ai: AIServer) -> None:
    people = ai.people
    assistant_id = await assistant_with(ai, ["WEB_SEARCH"], token=people.member)
    thread_id = await thread_with(ai, assistant_id, token=people.member, project=False)
    events = await exchange(ai, thread_id, token=people.member, content="Search ATLAS")

    started, completed = events[2], events[3]
    assert (started["__typename"], started["tool"]) == ("ToolCallStarted", "WEB_SEARCH")
    assert completed["query"] == "Search ATLAS"
    assert completed["resultCount"] == 1
    final = events[-1]["message"]
    [citation] = final["citations"]
    assert citation["kind"] == "URL"
    assert (citation["url"], citation["title"], citation["quote"]) == (
        WEB_URL,
        WEB_TITLE,
        WEB_TITLE,
    )
    assert final["content"][citation["startIndex"] : citation["endIndex"]] == WEB_TITLE
    assert citation["file"] is None
    call = ai.fake.calls("/v1/responses")[-1]
    assert call.body["tools"] == [{"type": "web_search"}]
    [usage] = await rows(
        ai, sa.select(ApiUsageLog).where(col(ApiUsageLog.message_id) == uuid_of(final["id"]))
    )
    assert (usage.file_search_calls, usage.web_search_calls) == (0, 1)
    assert usage.tool_cost_usd == Decimal("0.010000")


async def test_chat_adapter_refuses_tools(start_ai_server: StartServer) -> None:
    ai = await start_ai_server(atlas_openai_api="chat")
    variables = {"input": {"name": "Tooled", "tools": ["FILE_SEARCH"]}}
    body = await ai.client.gql(CREATE_ASSISTANT, variables, token=ai.people.member)
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert body["errors"][0]["extensions"]["field"] == "tools"
    assert "no built-in tools" in body["errors"][0]["message"]
    created = await ai.client.data(
        CREATE_ASSISTANT, {"input": {"name": "Plain"}}, token=ai.people.member
    )
    assistant_id = created["createAssistant"]["id"]
    assert created["createAssistant"]["tools"] == []
    body = await ai.client.gql(
        UPDATE_ASSISTANT,
        {"id": assistant_id, "input": {"tools": ["WEB_SEARCH"]}},
        token=ai.people.member,
    )
    assert error_codes(body) == ["BAD_USER_INPUT"]
    # Files attached on this adapter are not indexed (no vector stores).
    response = await upload(ai, b"plain", token=ai.people.member)
    file_id = response.json()["data"]["uploadFile"]["id"]
    attached = await ai.client.data(
        ATTACH, {"f": file_id, "t": assistant_id}, token=ai.people.member
    )
    assert attached["attachFile"]["indexStatus"] is None
    assert ai.fake.calls("/v1/vector_stores") == []


async def test_only_managers_enable_tools_on_a_project_assistant(ai: AIServer) -> None:
    people = ai.people
    variables = {"id": people.assistant_id, "input": {"tools": ["FILE_SEARCH", "WEB_SEARCH"]}}
    body = await ai.client.gql(UPDATE_ASSISTANT, variables, token=people.member)
    assert error_codes(body) == ["FORBIDDEN"]
    body = await ai.client.gql(UPDATE_ASSISTANT, variables, token=people.outsider)
    assert error_codes(body) == ["NOT_FOUND"]
    created = await ai.client.gql(
        CREATE_ASSISTANT,
        {"input": {"name": "x", "tools": ["WEB_SEARCH"], "projectId": people.project_id}},
        token=people.member,
    )
    assert error_codes(created) == ["FORBIDDEN"]
    # Each tool once, in a fixed order; null clears.
    twice = {"id": people.assistant_id, "input": {"tools": ["WEB_SEARCH", "FILE_SEARCH"] * 2}}
    data = await ai.client.data(UPDATE_ASSISTANT, twice, token=people.manager)
    assert data["updateAssistant"]["tools"] == ["FILE_SEARCH", "WEB_SEARCH"]
    cleared = {"id": people.assistant_id, "input": {"tools": None}}
    data = await ai.client.data(UPDATE_ASSISTANT, cleared, token=people.manager)
    assert data["updateAssistant"]["tools"] == []
    body = await ai.client.gql(
        UPDATE_ASSISTANT, {"id": people.assistant_id, "input": {"tools": ["CODE"]}},
        token=people.manager,
    )  # fmt: skip
    assert error_codes(body) == ["BAD_USER_INPUT"]


async def test_indexing_failure_is_reported(ai: AIServer) -> None:
    people = ai.people
    ai.fake.vector_stores.failing.add("broken.pdf")
    ai.fake.vector_stores.pending = True  # failed only when polled
    assistant_id = await assistant_with(ai, ["FILE_SEARCH"], token=people.member)
    response = await upload(ai, b"%PDF broken", token=people.member, filename="broken.pdf")
    file_id = response.json()["data"]["uploadFile"]["id"]
    await ai.client.data(ATTACH, {"f": file_id, "t": assistant_id}, token=people.member)
    await wait_until(lambda: status_is(ai, file_id, people.member, "FAILED"))
    node = (await ai.client.data(FILE, {"id": file_id}, token=people.member))["node"]
    assert node["indexError"] == "The AI provider could not index the file for file search."
    logged = await index_error_logged(ai, file_id)
    assert logged.source is ErrorSource.UPSTREAM
    assert "could not be parsed" in logged.message

    # Attaching again retries (the provider succeeds this time).
    ai.fake.vector_stores.failing.clear()
    await ai.client.data(ATTACH, {"f": file_id, "t": assistant_id}, token=people.member)
    await wait_until(lambda: status_is(ai, file_id, people.member, "COMPLETED"))


async def test_a_tool_call_failing_mid_stream_fails_the_reply(ai: AIServer) -> None:
    people = ai.people
    assistant_id = await assistant_with(ai, ["WEB_SEARCH"], token=people.member)
    thread_id = await thread_with(ai, assistant_id, token=people.member, project=False)
    ai.fake.then(Behaviour(kind="tool_failed"))
    events = await exchange(ai, thread_id, token=people.member)
    assert kinds(events)[2:] == ["ToolCallStarted", "ToolCallCompleted", "MessageFailed"]
    assert events[3]["status"] == "FAILED"
    assert events[-1]["message"]["status"] == "FAILED"
    assert events[-1]["error"] == "The AI provider could not complete the reply."
    [usage] = await rows(
        ai,
        sa.select(ApiUsageLog).where(
            col(ApiUsageLog.message_id) == uuid_of(events[-1]["messageId"])
        ),
    )
    assert usage.web_search_calls == 1
    assert usage.tool_cost_usd == Decimal("0.010000")
    [logged] = await rows(
        ai,
        sa.select(ErrorLog).where(col(ErrorLog.path) == f"reply/{events[-1]['messageId']}"),
    )
    assert "tool call failed" in logged.message


async def test_tool_events_replay_and_cancel_like_deltas(ai: AIServer) -> None:
    people = ai.people
    assistant_id = await assistant_with(ai, ["WEB_SEARCH"], token=people.member)
    thread_id = await thread_with(ai, assistant_id, token=people.member, project=False)
    ai.fake.delta_permits = asyncio.Semaphore(0)  # the text waits; the tool call runs
    body = await ai.send(thread_id, "Search and wait", token=people.member)
    payload = body["data"]["sendMessage"]
    reply_id = payload["assistantMessage"]["id"]
    # A client joining late replays the tool events with the numbers they had.
    async with ai.client.subscribe(
        people.member, thread_id, after_sequence=payload["afterSequence"], query=TOOL_EVENTS
    ) as late:
        replayed = [await late.event() for _ in range(4)]
        assert kinds(replayed) == [
            "MessageCreated",
            "MessageCreated",
            "ToolCallStarted",
            "ToolCallCompleted",
        ]
        assert all(event["messageId"] == reply_id for event in replayed[2:])
        cancel = "mutation($id: ID!) { cancelMessage(id: $id) { status } }"
        cancelled = await ai.client.data(cancel, {"id": reply_id}, token=people.member)
        assert cancelled["cancelMessage"]["status"] == "CANCELLED"
        final = await late.event()
        assert final["__typename"] == "MessageCancelled"
        assert final["sequence"] > replayed[-1]["sequence"]
    # The call is billed even though the reply was cancelled.
    await wait_until(
        lambda: rows(
            ai,
            sa.select(ApiUsageLog).where(col(ApiUsageLog.message_id) == uuid_of(reply_id)),
        )
    )


async def test_deleting_owners_and_files_empties_the_stores(ai: AIServer) -> None:
    people = ai.people
    assistant_id = await assistant_with(ai, ["FILE_SEARCH"], token=people.member)
    file_id = await indexed_file(ai, assistant_id, token=people.member)
    other = await assistant_with(ai, ["FILE_SEARCH"], token=people.member)
    await ai.client.data(ATTACH, {"f": file_id, "t": other}, token=people.member)
    await wait_until(lambda: status_is(ai, file_id, people.member, "COMPLETED"))
    store, other_store = await store_of(ai, assistant_id), await store_of(ai, other)
    stores = ai.fake.vector_stores
    await wait_until(lambda: other_store in stores.stores and stores.stores[other_store].files)

    delete = "mutation($id: ID!) { deleteAssistant(id: $id) }"
    await ai.client.data(delete, {"id": assistant_id}, token=people.member)
    await wait_until(lambda: store in stores.deleted)
    # Deleting the file takes it out of the stores still holding it.
    await ai.client.data(
        "mutation($id: ID!) { deleteFile(id: $id) }", {"id": file_id}, token=people.member
    )
    assert stores.stores[other_store].files == {}


async def test_indexing_failures_fold_by_the_configured_window(
    start_ai_server: StartServer,
) -> None:
    """An indexing failure's ErrorLog row is folded by ATLAS_ERROR_LOG_WINDOW_SECONDS (issue 10
    part 8), like every other error: a day's window starts at midnight UTC."""
    ai = await start_ai_server(atlas_error_log_window_seconds=86_400)
    people = ai.people
    ai.fake.vector_stores.failing.add("broken.pdf")
    assistant_id = await assistant_with(ai, ["FILE_SEARCH"], token=people.member)
    response = await upload(ai, b"%PDF broken", token=people.member, filename="broken.pdf")
    file_id = response.json()["data"]["uploadFile"]["id"]
    await ai.client.data(ATTACH, {"f": file_id, "t": assistant_id}, token=people.member)
    await wait_until(lambda: status_is(ai, file_id, people.member, "FAILED"))
    logged = await index_error_logged(ai, file_id)
    assert logged.window_start == ErrorLogPolicy(window_seconds=86_400).window_start(
        logged.window_start
    )
    assert (logged.window_start.hour, logged.window_start.minute) == (0, 0)


async def test_a_cited_passage_postgresql_cannot_store_is_kept_replaced(ai: AIServer) -> None:
    """A file's passage with a NUL byte, quoted by file search: the reply completes with the
    citation, U+FFFD in the NUL's place (JSONB refuses \\u0000: the reply used to stay
    IN_PROGRESS, its completion refused by PostgreSQL)."""
    people = ai.people
    assistant_id = await assistant_with(ai, ["FILE_SEARCH"], token=people.member)
    response = await upload(ai, b"Code\x00 7-4-1-9.", token=people.member, filename="nul.txt")
    file_id = response.json()["data"]["uploadFile"]["id"]
    await ai.client.data(ATTACH, {"f": file_id, "t": assistant_id}, token=people.member)
    await wait_until(lambda: status_is(ai, file_id, people.member, "COMPLETED"))
    thread_id = await thread_with(ai, assistant_id, token=people.member, project=False)

    events = await exchange(ai, thread_id, token=people.member)
    assert kinds(events)[-1] == "MessageCompleted", events[-1]
    final = events[-1]["message"]
    [citation] = final["citations"]
    assert citation["quote"] == "Code\ufffd 7-4-1-9."
    stored = await ai.client.data(MESSAGE_CITATIONS, {"id": final["id"]}, token=people.member)
    assert stored["node"]["citations"] == [
        {"kind": "FILE", "title": "nul.txt", "file": {"id": file_id, "filename": "nul.txt"}}
    ]
