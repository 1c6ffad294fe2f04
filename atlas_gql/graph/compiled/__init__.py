"""Compiled reads: a query document becomes one SQL statement that builds the response's
`data` as JSON in PostgreSQL, authorization included (see docs/architecture.md, "Compiled
reads"). Whatever it cannot serve falls back to the resolver path."""

from atlas_gql.graph.compiled.errors import NotCompilable
from atlas_gql.graph.compiled.plans import (
    Answer,
    CompiledReads,
    Fallback,
    Plan,
    coerce_variables,
    compile_plan,
)

__all__ = [
    "Answer",
    "CompiledReads",
    "Fallback",
    "NotCompilable",
    "Plan",
    "coerce_variables",
    "compile_plan",
]
