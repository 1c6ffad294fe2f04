"""Benchmark: what the input-sanitising layer (atlas_gql/graph/limits/inputs.py) costs.

    .venv/bin/python bench/inputs.py [--rounds 200]

Prints the CPU time of checking the variable values of typical requests and of the largest
a body may carry (MAX_JSON_VALUES values, non-ASCII text), and of walking the literals of a
large document (checked once per cached document).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from graphql import parse

from atlas_gql.graph.limits.body import MAX_JSON_VALUES
from atlas_gql.graph.limits.inputs import literal_string_errors, variable_string_errors


def timed(label: str, work: Callable[[], Any], rounds: int) -> None:
    work()  # warm
    started = time.process_time()
    for _ in range(rounds):
        work()
    per_call = (time.process_time() - started) / rounds
    print(f"{label:<58} {per_call * 1e6:>10.1f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=200)
    rounds = parser.parse_args().rounds

    login = {"input": {"email": "someone@example.com", "password": "correct horse battery"}}
    message = {"input": {"threadId": "VGhyZWFkOjE", "content": "héllo wörld " * 2_500}}
    widest = {"v": [f"välue {index}" for index in range(MAX_JSON_VALUES - 1)]}
    nested: dict[str, Any] = {"leaf": "x"}
    for depth in range(31):
        nested = {f"k{depth}": nested, "s": "ü" * 10}
    literals = parse(
        "mutation { "
        + " ".join(
            f'a{index}: setProjectSetting(projectId: "x", key: "k{index}", '
            f'value: {{a: ["ü{index}", {{b: "c"}}], d: "e"}}) {{ key }}'
            for index in range(25)
        )
        + " }"
    )
    print(f"sanitising layer, CPU time per request ({rounds} rounds)")
    timed("login variables (2 strings)", lambda: variable_string_errors(login), rounds)
    timed(
        "sendMessage, 30,000 non-ASCII characters", lambda: variable_string_errors(message), rounds
    )
    timed(
        f"{MAX_JSON_VALUES - 1} non-ASCII strings (the widest body allowed)",
        lambda: variable_string_errors(widest),
        max(rounds // 10, 5),
    )
    timed("32 levels of objects", lambda: variable_string_errors({"v": nested}), rounds)
    timed(
        "literals of 25 aliased mutations (once per document)",
        lambda: literal_string_errors(literals),
        rounds,
    )


if __name__ == "__main__":
    main()
