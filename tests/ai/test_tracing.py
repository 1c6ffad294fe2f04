"""OpenTelemetry (the otel extra): the span tree of one sendMessage, from the operation down to
its SQL, the upstream call of its reply and the reply's Redis publishes, with no secret or
message text on any span."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.ai.conftest import StartServer
from tests.ai.test_redis_broker import REDIS_URL
from tests.live import wait_until

CONTENT = "Private words about payroll"
SEND = """
mutation SendMessage($input: SendMessageInput!) {
  sendMessage(input: $input) { assistantMessage { id } }
}
"""


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    """Spans of this process, in memory (the global provider is set once per process)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    yield exporter
    exporter.clear()
    processor.shutdown()


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def test_span_tree_of_one_send_message(
    start_ai_server: StartServer, exporter: InMemorySpanExporter
) -> None:
    ai = await start_ai_server(atlas_tracing=True, redis_url=REDIS_URL)
    thread_id = await ai.new_thread()
    async with ai.client.subscribe(ai.people.member, thread_id) as subscription:
        exporter.clear()
        body = await ai.client.gql(
            SEND, {"input": {"threadId": thread_id, "content": CONTENT}}, token=ai.people.member
        )
        assert "errors" not in body, body
        events = await subscription.until_final()
    assert events[-1]["__typename"] == "MessageCompleted"

    def root() -> ReadableSpan | None:
        found = [s for s in exporter.get_finished_spans() if s.name.endswith("SendMessage")]
        return found[0] if found else None

    def in_trace() -> list[ReadableSpan]:
        span = root()
        assert span is not None
        return [
            s for s in exporter.get_finished_spans() if s.context.trace_id == span.context.trace_id
        ]

    def reply_traced() -> bool:
        spans = in_trace() if root() is not None else []
        return any(
            "/v1/responses" in str(attributes(s).get("url.full", attributes(s).get("http.url")))
            for s in spans
        ) and any(attributes(s).get("db.system") == "redis" for s in spans)

    await wait_until(reply_traced)
    operation = root()
    assert operation is not None
    assert operation.name == "GraphQL mutation SendMessage"
    assert operation.kind is SpanKind.SERVER
    assert operation.parent is None
    assert attributes(operation)["graphql.operation.type"] == "mutation"
    spans = in_trace()
    by_id = {span.context.span_id: span for span in spans}

    # Every span of the trace hangs from the operation: one tree.
    for span in spans:
        if span is not operation:
            assert span.parent is not None, span.name
            assert span.parent.span_id in by_id, span.name

    def ancestors(span: ReadableSpan) -> list[str]:
        names = []
        while span.parent is not None:
            span = by_id[span.parent.span_id]
            names.append(span.name)
        return names

    [resolver] = [s for s in spans if s.name == "GraphQL Resolving: sendMessage"]
    assert resolver.parent is not None
    assert resolver.parent.span_id == operation.context.span_id
    sql = [s for s in spans if attributes(s).get("db.system") in {"postgresql", "postgres"}]
    inserts = [s for s in sql if "INSERT INTO messages" in str(attributes(s).get("db.statement"))]
    assert inserts
    assert all("GraphQL Resolving: sendMessage" in ancestors(s) for s in inserts)
    upstream = [
        s
        for s in spans
        if "/v1/responses" in str(attributes(s).get("url.full", attributes(s).get("http.url")))
    ]
    assert upstream
    assert all(s.kind is SpanKind.CLIENT for s in upstream)
    assert all(operation.name in ancestors(s) for s in upstream)
    assert any(attributes(s).get("db.system") == "redis" for s in spans)

    # Nothing the client sent (the message, the token) is on a span.
    text = repr([(s.name, attributes(s)) for s in spans])
    assert CONTENT not in text
    assert ai.people.member not in text
    assert "query" not in attributes(operation)
