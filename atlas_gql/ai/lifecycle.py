"""Start and stop the AI domain with the app: broker, provider (OpenAI client), orchestrator,
and the sweep that marks replies left IN_PROGRESS by a stopped server INCOMPLETE."""

from __future__ import annotations

from atlas_gql.ai.broker import create_broker
from atlas_gql.ai.provider import create_provider
from atlas_gql.ai.runs import AIRuntime
from atlas_gql.graph.runtime import Runtime

RUNTIME_KEY = "ai"


def ai_runtime(runtime: Runtime) -> AIRuntime:
    """The app's AI orchestrator (made by the startup hook)."""
    ai: AIRuntime = runtime.extras[RUNTIME_KEY]
    return ai


async def start_ai(runtime: Runtime) -> None:
    ai = AIRuntime(
        settings=runtime.settings,
        sessionmaker=runtime.sessionmaker,
        broker=create_broker(runtime.settings.redis_url),
        provider=create_provider(runtime.settings),
        spawn=runtime.spawn,
    )
    runtime.extras[RUNTIME_KEY] = ai
    await ai.start()


async def stop_ai(runtime: Runtime) -> None:
    ai: AIRuntime | None = runtime.extras.pop(RUNTIME_KEY, None)
    if ai is not None:
        await ai.stop()
