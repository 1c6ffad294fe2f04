"""More simultaneous subscribers than pooled database connections all get their events: a
subscription holds no connection while it authenticates, checks access or waits."""

from __future__ import annotations

import asyncio
import contextlib

from tests.ai.conftest import AIServer
from tests.live import wait_until

SUBSCRIBERS = 45  # the live server's pool holds 10 + 10 overflow connections


async def test_subscribers_beyond_the_pool_size_all_receive_the_reply(ai: AIServer) -> None:
    thread_id = await ai.new_thread()
    member = ai.people.member
    async with contextlib.AsyncExitStack() as stack:
        subscriptions = await asyncio.gather(
            *(
                stack.enter_async_context(ai.client.subscribe(member, thread_id))
                for _ in range(SUBSCRIBERS)
            )
        )
        sent = await ai.send(thread_id, token=member)
        assert "errors" not in sent, sent
        finals = await asyncio.wait_for(
            asyncio.gather(*(subscription.until_final() for subscription in subscriptions)), 60
        )
    assert [events[-1]["__typename"] for events in finals] == ["MessageCompleted"] * SUBSCRIBERS
    pool = ai.server.app.state.atlas["runtime"].engine.pool
    # None kept: every connection comes back (the app's own periodic work, e.g. its reply
    # sweep or an access re-check still finishing, may hold one for a moment).
    await wait_until(lambda: pool.checkedout() == 0)
