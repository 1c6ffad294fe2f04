"""Limits on every request: document size, shape, depth, aliases, tokens, cost, body size,
introspection (see docs/security.md)."""

from atlas_gql.graph.limits.body import BodySizeLimitMiddleware
from atlas_gql.graph.limits.extension import (
    DocumentGuard,
    DocumentLimits,
    DocumentLimitsExtension,
    limit_extensions,
)

__all__ = [
    "BodySizeLimitMiddleware",
    "DocumentGuard",
    "DocumentLimits",
    "DocumentLimitsExtension",
    "limit_extensions",
]
