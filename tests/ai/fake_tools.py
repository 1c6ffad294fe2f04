"""The fake OpenAI's built-in tools: vector stores (create, add / list / retrieve / remove
files with their indexing status, delete) and what a response does with `tools`: a
`file_search_call` over the files of the stores it names, a `web_search_call`, and the
annotations (file_citation, url_citation) of the text that cites them.

Objects and events are built from the SDK's own types (`VectorStore`, `VectorStoreFile`,
`ResponseFileSearchToolCall`, `ResponseFunctionWebSearch`, the `response.file_search_call.*`
/ `response.web_search_call.*` / `response.output_text.annotation.added` events), so the
wire format is the real one (a store's `usage_bytes` is the bytes of its files). Faults:
`FakeVectorStores.failing` (filenames whose indexing fails), `pending` (files stay
`in_progress` until retrieved once), and a response's tool call that fails mid-stream
(`Behaviour.kind == "tool_failed"`)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from openai.types import VectorStore, VectorStoreDeleted
from openai.types.responses import (
    ResponseFileSearchCallCompletedEvent,
    ResponseFileSearchCallInProgressEvent,
    ResponseFileSearchCallSearchingEvent,
    ResponseFileSearchToolCall,
    ResponseFunctionWebSearch,
    ResponseOutputTextAnnotationAddedEvent,
    ResponseWebSearchCallCompletedEvent,
    ResponseWebSearchCallInProgressEvent,
    ResponseWebSearchCallSearchingEvent,
)
from openai.types.responses.response_output_text import (
    AnnotationFileCitation,
    AnnotationURLCitation,
)
from openai.types.vector_stores import VectorStoreFile, VectorStoreFileDeleted
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

WEB_URL = "https://example.org/atlas"
WEB_TITLE = "ATLAS on the web"
INDEX_ERROR = "The file could not be parsed."


def _wire(model: Any) -> dict[str, Any]:
    data: dict[str, Any] = model.to_dict()
    return data


def _payload(event: Any) -> tuple[str, dict[str, Any]]:
    """(type, fields) of an SDK event, without the number the fake gives it."""
    data = _wire(event)
    kind = data.pop("type")
    data.pop("sequence_number", None)
    return kind, data


@dataclass
class StoreFile:
    file_id: str
    filename: str
    content: bytes
    status: str
    error: str | None = None
    created_at: int = field(default_factory=lambda: int(time.time()))


@dataclass
class FakeStore:
    id: str
    name: str
    files: dict[str, StoreFile] = field(default_factory=dict)


@dataclass
class FakeVectorStores:
    """Vector stores of the fake OpenAI. `files` is the fake's uploaded files by id."""

    files: dict[str, dict[str, Any]]
    stores: dict[str, FakeStore] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    # Filenames whose indexing fails; when `pending`, indexing finishes at the first GET.
    failing: set[str] = field(default_factory=set)
    pending: bool = False

    def routes(self, record: Any) -> list[Route]:
        self._record = record
        return [
            Route("/v1/vector_stores", self._create, methods=["POST"]),
            Route("/v1/vector_stores/{store_id}", self._retrieve, methods=["GET"]),
            Route("/v1/vector_stores/{store_id}", self._delete, methods=["DELETE"]),
            Route("/v1/vector_stores/{store_id}/files", self._add, methods=["POST"]),
            Route("/v1/vector_stores/{store_id}/files", self._list, methods=["GET"]),
            Route("/v1/vector_stores/{store_id}/files/{file_id}", self._get, methods=["GET"]),
            Route("/v1/vector_stores/{store_id}/files/{file_id}", self._remove, methods=["DELETE"]),
        ]

    def indexed(self, store_ids: list[str]) -> list[StoreFile]:
        """The files a search over these stores finds (indexed ones only)."""
        return [
            stored
            for store_id in store_ids
            if (store := self.stores.get(store_id)) is not None
            for stored in store.files.values()
            if stored.status == "completed"
        ]

    def _store_object(self, store: FakeStore) -> dict[str, Any]:
        statuses = [f.status for f in store.files.values()]
        return _wire(
            VectorStore(
                id=store.id,
                created_at=int(time.time()),
                file_counts={
                    "cancelled": 0,
                    "completed": statuses.count("completed"),
                    "failed": statuses.count("failed"),
                    "in_progress": statuses.count("in_progress"),
                    "total": len(statuses),
                },
                name=store.name,
                object="vector_store",
                status="completed",
                usage_bytes=sum(len(f.content) for f in store.files.values()),
            )
        )

    @staticmethod
    def _file_object(store: FakeStore, stored: StoreFile) -> dict[str, Any]:
        error = {"code": "invalid_file", "message": stored.error} if stored.error else None
        return _wire(
            VectorStoreFile(
                id=stored.file_id,
                created_at=stored.created_at,
                last_error=error,
                object="vector_store.file",
                status=stored.status,
                usage_bytes=len(stored.content),
                vector_store_id=store.id,
            )
        )

    @staticmethod
    def _missing(what: str) -> Response:
        body = {"error": {"message": f"No {what} found.", "type": "invalid_request_error"}}
        return JSONResponse(body, status_code=404)

    async def _create(self, request: Request) -> Response:
        body = await request.json()
        await self._record(request, body)
        store = FakeStore(id=f"vs_{uuid.uuid4().hex[:24]}", name=str(body.get("name") or ""))
        self.stores[store.id] = store
        return JSONResponse(self._store_object(store))

    async def _retrieve(self, request: Request) -> Response:
        await self._record(request, None)
        store = self.stores.get(request.path_params["store_id"])
        if store is None:
            return self._missing("vector store")
        return JSONResponse(self._store_object(store))

    async def _delete(self, request: Request) -> Response:
        store_id = request.path_params["store_id"]
        await self._record(request, None)
        if self.stores.pop(store_id, None) is None:
            return self._missing("vector store")
        self.deleted.append(store_id)
        return JSONResponse(
            _wire(VectorStoreDeleted(id=store_id, deleted=True, object="vector_store.deleted"))
        )

    async def _add(self, request: Request) -> Response:
        body = await request.json()
        await self._record(request, body)
        store = self.stores.get(request.path_params["store_id"])
        upload = self.files.get(str(body.get("file_id")))
        if store is None or upload is None:
            return self._missing("vector store" if store is None else "file")
        filename = str(upload["filename"])
        failed = filename in self.failing
        stored = StoreFile(
            file_id=upload["id"],
            filename=filename,
            content=upload["content"],
            status="in_progress" if self.pending else ("failed" if failed else "completed"),
            error=INDEX_ERROR if failed and not self.pending else None,
        )
        store.files[stored.file_id] = stored
        return JSONResponse(self._file_object(store, stored))

    async def _get(self, request: Request) -> Response:
        await self._record(request, None)
        store = self.stores.get(request.path_params["store_id"])
        stored = store.files.get(request.path_params["file_id"]) if store else None
        if store is None or stored is None:
            return self._missing("vector store file")
        if stored.status == "in_progress":
            failed = stored.filename in self.failing
            stored.status = "failed" if failed else "completed"
            stored.error = INDEX_ERROR if failed else None
        return JSONResponse(self._file_object(store, stored))

    async def _list(self, request: Request) -> Response:
        await self._record(request, dict(request.query_params))
        store = self.stores.get(request.path_params["store_id"])
        if store is None:
            return self._missing("vector store")
        data = [self._file_object(store, stored) for stored in store.files.values()]
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": False,
            }
        )

    async def _remove(self, request: Request) -> Response:
        await self._record(request, None)
        store = self.stores.get(request.path_params["store_id"])
        file_id = request.path_params["file_id"]
        if store is None or store.files.pop(file_id, None) is None:
            return self._missing("vector store file")
        return JSONResponse(
            _wire(
                VectorStoreFileDeleted(id=file_id, deleted=True, object="vector_store.file.deleted")
            )
        )


