"""Benchmark: encoding and decoding reply events for Redis (the broker's JSON).

    .venv/bin/python bench/event_codec.py [--rounds 20000]

Compares, per event, the pydantic TypeAdapter ATLAS uses (atlas_gql/ai/events.py), msgspec
(when installed; it is not a dependency: `pip install msgspec` to include it), and the
hand-written dict converters with `json` that the typed events replaced. Prints microseconds
per encode and per decode of a delta and of a MessageCompleted (which carries a message)."""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atlas_gql.ai.events import (
    MessageCompleted,
    MessageDelta,
    MessagePayload,
    decode_event,
    encode_event,
)
from atlas_gql.ai.models import MessageRole, MessageStatus

try:
    import msgspec
except ImportError:  # not a dependency of ATLAS
    msgspec = None
else:

    class Payload(msgspec.Struct):
        id: uuid.UUID
        thread_id: uuid.UUID
        user_id: uuid.UUID | None
        role: str
        content: str
        status: str
        openai_message_id: str | None
        openai_response_id: str | None
        model: str | None
        input_tokens: int | None
        output_tokens: int | None
        error: str | None
        created_at: datetime
        completed_at: datetime | None

    class Delta(msgspec.Struct, tag_field="type", tag="MessageDelta"):
        sequence: int
        thread_id: uuid.UUID
        message_id: uuid.UUID
        delta: str

    class Completed(msgspec.Struct, tag_field="type", tag="MessageCompleted"):
        sequence: int
        thread_id: uuid.UUID
        message_id: uuid.UUID
        message: Payload


def per_call_us(function: Callable[[], Any], rounds: int) -> float:
    started = time.perf_counter()
    for _ in range(rounds):
        function()
    return (time.perf_counter() - started) / rounds * 1e6


def main(rounds: int) -> None:
    thread_id, message_id = uuid.uuid4(), uuid.uuid4()
    payload = MessagePayload(
        id=message_id, thread_id=thread_id, user_id=uuid.uuid4(), role=MessageRole.ASSISTANT,
        content="Hello, this is ATLAS. " * 20, status=MessageStatus.COMPLETED,
        openai_message_id="msg_1", openai_response_id="resp_1", model="gpt-4o-mini",
        input_tokens=21, output_tokens=90, created_at=datetime.now(UTC),
        completed_at=datetime.now(UTC),
    )  # fmt: skip
    events = {
        "delta": MessageDelta(sequence=7, thread_id=thread_id, message_id=message_id, delta="tok"),
        "completed": MessageCompleted(
            sequence=8, thread_id=thread_id, message_id=message_id, message=payload
        ),
    }
    print(f"{'codec':<28}{'event':<11}{'encode us':>10}{'decode us':>10}")
    for name, event in events.items():
        text = encode_event(event)
        encode = per_call_us(lambda event=event: encode_event(event), rounds)
        decode = per_call_us(lambda text=text: decode_event(text), rounds)
        print(f"{'pydantic TypeAdapter':<28}{name:<11}{encode:>10.2f}{decode:>10.2f}")

        as_dict = json.loads(text)
        dumped = json.dumps(as_dict)
        encode = per_call_us(lambda as_dict=as_dict: json.dumps(as_dict), rounds)
        decode = per_call_us(lambda dumped=dumped: json.loads(dumped), rounds)
        print(f"{'dict + json (before)':<28}{name:<11}{encode:>10.2f}{decode:>10.2f}")
    if msgspec is None:
        print("msgspec: not installed")
        return

    decoder = msgspec.json.Decoder(Delta | Completed)
    structs: dict[str, Any] = {
        "delta": Delta(7, thread_id, message_id, "tok"),
        "completed": Completed(8, thread_id, message_id, msgspec.convert(
            payload.model_dump(mode="json"), Payload)),
    }  # fmt: skip
    for name, struct in structs.items():
        data = msgspec.json.encode(struct)
        encode = per_call_us(lambda struct=struct: msgspec.json.encode(struct), rounds)
        decode = per_call_us(lambda data=data: decoder.decode(data), rounds)
        print(f"{'msgspec':<28}{name:<11}{encode:>10.2f}{decode:>10.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20000)
    main(parser.parse_args().rounds)
