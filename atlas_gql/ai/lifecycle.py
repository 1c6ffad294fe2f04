"""Start and stop the AI domain with the app: broker, provider (OpenAI client), orchestrator,
and the sweep that marks replies left IN_PROGRESS by a stopped server INCOMPLETE."""

from __future__ import annotations

from atlas_gql.ai.broker import create_broker
from atlas_gql.ai.orchestrator import AIRuntime
from atlas_gql.ai.provider import create_provider
from atlas_gql.runtime import Runtime


async def start_ai(runtime: Runtime) -> AIRuntime:
    """The app's AI orchestrator, started (the app's lifespan holds it in `Services.ai`)."""
    ai = AIRuntime(
        settings=runtime.settings,
        sessionmaker=runtime.sessionmaker,
        broker=create_broker(runtime.settings),
        provider=create_provider(runtime.settings),
        spawn=runtime.spawn,
    )
    await ai.start()
    return ai


async def stop_ai(ai: AIRuntime) -> None:
    await ai.stop()
