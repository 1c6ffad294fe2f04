"""Benchmark: what a hung Redis costs a reply's publishes (the event broker's circuit breaker).

    .venv/bin/python bench/redis_outage.py [--events 60] [--timeout 0.25] [--rounds 3]

A `RedisBroker` publishes a reply's worth of delta events through an asyncio TCP proxy in front
of the real Redis (127.0.0.1:6379; `tests/ai/tcp_proxy.py`), one thread per round:
- healthy: Redis answers;
- hung: the proxy black-holes Redis (accepts, never answers) just before the first event;
- healed: the proxy passes again; how long until the probe closes the circuit, then a reply.

Printed per phase: wall time for the reply's publishes, per-publish p50/max, and what the
breaker did (trips, skipped publishes). Before the breaker, every publish to a hung Redis
waited out the client's 5 s socket timeout (a reply of 60 deltas: 5 minutes). Nothing here
asserts: it prints figures.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atlas_gql.ai.broker import RedisBroker
from atlas_gql.ai.events import delta_event
from tests.ai.tcp_proxy import TcpProxy


async def reply(broker: RedisBroker, events: int) -> tuple[float, list[float]]:
    """Publish a reply's deltas; (wall seconds, per-publish seconds)."""
    thread = uuid.uuid4()
    local = broker._fanout.add(thread)  # a subscriber of this worker: it must get them all
    took: list[float] = []
    started = time.perf_counter()
    for sequence in range(1, events + 1):
        begin = time.perf_counter()
        await broker.publish(
            thread, delta_event(sequence, thread_id=thread, message_id=thread, delta="token ")
        )
        took.append(time.perf_counter() - begin)
    wall = time.perf_counter() - started
    assert local.queue.qsize() == events, "an event did not reach the local subscriber"
    broker._fanout.remove(thread, local)
    return wall, took


def show(phase: str, wall: float, took: list[float], broker: RedisBroker) -> None:
    breaker = broker.breaker
    print(
        f"{phase:<8} reply of {len(took)} publishes: {wall * 1000:8.1f} ms wall, "
        f"p50 {statistics.median(took) * 1e6:8.1f} us, max {max(took) * 1000:7.1f} ms; "
        f"circuit {'open' if breaker.is_open else 'closed'}, trips {breaker.trips}, "
        f"skipped {breaker.skipped}"
    )


async def main(args: argparse.Namespace) -> None:
    for round_number in range(1, args.rounds + 1):
        proxy = TcpProxy("127.0.0.1", 6379)
        await proxy.start()
        broker = RedisBroker(proxy.url, timeout=args.timeout, max_pause=1.0)
        await broker.start()
        try:
            print(f"-- round {round_number} (ATLAS_REDIS_TIMEOUT={args.timeout})")
            await reply(broker, 5)  # warm the connection pool
            show("healthy", *await reply(broker, args.events), broker)
            proxy.black_hole("stall")
            show("hung", *await reply(broker, args.events), broker)
            proxy.heal()
            healed = time.perf_counter()
            while broker.breaker.is_open:  # noqa: ASYNC110 (a 5 ms resolution is enough)
                await asyncio.sleep(0.005)
            print(f"healed   circuit closed {time.perf_counter() - healed:.2f} s after the heal")
            show("after", *await reply(broker, args.events), broker)
        finally:
            await broker.close()
            await proxy.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=60)
    parser.add_argument("--timeout", type=float, default=0.25)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
