"""Benchmark: a reply's fixed cost (server CPU from the sendMessage request to the first delta
its one subscriber receives), variants interleaved in one run.

    .venv/bin/python bench/reply_start.py --variant before=/tmp/base --variant after=. \\
        [--replies 60] [--warmup 20]

`bench/streaming.py` measures the same figure ("per-reply fixed cost") one server after the
other; on a machine whose load changes by the minute that compares the load as much as the
trees. Here every variant's server runs at once (each its own database, the one fake
upstream), and the replies alternate between them, one at a time, in an order that changes
every round: what the load does, it does to all of them alike. Prints the median and the
mean per variant. Nothing here asserts."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from streaming import (
    AtlasServer,
    CpuTimeline,
    Fleet,
    Upstream,
    one_fixed_cost,
    parse_variant,
    probe,
)


async def main(args: argparse.Namespace) -> None:
    upstream = Upstream()
    await upstream.start()
    servers: list[AtlasServer] = [parse_variant(text) for text in args.variant]
    ready: list[tuple[AtlasServer, CpuTimeline, Fleet, str]] = []
    try:
        for server in servers:
            await server.start(upstream)
            timeline = CpuTimeline(server.pid)
            timeline.start()
            thread_id = await server.new_thread()
            fleet = Fleet(server)
            ready.append((server, timeline, fleet, thread_id))
            await fleet.open([(thread_id, 1)])
            await probe(server, upstream, fleet, {thread_id: 1})
        costs: dict[str, list[float]] = {server.name: [] for server in servers}
        for round_number in range(args.warmup + args.replies):
            shift = round_number % len(ready)
            for server, timeline, fleet, thread_id in ready[shift:] + ready[:shift]:
                cost = await one_fixed_cost(server, upstream, timeline, fleet, thread_id)
                if round_number >= args.warmup:
                    costs[server.name].append(cost)
        for name, values in costs.items():
            print(
                f"{name}: median {statistics.median(values):.2f} ms, mean "
                f"{statistics.fmean(values):.2f} ms of server CPU from sendMessage to the first "
                f"delta ({len(values)} replies, {args.warmup} warm-up replies before)",
                flush=True,
            )
    finally:
        for _, timeline, fleet, _ in ready:
            await fleet.close()
            await timeline.stop()
        for server in servers:
            await server.stop()
        await upstream.stop()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--variant", action="append", required=True,
        help="NAME=PATH[,ENV=VALUE...]: an ATLAS source tree to serve",
    )  # fmt: skip
    parser.add_argument("--replies", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=20)
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
