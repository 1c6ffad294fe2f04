"""The batched access re-check of open subscriptions (`ai/watch.py`, issue 10 part 4.3) in
SQL: one statement judges every (user, credential, thread) key, sessions and API keys
together, with the error each failed subscription ends with. The live side (subscriptions
stopped mid-reply) is in tests/ai/test_fanout.py."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from atlas_gql.ai.models import Thread
from atlas_gql.ai.watch import SubscriptionWatches, Watch, failed_access
from atlas_gql.auth.account import create_user_account, find_user_by_email
from atlas_gql.auth.models import ApiKeyScope, RoleName, User
from atlas_gql.auth.sessions import start_session
from atlas_gql.auth.tokens import decode_access_token
from atlas_gql.config import Settings
from tests.conftest import SEED_PASSWORD
from tests.factories import create_api_key, create_thread


async def test_one_statement_judges_sessions_and_keys(db: AsyncSession, settings: Settings) -> None:
    async def user(email: str) -> User:
        found = await find_user_by_email(db=db, email=email)
        assert found is not None
        return found

    async def session_of(account: User) -> uuid.UUID:
        tokens = await start_session(db=db, settings=settings, user_id=account.id)
        return decode_access_token(tokens.access_token, settings=settings).session_id

    member, admin = await user("user@example.com"), await user("admin@example.com")
    outsider = await create_user_account(
        db=db,
        email=f"outsider-{uuid.uuid4().hex[:8]}@example.com",
        password=SEED_PASSWORD,
        roles=(RoleName.USER,),
        bcrypt_rounds=4,
    )
    in_project = sa.select(Thread).where(col(Thread.project_id).is_not(None))
    thread = (await db.execute(in_project)).scalars().first()
    assert thread is not None
    member_session, admin_session = await session_of(member), await session_of(admin)
    outsider_session = await session_of(outsider)
    ok = (member.id, member_session, None, thread.id)
    as_admin = (admin.id, admin_session, None, thread.id)
    stranger = (outsider.id, outsider_session, None, thread.id)
    no_session = (member.id, uuid.uuid4(), None, thread.id)
    no_thread = (member.id, member_session, None, uuid.uuid4())
    # API keys, in the same statement: live, revoked, expired, someone else's, and an
    # administrator's key on a personal thread of another user (seen only with ADMIN scope).
    day = timedelta(days=1)
    now = datetime.now(UTC)
    key = (member.id, None, (await create_api_key(db, member)).id, thread.id)
    revoked = await create_api_key(db, member, revoked_at=now)
    expired = await create_api_key(db, member, expires_at=now - day)
    by_revoked, by_expired = (
        (member.id, None, revoked.id, thread.id),
        (member.id, None, expired.id, thread.id),
    )
    not_theirs = (outsider.id, None, key[2], thread.id)
    personal = await create_thread(db, creator=member)
    admin_keys = {
        scopes: (await create_api_key(db, admin, scopes, expires_at=now + day)).id
        for scopes in [(ApiKeyScope.READ,), (ApiKeyScope.READ, ApiKeyScope.ADMIN)]
    }
    narrowed = (admin.id, None, admin_keys[(ApiKeyScope.READ,)], personal.id)
    as_admin_key = (admin.id, None, admin_keys[(ApiKeyScope.READ, ApiKeyScope.ADMIN)], personal.id)
    everything = [ok, as_admin, stranger, no_session, no_thread, key, by_revoked, by_expired]
    everything += [not_theirs, narrowed, as_admin_key]
    failed = await failed_access(db, everything)
    assert {watched: error.code.value for watched, error in failed.items()} == {
        stranger: "NOT_FOUND",
        no_session: "UNAUTHENTICATED",
        no_thread: "NOT_FOUND",
        by_revoked: "UNAUTHENTICATED",
        by_expired: "UNAUTHENTICATED",
        not_theirs: "UNAUTHENTICATED",
        narrowed: "NOT_FOUND",
    }
    # A key's refusal says what a request with it is answered; a session's says it ended.
    assert failed[by_revoked].extensions.get("reason") == "API_KEY_INVALID"
    assert "reason" not in failed[no_session].extensions
    await db.execute(sa.update(User).where(col(User.id) == member.id).values(is_active=False))
    assert set(await failed_access(db, [ok, as_admin, key, as_admin_key])) == {ok, key}


def test_an_exchange_with_nothing_to_check_goes_on_at_once() -> None:
    """The sender watching their own exchange (vouched for), or no watch at all: the check
    returns without awaiting anything (no task, no round of the event loop before the
    event goes out). Those that need their read are checked as before (test_fanout.py)."""

    def unused_sessionmaker() -> Any:
        raise AssertionError("no statement for an exchange with nothing to check")

    watches = SubscriptionWatches(sessionmaker=cast(Any, unused_sessionmaker), interval=0)
    thread_id = uuid.uuid4()
    sender = watches.add(Watch(user_id=uuid.uuid4(), session_id=uuid.uuid4(), thread_id=thread_id))
    watches.vouch(sender.key, (7, 8))
    for sequence, thread in ((7, thread_id), (1, uuid.uuid4())):
        step = watches.check_exchange(thread, sequence).__await__()
        with pytest.raises(StopIteration):
            step.send(None)  # finished at its first step: it never suspended
