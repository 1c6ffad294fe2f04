"""A least-recently-used map bounded by the bytes its values hold, not by their number."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

KeyT = TypeVar("KeyT")
ValueT = TypeVar("ValueT")


class BytesBoundedLRU(Generic[KeyT, ValueT]):
    """Evicts the least recently used entries once their weights (approximate bytes) exceed
    `max_bytes`. An entry heavier than `max_bytes // 8` is never kept, so a handful of large
    documents cannot push out everything else."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_bytes // 8
        self.total_bytes = 0
        self._entries: OrderedDict[KeyT, tuple[ValueT, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: KeyT) -> ValueT | None:
        found = self._entries.get(key)
        if found is None:
            return None
        self._entries.move_to_end(key)
        return found[0]

    def put(self, key: KeyT, value: ValueT, weight: int) -> bool:
        """Keep `value` (replacing an entry of the same key); False when it is too heavy."""
        if weight > self.max_entry_bytes:
            return False
        previous = self._entries.pop(key, None)
        if previous is not None:
            self.total_bytes -= previous[1]
        self._entries[key] = (value, weight)
        self.total_bytes += weight
        while self.total_bytes > self.max_bytes:
            _, (_, evicted_weight) = self._entries.popitem(last=False)
            self.total_bytes -= evicted_weight
        return True

    def clear(self) -> None:
        self._entries.clear()
        self.total_bytes = 0
