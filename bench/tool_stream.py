"""Benchmark: the raw Responses stream reader (the reply hot path) with and without tools.

    .venv/bin/python bench/tool_stream.py [--rounds 300] [--deltas 100]

Builds the wire bytes of one response from the fake OpenAI (tests/ai/fake_openai.py, real
event types): plain text, and the same text after a file search call and a web search call
with two citations (tool items, their progress events, annotation events, the final output
carrying both). Feeds each to `ResponsesStreamReader` in 1,400-byte reads, as a network would,
and prints microseconds per response and per event, so the cost the tool events add to the
hot path (decoded, unlike the events it skips by name) is visible."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atlas_gql.ai.models import AssistantTool
from atlas_gql.ai.provider import ReplyRequest, ResponsesStreamReader, tool_arguments
from tests.ai.fake_openai import Behaviour, FakeOpenAI
from tests.ai.fake_tools import FakeStore, StoreFile

READ = 1400


async def wire(tools: bool, deltas: int) -> bytes:
    fake = FakeOpenAI()
    store = FakeStore(id="vs_bench", name="bench")
    store.files["file-1"] = StoreFile(
        "file-1", "notes.txt", b"Some indexed text." * 20, "completed"
    )
    fake.vector_stores.stores[store.id] = store
    request = ReplyRequest(
        model="gpt-4o-mini", instructions=None, temperature=None, content="Question?",
        tools=(AssistantTool.FILE_SEARCH, AssistantTool.WEB_SEARCH) if tools else (),
        vector_store_ids=[store.id],
    )  # fmt: skip
    body: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "input": [{"type": "message", "role": "user",
                   "content": [{"type": "input_text", "text": "Question?"}]}],
        **tool_arguments(request),
    }  # fmt: skip
    behaviour = Behaviour(deltas=tuple(f"token{i} " for i in range(deltas)))
    return b"".join([chunk async for chunk in fake._response_event_lines(body, behaviour)])


def measure(data: bytes, rounds: int) -> tuple[float, int]:
    events = data.count(b"\n\n")
    started = time.perf_counter()
    for _ in range(rounds):
        reader = ResponsesStreamReader(request_id=None)
        for start in range(0, len(data), READ):
            reader.feed(data[start : start + READ])
        assert reader.finished
        assert reader.failure is None
    elapsed = (time.perf_counter() - started) / rounds
    return elapsed * 1e6, events


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--deltas", type=int, default=100)
    arguments = parser.parse_args()
    for label, tools in (("text only", False), ("file search + web search", True)):
        data = asyncio.run(wire(tools, arguments.deltas))
        per_response, events = measure(data, arguments.rounds)
        print(
            f"{label:26} {events:4d} events {len(data):7d} bytes  "
            f"{per_response:8.1f} µs/response  {per_response / events:5.2f} µs/event"
        )


if __name__ == "__main__":
    main()
