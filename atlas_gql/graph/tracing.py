"""OpenTelemetry spans of GraphQL operations (with the `otel` extra, ATLAS_TRACING): Strawberry's
extension, made safe and whole.

- No query text and no argument values on spans: documents and arguments carry passwords
  (`login(input: {password: ...})`) and message contents. Spans name the operation and the
  field paths only.
- The operation's span is the *current* span for the whole operation, so everything it causes
  is in its trace: SQL of the resolvers and of the boundary's commit, and the work after-commit
  hooks start (a sendMessage's reply: upstream calls, Redis publishes, its SQL)."""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from strawberry.extensions import LifecycleStep
from strawberry.extensions.tracing import OpenTelemetryExtension


def _no_arguments(arguments: dict[str, Any], info: Any) -> dict[str, Any]:
    return {}


class OperationTracingExtension(OpenTelemetryExtension):
    def __init__(self, *, execution_context: Any = None) -> None:
        super().__init__(execution_context=execution_context, arg_filter=_no_arguments)

    def on_operation(self) -> Generator[None, None, None]:
        name = self.execution_context.operation_name
        span = self._tracer.start_span(
            f"GraphQL {name}" if isinstance(name, str) else "GraphQL operation",
            kind=SpanKind.SERVER,
        )
        span.set_attribute("component", "graphql")
        self._span_holder[LifecycleStep.OPERATION] = span
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            yield
        finally:
            operation_type: str | None = None
            with contextlib.suppress(Exception):  # the document did not parse
                operation_type = self.execution_context.operation_type.value
            name = self.execution_context.operation_name
            if operation_type is not None:
                span.set_attribute("graphql.operation.type", operation_type)
            if isinstance(name, str):
                span.set_attribute("graphql.operation.name", name)
                span.update_name(f"GraphQL {operation_type or 'operation'} {name}")
            elif operation_type is not None:
                span.update_name(f"GraphQL {operation_type}")
            result = self.execution_context.result
            errors = getattr(result, "errors", None)
            if errors:
                codes = [str((error.extensions or {}).get("code")) for error in errors]
                span.set_attribute("graphql.error.codes", codes)
                span.set_status(Status(StatusCode.ERROR, codes[0]))
            span.end()
            # (a streamed operation may end in another task's context)
            with contextlib.suppress(Exception):
                otel_context.detach(token)
