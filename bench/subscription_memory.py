"""Benchmark: what an idle `threadEvents` subscription holds in the server, by kind.

    .venv/bin/python bench/subscription_memory.py [--subscribers 1000] [--threads 1]
        [--frames 1] [--top 25] [--variant NAME=PATH[,ENV=VALUE...]]...

Runs a real `atlas-gql serve` per variant (bench/streaming.py's `AtlasServer`, its fake
upstream and subscriber processes: each subscription its own WebSocket, one operation each,
probed until every subscriber saw one reply end), and takes a census of the server before and
after the subscriptions are open: the server process runs a `sitecustomize` (written to a
temporary directory put first on its PYTHONPATH) that starts tracemalloc (`--frames` frames
per allocation) and, on SIGUSR1, collects garbage and writes the live objects by type
(`gc.get_objects()`) and the traced bytes by file and line to a JSON file. Printed per
variant: RSS over idle per subscription, traced bytes per subscription (tracemalloc costs
memory and CPU of its own: the RSS figure here is above streaming.py's), and the largest
differences by source line and by type, per subscription. Nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import streaming

SITECUSTOMIZE = """
import collections, ctypes, gc, json, os, signal, sys, tracemalloc

_frames = int(os.environ.get("ATLAS_CENSUS_FRAMES", "1"))
if _frames:
    tracemalloc.start(_frames)
_taken = [0]


def _rss():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _census(signum, frame):
    lines = {}
    if _frames:
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, __file__)]
        )
        for stat in snapshot.statistics("traceback"):
            where = " <- ".join(f"{f.filename}:{f.lineno}" for f in stat.traceback)
            lines[where] = [stat.size, stat.count]
        del snapshot
    rss = [_rss()]
    gc.collect()
    rss.append(_rss())
    ctypes.CDLL(None).malloc_trim(0)
    rss.append(_rss())
    types = collections.Counter()
    sizes = collections.Counter()
    objects = gc.get_objects()
    owned = {}
    for item in objects:
        if not isinstance(item, type):
            attributes = getattr(item, "__dict__", None)
            if type(attributes) is dict:
                kind = type(item)
                owned[id(attributes)] = f"dict: __dict__ of {kind.__module__}.{kind.__qualname__}"
    for item in objects:
        kind = type(item)
        name = f"{kind.__module__}.{kind.__qualname__}"
        code = getattr(item, "cr_code", None) or getattr(item, "ag_code", None) or getattr(
            item, "gi_code", None
        )
        if code is not None:
            name = f"{kind.__qualname__} {code.co_qualname} ({os.path.basename(code.co_filename)})"
        if kind is dict:
            name = owned.get(id(item), name)
        types[name] += 1
        sizes[name] += sys.getsizeof(item)
    _taken[0] += 1
    path = f"{os.environ['ATLAS_CENSUS']}.{_taken[0]}"
    with open(path + ".tmp", "w") as out:
        json.dump({"types": types, "sizes": sizes, "lines": lines, "rss": rss}, out)
    os.replace(path + ".tmp", path)


signal.signal(signal.SIGUSR1, _census)
"""


def read_census(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


async def census(server: streaming.AtlasServer, base: str, number: int) -> dict[str, Any]:
    """Ask the server for its census number `number` and wait for the file."""
    os.kill(server.pid, signal.SIGUSR1)
    path = Path(f"{base}.{number}")
    for _ in range(12_000):  # a census under tracemalloc takes a while
        data = read_census(path)
        if data is not None:
            return data
        await asyncio.sleep(0.05)
    raise TimeoutError(f"no census at {path}")


def short(where: str) -> str:
    return " <- ".join(
        part.split("site-packages/")[-1].split("/atlas_gql/")[-1] for part in where.split(" <- ")
    )


async def measure(variant: str, args: argparse.Namespace, upstream: streaming.Upstream) -> None:
    server = streaming.parse_variant(variant)
    directory = tempfile.mkdtemp(prefix="atlas-census-")
    with open(os.path.join(directory, "sitecustomize.py"), "w") as out:  # noqa: ASYNC230
        out.write(SITECUSTOMIZE)
    base = str(Path(directory, "census"))
    server.env = {
        **server.env,
        "PYTHONPATH": f"{directory}:{server.root}",
        "ATLAS_CENSUS": base,
        "ATLAS_CENSUS_FRAMES": str(args.frames),
    }
    await server.start(upstream)
    timeline = streaming.CpuTimeline(server.pid)
    timeline.start()
    figures = streaming.Figures(name=server.name)
    try:
        # Warm-up: one subscriber through a reply (caches, pools, first renderings).
        await streaming.fan_out(server, upstream, timeline, figures, 1, 5, 0.0, False)
        before = await census(server, base, 1)
        threads = [await server.new_thread() for _ in range(args.threads)]
        plan = dict.fromkeys(threads, args.subscribers // args.threads)
        count = sum(plan.values())
        fleet = streaming.Fleet(server)
        try:
            await fleet.open(list(plan.items()))
            await streaming.probe(server, upstream, fleet, plan)
            after = await census(server, base, 2)
        finally:
            await fleet.close()
    finally:
        await timeline.stop()
        await server.stop()
    traced = sum(size for size, _ in after["lines"].values()) - sum(
        size for size, _ in before["lines"].values()
    )
    print(f"-- {server.name}: {count} idle subscriptions on {len(plan)} thread(s)")
    rss = [
        (now - idle) / count / 1024 for now, idle in zip(after["rss"], before["rss"], strict=True)
    ]
    print(
        f"  RSS over idle per subscription: {rss[0]:.1f} KiB; after a full collection "
        f"{rss[1]:.1f}; and malloc_trim {rss[2]:.1f}; traced {traced / count / 1024:.1f} KiB"
    )
    lines: dict[str, int] = {}
    for where, (size, _) in after["lines"].items():
        lines[where] = size - before["lines"].get(where, [0])[0]
    print(f"  traced bytes per subscription, top {args.top} source lines:")
    for where, size in sorted(lines.items(), key=lambda item: -item[1])[: args.top]:
        print(f"    {size / count:8.0f}  {short(where)}")
    types = {kind: number - before["types"].get(kind, 0) for kind, number in after["types"].items()}
    print(f"  objects per subscription, top {args.top} types:")
    for kind, number in sorted(types.items(), key=lambda item: -item[1])[: args.top]:
        print(f"    {number / count:8.2f}  {kind}")
    print(f"  gc-tracked objects per subscription: {sum(types.values()) / count:.1f}")
    sizes = {kind: size - before["sizes"].get(kind, 0) for kind, size in after["sizes"].items()}
    print(f"  sys.getsizeof bytes per subscription, top {args.top} kinds:")
    for kind, size in sorted(sizes.items(), key=lambda item: -item[1])[: args.top]:
        print(f"    {size / count:8.0f}  {kind}")
    print(f"  gc-tracked bytes per subscription (shallow): {sum(sizes.values()) / count:.0f}")


async def main(args: argparse.Namespace) -> None:
    upstream = streaming.Upstream()
    await upstream.start()
    try:
        for variant in args.variant or ["atlas=."]:
            await measure(variant, args, upstream)
    finally:
        await upstream.stop()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--variant", action="append", help="NAME=PATH[,ENV=VALUE...]")
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    frames = "traceback depth per allocation (0: no tracemalloc, RSS and object counts only)"
    parser.add_argument("--frames", type=int, default=1, help=frames)
    parser.add_argument("--top", type=int, default=25)
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
