"""A fake OpenAI HTTP server on loopback speaking the real wire format, for the real SDK.

Endpoints: POST /v1/conversations (JSON), POST /v1/responses (stream=true: SSE with
`event:`/`data:` lines, the Responses API's event types and `sequence_number`),
POST /v1/files (multipart), DELETE /v1/files/{id}, POST /v1/chat/completions (stream:
`data:` chunks then `[DONE]`).

Each call to /v1/responses or /v1/chat/completions plays the next scripted `Behaviour`
(default: a normal reply). Every request is recorded (method, path, headers, JSON body or
multipart summary) so tests can assert what ATLAS sent. `gates` make an endpoint slow: a
request to a gated endpoint waits (counted in `waiting`) until its event is set.

Run on its own (`python -m tests.ai.fake_openai --port 0`, as bench/streaming.py does), it
prints `listening on <port>` and takes its script over HTTP: `POST /_fake/script` with
`{"behaviours": [{...Behaviour fields...}, ...]}` queues behaviours for the next calls
(`"reset": true` first drops what is still queued)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

DEFAULT_DELTAS = ("Hello", ", ", "this ", "is ", "ATLAS", ".")


@dataclass
class Behaviour:
    """What the next model call does.

    kind: "normal" | "http_error" | "cut" (stream ends cleanly without response.completed)
    | "abort" (connection dropped mid-stream) | "failed" (response.failed) | "incomplete"
    (response.incomplete) | "error_event" (an `error` event)."""

    kind: str = "normal"
    deltas: tuple[str, ...] = DEFAULT_DELTAS
    # Deltas sent before the failure (cut, abort, failed, incomplete, error_event).
    deltas_before_failure: int = 3
    delay: float = 0.0  # seconds between deltas (a slow stream)
    # Seconds before the first delta (default: `delay`); 0 sends it at once.
    first_delay: float | None = None
    status: int = 500
    # The `error.message` of an http_error body (OpenAI's 401 quotes part of the key).
    error_message: str = "The server had an error while processing your request."
    request_id: str | None = None
    input_tokens: int = 21
    output_tokens: int = 9
    # Each delta carries the wall clock (ns) of its emission: "<t:1234>" (for the bench).
    timestamp_deltas: bool = False


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeOpenAI:
    requests: list[RecordedRequest] = field(default_factory=list)
    script: list[Behaviour] = field(default_factory=list)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 0
    # Streams being served now, and how many were closed by the client before their end.
    open_streams: int = 0
    closed_early: int = 0
    # "upload" / "delete_file" -> an event the request waits for; requests held now.
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    waiting: int = 0
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def then(self, *behaviours: Behaviour) -> None:
        """Queue behaviours for the next model calls (in order)."""
        self.script.extend(behaviours)

    def calls(self, path: str) -> list[RecordedRequest]:
        return [request for request in self.requests if request.path == path]

    # -- server ------------------------------------------------------------------------

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/conversations", self._conversations, methods=["POST"]),
                Route("/v1/responses", self._responses, methods=["POST"]),
                Route("/v1/files", self._upload, methods=["POST"]),
                Route("/v1/files/{file_id}", self._delete_file, methods=["DELETE"]),
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/_fake/script", self._script, methods=["POST"]),
            ]
        )

    async def start(self) -> None:
        config = uvicorn.Config(
            self.app(), host=self.host, port=0, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        for _ in range(500):
            if self._server.started:
                break
            await asyncio.sleep(0.01)
        assert self._server.started, "fake OpenAI did not start"
        self.port = self._server.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._server.force_exit = True
        if self._task is not None:
            await asyncio.wait_for(self._task, 10)

    # -- helpers -----------------------------------------------------------------------

    async def _record(self, request: Request, body: Any) -> None:
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.url.path,
                headers={key.lower(): value for key, value in request.headers.items()},
                body=body,
            )
        )

    async def _hold(self, name: str) -> None:
        gate = self.gates.get(name)
        if gate is None:
            return
        self.waiting += 1
        try:
            await gate.wait()
        finally:
            self.waiting -= 1

    def _next(self) -> Behaviour:
        return self.script.pop(0) if self.script else Behaviour()

    @staticmethod
    def _error(behaviour: Behaviour) -> Response:
        headers = {"x-request-id": behaviour.request_id or f"req_{uuid.uuid4().hex}"}
        body = {
            "error": {
                "message": behaviour.error_message,
                "type": "server_error",
                "param": None,
                "code": None,
            }
        }
        return JSONResponse(body, status_code=behaviour.status, headers=headers)

    def _delta_text(self, behaviour: Behaviour, text: str) -> str:
        if behaviour.timestamp_deltas:
            return f"<t:{time.time_ns()}>"
        return text

    @staticmethod
    def _pause(behaviour: Behaviour, index: int) -> float:
        if index == 0 and behaviour.first_delay is not None:
            return behaviour.first_delay
        return behaviour.delay

    # -- endpoints ---------------------------------------------------------------------

    async def _script(self, request: Request) -> Response:
        """Queue behaviours sent as JSON (for a fake running in a process of its own)."""
        body = await request.json()
        if body.get("reset"):
            self.script.clear()
        behaviours = [
            Behaviour(**{**item, "deltas": tuple(item.get("deltas", DEFAULT_DELTAS))})
            for item in body["behaviours"]
        ]
        self.then(*behaviours)
        return JSONResponse({"queued": len(self.script)})

    async def _conversations(self, request: Request) -> Response:
        body = await request.json()
        await self._record(request, body)
        return JSONResponse(
            {
                "id": f"conv_{uuid.uuid4().hex}",
                "object": "conversation",
                "created_at": int(time.time()),
                "metadata": body.get("metadata") or {},
            }
        )

    async def _upload(self, request: Request) -> Response:
        form = await request.form()
        upload = form["file"]
        assert not isinstance(upload, str)
        content = await upload.read()
        purpose = str(form.get("purpose"))
        await self._record(
            request,
            {
                "filename": upload.filename,
                "bytes": len(content),
                "purpose": purpose,
                "content_type": upload.content_type,
            },
        )
        await self._hold("upload")
        file_id = f"file-{uuid.uuid4().hex[:24]}"
        stored = {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": upload.filename,
            "purpose": purpose,
            "status": "processed",
        }
        self.files[file_id] = {**stored, "content": content}
        return JSONResponse(stored)

    async def _delete_file(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        await self._record(request, None)
        await self._hold("delete_file")
        self.files.pop(file_id, None)
        return JSONResponse({"id": file_id, "object": "file", "deleted": True})

    async def _responses(self, request: Request) -> Response:
        body = await request.json()
        await self._record(request, body)
        behaviour = self._next()
        if behaviour.kind == "http_error":
            return self._error(behaviour)
        assert body.get("stream") is True, "ATLAS must stream"
        headers = {"x-request-id": behaviour.request_id or f"req_{uuid.uuid4().hex}"}
        return StreamingResponse(
            self._response_events(body, behaviour),
            media_type="text/event-stream",
            headers=headers,
        )

    async def _response_events(
        self, body: dict[str, Any], behaviour: Behaviour
    ) -> AsyncIterator[bytes]:
        self.open_streams += 1
        finished = False
        try:
            async for chunk in self._response_event_lines(body, behaviour):
                yield chunk
            finished = True
        finally:
            self.open_streams -= 1
            if not finished:
                self.closed_early += 1

    async def _response_event_lines(
        self, body: dict[str, Any], behaviour: Behaviour
    ) -> AsyncIterator[bytes]:
        response_id = f"resp_{uuid.uuid4().hex}"
        message_id = f"msg_{uuid.uuid4().hex}"
        sequence = 0

        def event(kind: str, payload: dict[str, Any]) -> bytes:
            nonlocal sequence
            data = {"type": kind, "sequence_number": sequence, **payload}
            sequence += 1
            return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()

        def response(status: str, **extra: Any) -> dict[str, Any]:
            conversation = body.get("conversation")
            return {
                "id": response_id,
                "object": "response",
                "created_at": int(time.time()),
                "status": status,
                "model": body.get("model"),
                "instructions": body.get("instructions"),
                "temperature": body.get("temperature"),
                "output": [],
                "parallel_tool_calls": True,
                "tool_choice": "auto",
                "tools": [],
                "error": None,
                "incomplete_details": None,
                "usage": None,
                "conversation": {"id": conversation} if conversation else None,
                **extra,
            }

        yield event("response.created", {"response": response("in_progress")})
        yield event("response.in_progress", {"response": response("in_progress")})
        item = {
            "id": message_id,
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        yield event("response.output_item.added", {"output_index": 0, "item": item})
        part = {"type": "output_text", "text": "", "annotations": []}
        yield event(
            "response.content_part.added",
            {"item_id": message_id, "output_index": 0, "content_index": 0, "part": part},
        )
        failing = behaviour.kind != "normal"
        deltas = (
            behaviour.deltas[: behaviour.deltas_before_failure] if failing else behaviour.deltas
        )
        text = ""
        for index, delta in enumerate(deltas):
            if pause := self._pause(behaviour, index):
                await asyncio.sleep(pause)
            piece = self._delta_text(behaviour, delta)
            text += piece
            yield event(
                "response.output_text.delta",
                {
                    "item_id": message_id,
                    "output_index": 0,
                    "content_index": 0,
                    "delta": piece,
                    "logprobs": [],
                },
            )
        if behaviour.kind == "cut":
            return
        if behaviour.kind == "abort":
            raise ConnectionResetError("fake upstream dropped the connection")
        usage = {
            "input_tokens": behaviour.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": behaviour.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": behaviour.input_tokens + behaviour.output_tokens,
        }
        if behaviour.kind == "failed":
            error = {"code": "server_error", "message": "The model crashed mid-reply."}
            yield event("response.failed", {"response": response("failed", error=error)})
            return
        if behaviour.kind == "incomplete":
            details = {"reason": "max_output_tokens"}
            yield event(
                "response.incomplete",
                {"response": response("incomplete", incomplete_details=details, usage=usage)},
            )
            return
        if behaviour.kind == "error_event":
            yield event(
                "error", {"code": "server_error", "message": "Upstream overloaded.", "param": None}
            )
            return
        yield event(
            "response.output_text.done",
            {
                "item_id": message_id,
                "output_index": 0,
                "content_index": 0,
                "text": text,
                "logprobs": [],
            },
        )
        done_part = {"type": "output_text", "text": text, "annotations": []}
        yield event(
            "response.content_part.done",
            {"item_id": message_id, "output_index": 0, "content_index": 0, "part": done_part},
        )
        done_item = {**item, "status": "completed", "content": [done_part]}
        yield event("response.output_item.done", {"output_index": 0, "item": done_item})
        yield event(
            "response.completed",
            {"response": response("completed", output=[done_item], usage=usage)},
        )

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        await self._record(request, body)
        behaviour = self._next()
        if behaviour.kind == "http_error":
            return self._error(behaviour)
        headers = {"x-request-id": behaviour.request_id or f"req_{uuid.uuid4().hex}"}
        return StreamingResponse(
            self._chat_chunks(body, behaviour), media_type="text/event-stream", headers=headers
        )

    async def _chat_chunks(
        self, body: dict[str, Any], behaviour: Behaviour
    ) -> AsyncIterator[bytes]:
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> bytes:
            data = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": body.get("model"),
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
                **extra,
            }
            return f"data: {json.dumps(data)}\n\n".encode()

        yield chunk({"role": "assistant", "content": ""})
        failing = behaviour.kind != "normal"
        deltas = (
            behaviour.deltas[: behaviour.deltas_before_failure] if failing else behaviour.deltas
        )
        for index, delta in enumerate(deltas):
            if pause := self._pause(behaviour, index):
                await asyncio.sleep(pause)
            yield chunk({"content": self._delta_text(behaviour, delta)})
        if behaviour.kind == "cut":
            return
        if behaviour.kind == "abort":
            raise ConnectionResetError("fake upstream dropped the connection")
        finish = "length" if behaviour.kind == "incomplete" else "stop"
        yield chunk({}, finish)
        usage = {
            "prompt_tokens": behaviour.input_tokens,
            "completion_tokens": behaviour.output_tokens,
            "total_tokens": behaviour.input_tokens + behaviour.output_tokens,
        }
        data = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": body.get("model"),
            "choices": [],
            "usage": usage,
        }
        yield f"data: {json.dumps(data)}\n\n".encode()
        yield b"data: [DONE]\n\n"


async def _serve_forever(host: str, port: int) -> None:
    fake = FakeOpenAI(host=host)
    config = uvicorn.Config(fake.app(), host=host, port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    print(f"listening on {server.servers[0].sockets[0].getsockname()[1]}", flush=True)
    await task


def main() -> None:
    parser = argparse.ArgumentParser(description="A fake OpenAI on loopback.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    arguments = parser.parse_args()
    try:
        asyncio.run(_serve_forever(arguments.host, arguments.port))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