@dataclass
class ToolRun:
    """What one response does with its tools: the tool call items (in output order), the
    events announcing and ending each, the text the model adds citing them, and the
    annotations of that text (indexes relative to the start of the added text)."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    text: str = ""
    annotations: list[dict[str, Any]] = field(default_factory=list)


def plan_tools(body: dict[str, Any], stores: FakeVectorStores, *, fail: bool) -> ToolRun:
    """The tool calls a response with `body["tools"]` makes. File search finds the indexed
    files of the stores it names (and cites the first); web search finds WEB_URL."""
    run = ToolRun()
    include = set(body.get("include") or [])
    question = _question(body)
    for tool in body.get("tools") or []:
        call_id = f"{'fs' if tool.get('type') == 'file_search' else 'ws'}_{uuid.uuid4().hex[:20]}"
        status = "failed" if fail else "completed"
        if tool.get("type") == "file_search":
            found = stores.indexed(list(tool.get("vector_store_ids") or []))
            results = [
                {
                    "file_id": f.file_id,
                    "filename": f.filename,
                    "score": 0.9,
                    "text": f.content.decode(errors="replace"),
                }
                for f in found
            ]
            item = ResponseFileSearchToolCall(
                id=call_id,
                queries=[question],
                status=status,
                type="file_search_call",
                results=results if "file_search_call.results" in include and not fail else None,
            )
            run.calls.append(_wire(item))
            if found and not fail:
                cited = found[0]
                snippet = cited.content.decode(errors="replace")[:60]
                run.text += f" According to {cited.filename}: {snippet}"
                run.annotations.append(
                    _wire(
                        AnnotationFileCitation(
                            file_id=cited.file_id,
                            filename=cited.filename,
                            index=len(run.text),
                            type="file_citation",
                        )
                    )
                )
        elif tool.get("type") == "web_search":
            sources = [{"type": "url", "url": WEB_URL}]
            action: dict[str, Any] = {"type": "search", "query": question}
            if "web_search_call.action.sources" in include:
                action["sources"] = sources
            item_web = ResponseFunctionWebSearch(
                id=call_id,
                action=action,
                status=status,
                type="web_search_call",
            )
            run.calls.append(_wire(item_web))
            if not fail:
                run.text += " See "
                start = len(run.text)
                run.text += WEB_TITLE + "."
                run.annotations.append(
                    _wire(
                        AnnotationURLCitation(
                            start_index=start,
                            end_index=start + len(WEB_TITLE),
                            title=WEB_TITLE,
                            type="url_citation",
                            url=WEB_URL,
                        )
                    )
                )
    return run


def call_events(item: dict[str, Any], output_index: int) -> list[tuple[str, dict[str, Any]]]:
    """The events of one tool call after its `response.output_item.added` and before its
    `response.output_item.done`: in_progress, searching, completed."""
    common = {"item_id": item["id"], "output_index": output_index, "sequence_number": 0}
    if item["type"] == "file_search_call":
        return [
            _payload(ResponseFileSearchCallInProgressEvent(
                **common, type="response.file_search_call.in_progress")),
            _payload(ResponseFileSearchCallSearchingEvent(
                **common, type="response.file_search_call.searching")),
            _payload(ResponseFileSearchCallCompletedEvent(
                **common, type="response.file_search_call.completed")),
        ]  # fmt: skip
    return [
        _payload(ResponseWebSearchCallInProgressEvent(
            **common, type="response.web_search_call.in_progress")),
        _payload(ResponseWebSearchCallSearchingEvent(
            **common, type="response.web_search_call.searching")),
        _payload(ResponseWebSearchCallCompletedEvent(
            **common, type="response.web_search_call.completed")),
    ]  # fmt: skip


def annotation_event(
    annotation: dict[str, Any], *, item_id: str, output_index: int, index: int
) -> tuple[str, dict[str, Any]]:
    return _payload(
        ResponseOutputTextAnnotationAddedEvent(
            annotation=annotation,
            annotation_index=index,
            content_index=0,
            item_id=item_id,
            output_index=output_index,
            sequence_number=0,
            type="response.output_text.annotation.added",
        )
    )


def shifted(annotation: dict[str, Any], offset: int) -> dict[str, Any]:
    """An annotation of the added text, its indexes moved to where that text starts."""
    moved = dict(annotation)
    for key in ("index", "start_index", "end_index"):
        if key in moved:
            moved[key] += offset
    return moved


def _question(body: dict[str, Any]) -> str:
    for message in body.get("input") or []:
        for part in message.get("content") or []:
            if isinstance(part, dict) and part.get("type") == "input_text":
                return str(part.get("text"))
    return ""
