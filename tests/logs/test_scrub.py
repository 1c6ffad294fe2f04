"""What a log row may hold: secret keys and secret-looking text are redacted."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from atlas_gql.logs.audit import record_activity, scrub, scrub_text
from atlas_gql.logs.models import ActivityLog

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhYmMifQ.c2lnbmF0dXJlLWJ5dGVz"


def test_scrub_redacts_secret_keys_at_any_depth() -> None:
    details = {
        "email": "a@example.com",
        "password": "hunter2-hunter2",
        "input": {"currentPassword": "old-one", "newPassword": "new-one", "name": "Ann"},
        "tokens": [{"refreshToken": "r"}, {"access_token": "a"}, {"api-key": "k"}],
        "Authorization": "Bearer abc",
        "count": 3,
    }
    assert scrub(details) == {
        "email": "a@example.com",
        "password": "[redacted]",
        "input": {"currentPassword": "[redacted]", "newPassword": "[redacted]", "name": "Ann"},
        "tokens": [
            {"refreshToken": "[redacted]"},
            {"access_token": "[redacted]"},
            {"api-key": "[redacted]"},
        ],
        "Authorization": "[redacted]",
        "count": 3,
    }
    assert details["password"] == "hunter2-hunter2"  # a copy; the input is untouched


def test_scrub_text_redacts_tokens_keys_and_assignments() -> None:
    cases = {
        f"header Bearer {JWT} end": "[redacted-jwt]",
        "Authorization: Basic dXNlcjpwYXNzd29yZA==": "Authorization: [redacted]",
        "key sk-proj-abcdefghijklmnop": "[redacted-key]",
        "password=hunter2hunter2, next": "password=[redacted], next",
        '{"refresh_token": "opaque-refresh-value"}': '{"refresh_token": [redacted]}',
        "Key (token_hash)=(ab12cd) already exists.": "Key (token_hash)=([redacted]) already",
        "invalid input for query argument $1: 'hunter2hunter2' (expected int)": (
            "query argument $1: [redacted] (expected int)"
        ),
        "invalid input for query argument $1: 'x' (invalid UUID 'hunter2hunter2': bad)": (
            "query argument $1: [redacted] (invalid UUID '[redacted]': bad)"
        ),
        'invalid input syntax for type uuid: "hunter2hunter2"': (
            "invalid input syntax for type uuid: [redacted]"
        ),
        "Key (lower(email))=(hunter2hunter2@example.com) already exists.": (
            "Key (lower(email))=([redacted]) already exists."
        ),
        'JSON data, line 1: {"a": "hunter2hunter2\\u0000...': "JSON data, line 1: [redacted]",
        'invalid byte sequence for encoding "UTF8": 0xed 0xa0 0x80': (
            'invalid byte sequence for encoding "UTF8": [redacted]'
        ),
        "unnamed portal parameter $1 = 'hunter2hunter2'": "portal parameter $1 = [redacted]",
    }
    for text, expected in cases.items():
        redacted = scrub_text(text)
        assert expected in redacted, (text, redacted)
    for secret in (JWT, "hunter2hunter2", "dXNlcjpwYXNzd29yZA==", "opaque-refresh-value"):
        assert all(secret not in scrub_text(text) for text in cases)
    # Ordinary words stay readable; the values PostgreSQL quotes do not (an email is the
    # user's text too).
    plain = "max_tokens=5000 tokens: 12, Key (email)=(a@example.com) already exists."
    assert (
        scrub_text(plain) == "max_tokens=5000 tokens: 12, Key (email)=([redacted]) already exists."
    )


async def test_record_activity_scrubs_details_and_orders_rows_in_one_transaction(
    db: AsyncSession,
) -> None:
    first = record_activity(
        db=db,
        action="auth.login_failed",
        user_id=None,
        entity_type="User",
        ip_address="203.0.113.9",
        details={"email": "x@example.com", "password": "Sup3r-Secret!", "reason": JWT},
    )
    second = record_activity(db=db, action="auth.login_failed", user_id=None)
    await db.flush()
    stored = (
        await db.execute(sa.select(ActivityLog).where(col(ActivityLog.id) == first.id))
    ).scalar_one()
    assert stored.details == {
        "email": "x@example.com",
        "password": "[redacted]",
        "reason": "[redacted-jwt]",
    }
    # Written in one transaction, still ordered (now() would tie them).
    assert first.created_at < second.created_at
