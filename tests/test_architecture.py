"""The import graph of atlas_gql has no cycle (lazy and TYPE_CHECKING imports included), and
no service commits but the named exceptions.

The layer rules themselves are import-linter contracts (.importlinter, run by `make lint`);
docs/architecture.md draws them."""

from __future__ import annotations

import re
from pathlib import Path

import grimp


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """One shortest cycle per strongly connected group of modules, e.g. [a, b, a]."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        # Tarjan's algorithm, iteratively: (module, the modules it imports still to visit).
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            module, imported = work[-1]
            for target in imported:
                if target not in index:
                    index[target] = low[target] = counter
                    counter += 1
                    stack.append(target)
                    on_stack.add(target)
                    work.append(
                        (target, iter(sorted(graph.find_modules_directly_imported_by(target))))
                    )
                    break
                if target in on_stack:
                    low[module] = min(low[module], index[target])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[module])
                if low[module] == index[module]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == module:
                            break
                    if len(group) > 1 or graph.direct_import_exists(
                        importer=module, imported=module
                    ):
                        groups.append(sorted(group))
    cycles = []
    for group in groups:
        start = group[0]
        members = set(group)
        shortest: tuple[str, ...] | None = None
        for first in sorted(graph.find_modules_directly_imported_by(start) & members):
            back = (
                (start,)
                if first == start
                else graph.find_shortest_chain(importer=first, imported=start, as_packages=False)
            )
            assert back is not None
            if shortest is None or len(back) < len(shortest):
                shortest = back
        assert shortest is not None
        cycles.append([start, *shortest] if shortest[-1] == start else [start, *shortest, start])
    return cycles


def test_atlas_gql_has_no_import_cycle() -> None:
    graph = grimp.build_graph("atlas_gql", exclude_type_checking_imports=False, cache_dir=None)
    cycles = import_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_a_cycle_is_found_and_named() -> None:
    graph = grimp.ImportGraph()
    for importer, imported in [
        ("pkg.kernel", "pkg.base"),
        ("pkg.service", "pkg.kernel"),
        ("pkg.kernel", "pkg.helpers"),
        ("pkg.helpers", "pkg.service"),
        ("pkg.graph", "pkg.service"),
        ("pkg.self", "pkg.self"),
    ]:
        graph.add_import(importer=importer, imported=imported)
    assert import_cycles(graph) == [
        ["pkg.helpers", "pkg.service", "pkg.kernel", "pkg.helpers"],
        ["pkg.self", "pkg.self"],
    ]


# The domain modules that may commit, because their work must outlive (or does not belong to)
# the operation that started it; docs/architecture.md ("Transactions") says why for each. Any
# other commit goes through `execute_transaction` or the operation boundary.
COMMITTING_DOMAIN_MODULES = {
    "ai/orchestrator.py",  # the reply task's own short transactions (background work)
    "ai/recovery.py",  # replies whose worker is gone, finished in short transactions
    "ai/titles.py",  # titles: no connection held across the model call (background too)
}
DOMAINS = ("auth", "projects", "ai", "logs")


def test_services_leave_the_commit_to_the_operation_boundary() -> None:
    root = Path(__file__).resolve().parents[1] / "atlas_gql"
    committing = sorted(
        str(path.relative_to(root))
        for domain in DOMAINS
        for path in (root / domain).rglob("*.py")
        if re.search(r"\.(commit|rollback)\(\)", path.read_text())
    )
    assert set(committing) <= COMMITTING_DOMAIN_MODULES, committing
