"""Relay global ids: `base64("Type:uuid")`, the opaque ids clients see.

Kernel: services (which check the ids their callers pass, e.g. a setting naming an assistant)
and the graph layer both use these, so they import nothing above `errors`."""

from __future__ import annotations

import base64
import binascii
import uuid

from atlas_gql.config import TEXT_LIMITS
from atlas_gql.errors import BadInput


def encode_global_id(type_name: str, object_id: uuid.UUID | str) -> str:
    """`base64("Type:uuid")`, unpadded and URL-safe."""
    return base64.urlsafe_b64encode(f"{type_name}:{object_id}".encode()).decode().rstrip("=")


def decode_global_id(global_id: str, *, field: str = "id") -> tuple[str, uuid.UUID]:
    """The (type name, uuid) inside a global id; BAD_USER_INPUT when it is not one of ours."""
    try:
        if len(global_id) > TEXT_LIMITS.global_id:
            raise ValueError(global_id)
        padded = global_id + "=" * (-len(global_id) % 4)
        type_name, _, raw_id = base64.urlsafe_b64decode(padded.encode()).decode().partition(":")
        if not type_name or not type_name.isidentifier():
            raise ValueError(global_id)
        return type_name, uuid.UUID(raw_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadInput(f"`{field}` is not a valid ID.", field=field) from None


def decode_id_of(global_id: str, *types: str, field: str = "id") -> uuid.UUID:
    """The uuid inside a global id that must name one of `types`."""
    type_name, object_id = decode_global_id(str(global_id), field=field)
    if types and type_name not in types:
        raise BadInput(f"`{field}` must be the ID of a {' or '.join(types)}.", field=field)
    return object_id
