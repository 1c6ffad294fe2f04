"""Pure logic: prices, and the memory broker's ordering, replay and catch-up merging."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any

import pytest

from atlas_gql.ai.broker import MERGE_BACKLOG, MemoryBroker
from atlas_gql.ai.pricing import allowed_models, cost_usd
from atlas_gql.config import Settings


def test_cost_is_exact_decimal() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    # gpt-4o-mini: $0.15 / 1M input, $0.60 / 1M output.
    assert cost_usd(settings, model="gpt-4o-mini", input_tokens=1000, output_tokens=500) == (
        Decimal("0.000450")
    )
    # A dated snapshot costs what its family costs; an unknown model costs 0.
    assert cost_usd(
        settings, model="gpt-4o-mini-2024-07-18", input_tokens=1_000_000, output_tokens=0
    ) == Decimal("0.150000")
    assert cost_usd(settings, model="mystery", input_tokens=10, output_tokens=10) == 0


def test_prices_and_models_follow_settings() -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        atlas_model_prices={"local-llama": (1, 2)},
        atlas_allowed_models=["local-llama", "gpt-4o"],
    )
    assert cost_usd(settings, model="local-llama", input_tokens=500_000, output_tokens=500_000) == (
        Decimal("1.500000")
    )
    assert allowed_models(settings) == ["local-llama", "gpt-4o"]
    assert "gpt-4o-mini" in allowed_models(Settings(_env_file=None))  # type: ignore[call-arg]


def _delta(sequence: int, text: str, message: str = "m1") -> dict[str, Any]:
    return {"type": "MessageDelta", "sequence": sequence, "messageId": message, "delta": text}


async def _take(stream: Any, count: int) -> list[dict[str, Any]]:
    return [await asyncio.wait_for(anext(stream), 2) for _ in range(count)]


async def test_live_events_in_order_without_duplicates() -> None:
    broker = MemoryBroker()
    thread = uuid.uuid4()
    for sequence in (1, 2):
        await broker.publish(thread, _delta(sequence, f"old{sequence}"))
    stream = broker.subscribe(thread, after_sequence=1)
    first = await _take(stream, 1)
    assert first == [_delta(2, "old2")]
    await broker.publish(thread, _delta(2, "again"))  # a duplicate number is dropped
    await broker.publish(thread, _delta(3, "new"))
    assert await _take(stream, 1) == [_delta(3, "new")]
    await stream.aclose()


async def test_a_subscriber_far_behind_gets_merged_deltas() -> None:
    broker = MemoryBroker()
    thread = uuid.uuid4()
    count = MERGE_BACKLOG * 3
    for sequence in range(1, count + 1):
        await broker.publish(thread, _delta(sequence, f"{sequence},"))
    await broker.publish(thread, {"type": "MessageCompleted", "sequence": count + 1})
    stream = broker.subscribe(thread, after_sequence=0)
    events = []
    while not events or events[-1]["type"] != "MessageCompleted":
        events += await _take(stream, 1)
    await stream.aclose()
    deltas = [event for event in events if event["type"] == "MessageDelta"]
    assert len(deltas) < count
    assert "".join(event["delta"] for event in deltas) == "".join(
        f"{n}," for n in range(1, count + 1)
    )
    sequences = [event["sequence"] for event in events]
    assert sequences == sorted(set(sequences))
    assert sequences[-1] == count + 1


@pytest.mark.parametrize("after", [None, 0])
async def test_a_subscriber_keeping_up_gets_every_delta(after: int | None) -> None:
    broker = MemoryBroker()
    thread = uuid.uuid4()
    stream = broker.subscribe(thread, after_sequence=after)
    received = asyncio.ensure_future(_take(stream, 5))
    await asyncio.sleep(0.05)  # the subscription registers when its iteration starts
    for sequence in range(1, 6):
        await broker.publish(thread, _delta(sequence, "x"))
        await asyncio.sleep(0)
    assert [event["sequence"] for event in await received] == [1, 2, 3, 4, 5]
    await stream.aclose()
