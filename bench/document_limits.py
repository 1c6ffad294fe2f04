"""Benchmark: the worst documents the limits let through, and what each costs the event loop.

    .venv/bin/python bench/document_limits.py [--repeat 5] [--max-tokens N] [--max-bytes N]

For every family of hostile document in tests/graph/document_attacks.py (fragment bombs,
duplicate fields and aliases, conflicting fragments, deep nesting, wide directives, many
variables and operations, comment / whitespace / string padding, ...) it builds the largest
variant that ATLAS_MAX_DOCUMENT_BYTES and ATLAS_MAX_TOKENS accept, the largest the whole guard
accepts (when smaller), and the next size up (which the parser refuses), and prints the CPU
time of each step of the document guard:

    parse     graphql-core's parser (with ATLAS's lexer) and the token limit
    analyse   the structure count and the depth / alias / cost pass
    validate  graphql-core's rules (field merging behind the linear check)
    total     DocumentGuard.prepare, cache off (what a request pays; refusals stop early)

Times are thread CPU time (the best of --repeat runs), so other processes on the machine
inflate them less than wall-clock time would; the wall-clock total is printed too. No
database or server is needed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from graphql import GraphQLError, validate  # noqa: E402

from atlas_gql.config import Settings  # noqa: E402
from atlas_gql.graph.limits import DocumentGuard, DocumentLimits  # noqa: E402
from atlas_gql.graph.limits.analysis import NestedTooDeeply, analyse  # noqa: E402
from atlas_gql.graph.limits.extension import PreparedDocument  # noqa: E402
from atlas_gql.graph.limits.lexer import parse_document  # noqa: E402
from atlas_gql.graph.limits.structure import count_document  # noqa: E402
from atlas_gql.graph.schema import build_schema  # noqa: E402
from tests.graph.document_attacks import ATTACKS, largest  # noqa: E402


def best_of(repeat: int, step: Callable[[], Any]) -> tuple[float, float, Any]:
    """(best CPU ms, best wall ms, last result)."""
    cpu = wall = float("inf")
    result: Any = None
    for _ in range(repeat):
        started_cpu, started_wall = time.thread_time(), time.perf_counter()
        try:
            result = step()
        except (GraphQLError, NestedTooDeeply) as error:
            result = error
        cpu = min(cpu, time.thread_time() - started_cpu)
        wall = min(wall, time.perf_counter() - started_wall)
    return cpu * 1000, wall * 1000, result


def outcome(result: Any) -> str:
    if isinstance(result, GraphQLError):
        code = (result.extensions or {}).get("code", "GRAPHQL_VALIDATION_FAILED")
        return f"refused {code}: {result.message[:60]}"
    if isinstance(result, PreparedDocument):
        if not result.errors:
            return "accepted"
        error = result.errors[0]
        code = (error.extensions or {}).get("code", "GRAPHQL_VALIDATION_FAILED")
        return f"refused {code}: {error.message[:60]}"
    return repr(result)[:60]


def largest_accepted(
    guard: DocumentGuard, schema: Any, attack: Any, most: int
) -> tuple[int, str] | None:
    """The largest n (up to `most`) whose document the guard accepts, all limits included."""

    def accepted(n: int) -> bool:
        outcome = guard.prepare(schema, attack.build(n), cacheable=lambda: False)
        return isinstance(outcome, PreparedDocument) and not outcome.errors

    if not accepted(1):
        return None
    low, high = 1, most
    if accepted(high):
        return high, attack.build(high)
    while high - low > 1:
        middle = (low + high) // 2
        if accepted(middle):
            low = middle
        else:
            high = middle
    return low, attack.build(low)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=None)
    parser.add_argument("--max-bytes", type=int, default=None)
    args = parser.parse_args()

    overrides: dict[str, Any] = {"atlas_document_cache_bytes": 0}
    if args.max_tokens:
        overrides["atlas_max_tokens"] = args.max_tokens
    if args.max_bytes:
        overrides["atlas_max_document_bytes"] = args.max_bytes
    settings = Settings.model_construct(**overrides)
    limits = DocumentLimits.from_settings(settings)
    guard = DocumentGuard(limits)
    schema = build_schema(settings)._schema
    print(
        f"limits: {limits.max_document_bytes} bytes, {limits.max_tokens} tokens, caps {limits.caps}"
    )
    load = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} cores, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"
    )
    header = (
        f"{'document':30} {'n':>6} {'bytes':>7} {'parse':>7} {'analyse':>8} "
        f"{'validate':>8} {'total':>7} {'wall':>7}  outcome"
    )
    print(header)
    print("-" * len(header))
    worst: tuple[float, str] = (0.0, "")
    for attack in ATTACKS:
        found = largest(attack, max_bytes=limits.max_document_bytes, max_tokens=limits.max_tokens)
        variants: list[tuple[str, int, str]] = []
        if found is not None:
            variants.append(("", *found))
            accepted = largest_accepted(guard, schema, attack, found[0])
            if accepted is not None and accepted[0] != found[0]:
                variants.append((" (largest accepted)", *accepted))
        n = found[0] + 1 if found is not None else 1
        if n <= attack.most:
            variants.append((" (+1)", n, attack.build(n)))
        for suffix, size, document in variants:
            if len(document.encode()) > limits.max_document_bytes:
                document = document[: limits.max_document_bytes]
                suffix += " (cut)"
            parse_ms, _, parsed = best_of(
                args.repeat, lambda d=document: parse_document(d, max_tokens=limits.max_tokens)
            )
            analyse_ms = validate_ms = 0.0
            if not isinstance(parsed, GraphQLError):
                analyse_ms, _, _ = best_of(
                    args.repeat,
                    lambda d=parsed: (count_document(d), analyse(schema, d)),
                )
                validate_ms, _, _ = best_of(
                    args.repeat, lambda d=parsed: validate(schema, d, guard.rules)
                )
            total_ms, wall_ms, result = best_of(
                args.repeat,
                lambda d=document: guard.prepare(schema, d, cacheable=lambda: False),
            )
            name = attack.name + suffix
            print(
                f"{name:30} {size:>6} {len(document.encode()):>7} {parse_ms:>7.1f} "
                f"{analyse_ms:>8.1f} {validate_ms:>8.1f} {total_ms:>7.1f} {wall_ms:>7.1f}  "
                f"{outcome(result)}"
            )
            worst = max(worst, (total_ms, name))
    print("-" * len(header))
    print(f"worst total: {worst[0]:.1f} ms CPU ({worst[1]})")
    print("(analyse and validate are timed on their own, even where the guard refuses earlier)")


if __name__ == "__main__":
    main()
