"""Why a read takes the resolver path instead of the compiled one."""

from __future__ import annotations


class NotCompilable(Exception):
    """The document (or this shape of its variables) has something the compiler does not
    build in SQL; the reason is for logs and metrics."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
