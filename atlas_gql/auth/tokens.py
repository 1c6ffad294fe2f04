"""Access tokens (JWT) and opaque secrets (refresh tokens, session secrets)."""

from __future__ import annotations

import functools
import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

from atlas_gql.config import Settings
from atlas_gql.errors import Unauthenticated

ACCESS_TOKEN_TYPE = "access"
# Only symmetric HMAC algorithms are accepted; "none" and anything unexpected never verify.
ALLOWED_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})


@dataclass(frozen=True)
class AccessClaims:
    user_id: uuid.UUID
    session_id: uuid.UUID
    expires_at: datetime


def hash_token(token: str) -> str:
    """SHA-256 hex digest: how refresh tokens and session secrets are stored."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_opaque_token() -> str:
    """256 bits of randomness, URL-safe."""
    return secrets.token_urlsafe(32)


def _algorithm(settings: Settings) -> str:
    if settings.atlas_jwt_algorithm not in ALLOWED_ALGORITHMS:
        raise ValueError(f"ATLAS_JWT_ALGORITHM must be one of {sorted(ALLOWED_ALGORITHMS)}")
    return settings.atlas_jwt_algorithm


def issue_access_token(
    *, settings: Settings, user_id: uuid.UUID, session_id: uuid.UUID, now: datetime | None = None
) -> tuple[str, datetime]:
    """A signed JWT for the user's session and its expiry time."""
    issued_at = now or datetime.now(UTC)
    expires_at = issued_at + timedelta(seconds=settings.atlas_access_token_ttl)
    claims = {
        "sub": str(user_id),
        "sid": str(session_id),
        "typ": ACCESS_TOKEN_TYPE,
        "iss": settings.atlas_jwt_issuer,
        "aud": settings.atlas_jwt_audience,
        "iat": int(issued_at.timestamp()),
        "exp": int(expires_at.timestamp()),
        "jti": uuid.uuid4().hex,
    }
    token = jwt.encode(claims, settings.atlas_jwt_secret, algorithm=_algorithm(settings))
    return token, expires_at.replace(microsecond=0)


# Seconds of clock skew allowed on `exp` and `iat`.
LEEWAY_SECONDS = 5
# Access tokens whose verification is remembered (`_verified`): the live tokens of a
# worker's busiest clients; a token a little over 200 bytes.
VERIFIED_TOKENS = 1024


def decode_access_token(token: str, *, settings: Settings) -> AccessClaims:
    """Verify signature, algorithm, issuer, audience, expiry and type; UNAUTHENTICATED otherwise.
    A token's signature and claims are verified once (remembered: `_verified`, keyed on the
    token and the settings that verify it), its expiry at every use, as PyJWT checks it."""
    claims = _verified(
        token,
        settings.atlas_jwt_secret,
        _algorithm(settings),
        settings.atlas_jwt_issuer,
        settings.atlas_jwt_audience,
    )
    if claims.expires_at.timestamp() <= time.time() - LEEWAY_SECONDS:
        raise Unauthenticated("The access token has expired.", reason="TOKEN_EXPIRED")
    return claims


@functools.lru_cache(maxsize=VERIFIED_TOKENS)
def _verified(token: str, secret: str, algorithm: str, issuer: str, audience: str) -> AccessClaims:
    """The claims of a token that verified (a refusal raises, and is not remembered). Every
    request carries its token: verifying the signature and the claims cost ~0.1-0.3 ms."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[algorithm],
            issuer=issuer,
            audience=audience,
            options={"require": ["exp", "iat", "iss", "aud", "sub", "sid", "typ"]},
            leeway=LEEWAY_SECONDS,
        )
    except jwt.ExpiredSignatureError:
        raise Unauthenticated("The access token has expired.", reason="TOKEN_EXPIRED") from None
    except jwt.PyJWTError:
        raise Unauthenticated("The access token is invalid.", reason="TOKEN_INVALID") from None
    if claims.get("typ") != ACCESS_TOKEN_TYPE:
        raise Unauthenticated("The access token is invalid.", reason="TOKEN_INVALID")
    try:
        return AccessClaims(
            user_id=uuid.UUID(str(claims["sub"])),
            session_id=uuid.UUID(str(claims["sid"])),
            expires_at=datetime.fromtimestamp(int(claims["exp"]), UTC),
        )
    except (ValueError, TypeError):
        raise Unauthenticated("The access token is invalid.", reason="TOKEN_INVALID") from None


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` value; None when absent."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("The Authorization header must be `Bearer <token>`.")
    return token.strip()
