"""bcrypt password hashing, run off the event loop."""

from __future__ import annotations

import asyncio
from functools import lru_cache

import bcrypt

from atlas_gql.config import TEXT_LIMITS
from atlas_gql.errors import BadInput

MIN_PASSWORD_LENGTH = 8
# bcrypt ignores everything after 72 bytes; refuse instead of truncating silently.
MAX_PASSWORD_BYTES = TEXT_LIMITS.password_bytes
BCRYPT_ROUNDS = 12


def validate_password(password: str, *, field: str = "password") -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise BadInput(
            f"The password must be at least {MIN_PASSWORD_LENGTH} characters.", field=field
        )
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise BadInput(
            f"The password must be at most {MAX_PASSWORD_BYTES} bytes in UTF-8.", field=field
        )


def hash_password_sync(password: str, *, rounds: int = BCRYPT_ROUNDS) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()


async def hash_password(password: str, *, rounds: int = BCRYPT_ROUNDS) -> str:
    """Validate and hash a new password (ATLAS_BCRYPT_ROUNDS sets `rounds`)."""
    validate_password(password)
    return await asyncio.to_thread(hash_password_sync, password, rounds=rounds)


# A hash of nothing anyone types, at the default cost, so even the first unknown-email
# attempt of a process costs exactly one check (other costs are made on first use).
_DUMMY_HASH_12 = b"$2b$12$nnZC/gmQ.0CTJzCea1wP1OvGFZO/R9lWL2FUr6QD3qM6UInXyAkgy"


@lru_cache(maxsize=4)
def _dummy_hash(rounds: int) -> bytes:
    if rounds == BCRYPT_ROUNDS:
        return _DUMMY_HASH_12
    return hash_password_sync("dummy password for timing", rounds=rounds).encode()


def _verify_sync(password: str, password_hash: str | None, dummy_rounds: int) -> bool:
    encoded = password.encode()
    if password_hash is None or len(encoded) > MAX_PASSWORD_BYTES:
        # Same cost as a real check, so an unknown account takes as long as a wrong password.
        bcrypt.checkpw(encoded[:MAX_PASSWORD_BYTES], _dummy_hash(dummy_rounds))
        return False
    try:
        return bcrypt.checkpw(encoded, password_hash.encode())
    except ValueError:
        return False


async def verify_password(
    password: str, password_hash: str | None, *, dummy_rounds: int = BCRYPT_ROUNDS
) -> bool:
    """True when `password` matches; with no hash, spends a dummy check (at `dummy_rounds`,
    the cost of the server's own hashes) and returns False."""
    return await asyncio.to_thread(_verify_sync, password, password_hash, dummy_rounds)
