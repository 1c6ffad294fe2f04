"""The Responses API's built-in tool output, read from raw JSON (the hot path decodes events
with `json.loads`, see provider.ResponsesStreamReader): tool call items (`file_search_call`,
`web_search_call`) and the annotations of output text (`file_citation`, `url_citation`).

Shapes follow the SDK's types (`openai.types.responses.ResponseFileSearchToolCall`,
`ResponseFunctionWebSearch`, `ResponseOutputText.annotations`); tests/ai/test_tools_stream.py
checks them against events serialised from those types."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from atlas_gql.ai.models import AssistantTool

# Upstream item type -> ATLAS tool.
TOOL_ITEM_TYPES: dict[str, AssistantTool] = {
    "file_search_call": AssistantTool.FILE_SEARCH,
    "web_search_call": AssistantTool.WEB_SEARCH,
}
# Streaming events announcing a tool call, by the tool (the item itself may come later).
TOOL_PROGRESS_EVENTS: dict[str, AssistantTool] = {
    "response.file_search_call.in_progress": AssistantTool.FILE_SEARCH,
    "response.web_search_call.in_progress": AssistantTool.WEB_SEARCH,
}
# A citation's quote is at most this long (the retrieved text of a file can be pages).
QUOTE_MAX = 500


@dataclass(slots=True)
class ToolCallItem:
    """A tool call's state as the upstream reported it: started (in progress) or ended
    (`done`, with `status` completed / failed / incomplete)."""

    call_id: str
    tool: AssistantTool
    done: bool
    status: str
    query: str | None = None
    result_count: int | None = None
    sequence_number: int | None = None


class CitationKind(enum.StrEnum):
    """What a reply's citation points at (stored in `Message.citations`)."""

    FILE = "FILE"
    URL = "URL"


@dataclass(frozen=True, slots=True)
class UpstreamCitation:
    """An annotation of the reply's text. FILE: `openai_file_id`, `filename`, and
    `start_index == end_index` (where the marker goes); URL: `url`, `title` and the span."""

    kind: CitationKind
    start_index: int | None
    end_index: int | None
    openai_file_id: str | None = None
    filename: str | None = None
    url: str | None = None
    title: str | None = None
    quote: str | None = None


def tool_call_of(item: dict[str, Any], *, done: bool, number: int | None) -> ToolCallItem | None:
    """The tool call of an output item (None for any other item: a message, reasoning)."""
    tool = TOOL_ITEM_TYPES.get(str(item.get("type")))
    if tool is None or not isinstance(item.get("id"), str):
        return None
    query: str | None = None
    count: int | None = None
    if tool is AssistantTool.FILE_SEARCH:
        queries = [q for q in item.get("queries") or [] if isinstance(q, str) and q]
        query = "; ".join(queries) or None
        results = item.get("results")
        count = len(results) if isinstance(results, list) else None
    else:
        action = item.get("action") or {}
        if isinstance(action, dict):
            raw = action.get("query") or "; ".join(
                q for q in action.get("queries") or [] if isinstance(q, str)
            )
            query = raw or action.get("url") or None
            sources = action.get("sources")
            count = len(sources) if isinstance(sources, list) else None
    status = str(item.get("status") or ("completed" if done else "in_progress"))
    return ToolCallItem(
        call_id=item["id"],
        tool=tool,
        done=done,
        status=status,
        query=query,
        result_count=count if done else None,
        sequence_number=number,
    )


def tool_counts(output: list[Any]) -> dict[AssistantTool, int]:
    """How many calls of each tool a response's output holds (what the upstream bills)."""
    counts = dict.fromkeys(AssistantTool, 0)
    for item in output:
        if isinstance(item, dict) and (tool := TOOL_ITEM_TYPES.get(str(item.get("type")))):
            counts[tool] += 1
    return counts


def _file_quotes(output: list[Any]) -> dict[str, str]:
    """The first retrieved text of each file, from the file search calls' results (present
    when the request included `file_search_call.results`)."""
    quotes: dict[str, str] = {}
    for item in output:
        if not isinstance(item, dict) or item.get("type") != "file_search_call":
            continue
        for result in item.get("results") or []:
            file_id, text = result.get("file_id"), result.get("text")
            if isinstance(file_id, str) and isinstance(text, str) and file_id not in quotes:
                quotes[file_id] = text[:QUOTE_MAX]
    return quotes


def citation_of(annotation: Any, text: str, quotes: dict[str, str]) -> UpstreamCitation | None:
    """A citation of one annotation (None for kinds ATLAS does not show: file paths,
    container files)."""
    if not isinstance(annotation, dict):
        return None
    kind = annotation.get("type")
    if kind == "file_citation":
        index = annotation.get("index")
        file_id = annotation.get("file_id")
        return UpstreamCitation(
            kind=CitationKind.FILE,
            start_index=index if isinstance(index, int) else None,
            end_index=index if isinstance(index, int) else None,
            openai_file_id=file_id if isinstance(file_id, str) else None,
            filename=annotation.get("filename"),
            title=annotation.get("filename"),
            quote=quotes.get(file_id) if isinstance(file_id, str) else None,
        )
    if kind == "url_citation":
        start = annotation.get("start_index")
        end = annotation.get("end_index")
        start = start if isinstance(start, int) else None
        end = end if isinstance(end, int) else None
        quote = None
        if start is not None and end is not None and 0 <= start <= end:
            quote = text[start:end][:QUOTE_MAX]
        return UpstreamCitation(
            kind=CitationKind.URL,
            start_index=start,
            end_index=end,
            url=annotation.get("url"),
            title=annotation.get("title"),
            quote=quote,
        )
    return None


def citations_of(
    output: list[Any], streamed: dict[tuple[str, int], list[Any]] | None = None
) -> list[UpstreamCitation]:
    """The citations of a response's output messages, in order. `streamed` holds annotations
    read from `response.output_text.annotation.added` events by (item id, content index),
    used for a text part whose final copy carries none."""
    quotes = _file_quotes(output)
    citations: list[UpstreamCitation] = []
    for item in output:
        if not isinstance(item, dict) or item.get("type") != "message":
            continue
        for index, part in enumerate(item.get("content") or []):
            if not isinstance(part, dict) or part.get("type") != "output_text":
                continue
            annotations = part.get("annotations") or (streamed or {}).get(
                (str(item.get("id")), index), []
            )
            text = part.get("text") or ""
            for annotation in annotations:
                if (citation := citation_of(annotation, text, quotes)) is not None:
                    citations.append(citation)
    return citations
