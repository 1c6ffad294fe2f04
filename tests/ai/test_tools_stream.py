"""Tool events on the raw Responses stream (sse.py + ResponsesStreamReader + tool_items.py),
checked against the SDK's own parsing of the same bytes and its types: file_search_call and
web_search_call items and events, annotations, tool counts, a tool call failing mid-stream."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.responses import ResponseFileSearchToolCall, ResponseFunctionWebSearch

from atlas_gql.ai.models import AssistantTool, MessageStatus
from atlas_gql.ai.provider import (
    PROVIDER_FAILED_ERROR,
    ReplyDelta,
    ReplyDone,
    ReplyRequest,
    tool_arguments,
)
from atlas_gql.ai.tool_items import (
    QUOTE_MAX,
    ToolCallItem,
    citation_of,
    citations_of,
    tool_call_of,
)
from tests.ai.fake_openai import Behaviour, FakeOpenAI
from tests.ai.fake_tools import WEB_TITLE, WEB_URL, FakeStore, StoreFile
from tests.ai.test_upstream_stream import read, sdk_events

CONTENT = b"Falcon launches on Tuesday at dawn."


def fake_with_a_store() -> tuple[FakeOpenAI, str]:
    fake = FakeOpenAI()
    store = FakeStore(id="vs_1", name="assistant")
    store.files["file-1"] = StoreFile("file-1", "falcon.txt", CONTENT, "completed")
    # A file still indexing is not found.
    store.files["file-2"] = StoreFile("file-2", "later.txt", b"not yet", "in_progress")
    fake.vector_stores.stores[store.id] = store
    return fake, store.id


def body_with_tools(store_id: str) -> dict[str, Any]:
    request = ReplyRequest(
        model="gpt-4o-mini",
        instructions=None,
        temperature=None,
        content="When does Falcon launch?",
        tools=(AssistantTool.FILE_SEARCH, AssistantTool.WEB_SEARCH),
        vector_store_ids=[store_id],
    )
    return {
        "model": "gpt-4o-mini",
        "input": [{"type": "message", "role": "user",
                   "content": [{"type": "input_text", "text": request.content}]}],
        **tool_arguments(request),
    }  # fmt: skip


async def wire(fake: FakeOpenAI, body: dict[str, Any], behaviour: Behaviour) -> bytes:
    return b"".join([chunk async for chunk in fake._response_event_lines(body, behaviour)])


@pytest.mark.parametrize("size", [3, 64, None])
async def test_tool_calls_and_citations_agree_with_the_sdk(size: int | None) -> None:
    fake, store_id = fake_with_a_store()
    data = await wire(fake, body_with_tools(store_id), Behaviour())
    sdk = sdk_events(data)
    items, reader = read(data, size)

    calls = [item for item in items if isinstance(item, ToolCallItem)]
    # Each call starts once (its item and its in_progress event announce it) and ends once.
    assert [(c.tool, c.done) for c in calls] == [
        (AssistantTool.FILE_SEARCH, False),
        (AssistantTool.FILE_SEARCH, True),
        (AssistantTool.WEB_SEARCH, False),
        (AssistantTool.WEB_SEARCH, True),
    ]
    sdk_items = [e.item for e in sdk if e.type == "response.output_item.done"]
    file_call, web_call = sdk_items[0], sdk_items[1]
    assert isinstance(file_call, ResponseFileSearchToolCall)
    assert isinstance(web_call, ResponseFunctionWebSearch)
    assert calls[1].call_id == file_call.id
    assert calls[1].query == "; ".join(file_call.queries) == "When does Falcon launch?"
    assert calls[1].result_count == len(file_call.results or []) == 1
    assert calls[3].call_id == web_call.id
    assert calls[3].result_count == 1
    assert calls[1].status == calls[3].status == "completed"
    # Tool events come before the text.
    first_delta = next(i for i, item in enumerate(items) if isinstance(item, ReplyDelta))
    assert all(items.index(call) < first_delta for call in calls)

    done = items[-1]
    assert isinstance(done, ReplyDone)
    assert (done.file_search_calls, done.web_search_calls) == (1, 1)
    completed = sdk[-1].response
    text = completed.output_text
    sdk_annotations = [a for item in completed.output if item.type == "message"
                       for part in item.content for a in part.annotations]  # fmt: skip
    assert [c.kind for c in done.citations] == ["FILE", "URL"]
    file_cite, url_cite = done.citations
    assert file_cite.openai_file_id == sdk_annotations[0].file_id == "file-1"
    assert file_cite.start_index == sdk_annotations[0].index
    assert file_cite.quote == CONTENT.decode()
    assert url_cite.url == sdk_annotations[1].url == WEB_URL
    assert text[url_cite.start_index : url_cite.end_index] == WEB_TITLE == url_cite.quote
    # The streamed annotation events carried the same annotations.
    streamed = [e.annotation for e in sdk if e.type == "response.output_text.annotation.added"]
    assert [a.type for a in streamed if a is not None] == ["file_citation", "url_citation"]
    assert reader.failure is None


async def test_a_tool_call_failing_mid_stream() -> None:
    fake, store_id = fake_with_a_store()
    data = await wire(fake, body_with_tools(store_id), Behaviour(kind="tool_failed"))
    assert sdk_events(data)[-1].type == "response.failed"
    items, reader = read(data, None)
    ended = [item for item in items if isinstance(item, ToolCallItem) and item.done]
    assert [c.status for c in ended] == ["failed", "failed"]
    assert reader.failure is not None
    assert reader.failure.message == PROVIDER_FAILED_ERROR
    assert reader.failure.status is MessageStatus.FAILED
    assert (reader.failure.file_search_calls, reader.failure.web_search_calls) == (1, 1)


def test_requests_without_stores_or_tools() -> None:
    base: dict[str, Any] = {"model": "m", "instructions": None, "temperature": None}
    # File search needs a store to read; without one it is not offered.
    lone = ReplyRequest(**base, content="q", tools=(AssistantTool.FILE_SEARCH,))
    assert tool_arguments(lone) == {}
    assert tool_arguments(ReplyRequest(**base, content="q")) == {}
    web = ReplyRequest(**base, content="q", tools=(AssistantTool.WEB_SEARCH,))
    assert tool_arguments(web) == {
        "tools": [{"type": "web_search"}],
        "include": ["web_search_call.action.sources"],
    }


def test_odd_items_and_annotations() -> None:
    assert tool_call_of({"type": "message", "id": "msg_1"}, done=True, number=1) is None
    assert tool_call_of({"type": "file_search_call"}, done=True, number=1) is None
    opened = tool_call_of(
        {"type": "web_search_call", "id": "ws_1", "status": "completed",
         "action": {"type": "open_page", "url": "https://a.example"}},
        done=True, number=4,
    )  # fmt: skip
    assert opened is not None
    assert (opened.query, opened.result_count, opened.sequence_number) == (
        "https://a.example",
        None,
        4,
    )
    # Kinds ATLAS does not show, and malformed spans.
    assert citation_of({"type": "file_path", "file_id": "f", "index": 0}, "", {}) is None
    assert citation_of("junk", "", {}) is None
    bad = citation_of(
        {"type": "url_citation", "url": "u", "title": "t", "start_index": 9, "end_index": 2},
        "short",
        {},
    )
    assert bad is not None
    assert bad.quote is None
    long_text = "x" * (QUOTE_MAX * 2)
    message = {"type": "message", "id": "m", "content": [{"type": "output_text", "text": long_text,
               "annotations": [{"type": "url_citation", "url": "u", "title": "t",
                                "start_index": 0, "end_index": len(long_text)}]}]}  # fmt: skip
    [citation] = citations_of([message])
    assert citation.quote is not None
    assert len(citation.quote) == QUOTE_MAX
    # Annotations only streamed (the final part carries none) are used.
    bare = {"type": "message", "id": "m", "content": [
        {"type": "output_text", "text": "ab", "annotations": []}]}  # fmt: skip
    streamed = {("m", 0): [{"type": "file_citation", "file_id": "f", "filename": "n", "index": 2}]}
    [from_events] = citations_of([bare], streamed)
    assert (from_events.openai_file_id, from_events.start_index) == ("f", 2)
