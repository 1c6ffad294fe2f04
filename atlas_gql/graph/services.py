"""The domains' long-lived objects, typed: what the app's lifespan builds once on top of the
kernel's Runtime and every Context holds. The kernel knows no domain, so they are composed
here, in the layer that sits above all of them."""

from __future__ import annotations

from dataclasses import dataclass

from atlas_gql.ai.lifecycle import start_ai, stop_ai
from atlas_gql.ai.orchestrator import AIRuntime
from atlas_gql.auth.ratelimit import LoginLimiter, build_login_limiter
from atlas_gql.runtime import Runtime


@dataclass(frozen=True)
class Services:
    runtime: Runtime
    # The reply orchestrator with its event broker and provider (OpenAI client).
    ai: AIRuntime
    # Failed-login limits (Redis counters when REDIS_URL is set, else the database's).
    login_limiter: LoginLimiter


async def start_services(runtime: Runtime) -> Services:
    """Build and start the domains' parts; their clients close with the runtime."""
    login_limiter = build_login_limiter(runtime.settings)
    runtime.on_close(login_limiter.aclose)
    ai = await start_ai(runtime)
    return Services(runtime=runtime, ai=ai, login_limiter=login_limiter)


async def stop_services(services: Services) -> None:
    """Stop what runs in the background (replies, the stale-reply sweep, the broker)."""
    await stop_ai(services.ai)
