"""Per-thread event numbers, handed out in reserved blocks.

`Thread.last_event_sequence` is the high-water mark of numbers handed out for the thread.
`sendMessage` (holding the thread row lock) takes the numbers of its MessageCreated events and
*reserves* a block above them for the reply (`SequenceBlock.open`); the reply numbers its
events inside the block and reserves the next block in the database before it runs out
(`extend_to`); at the end it gives back what it did not use (`release`). So every number ever
published is at or below the stored mark (a crash or a second worker can never hand out a
number twice), one reply at a time per thread means one publisher at a time, and numbers
strictly increase (after a crash they may skip, never go back).

A background reply (resumable, see orchestrator.py) numbers its deltas `base + the upstream
sequence_number` of their event (`take_at`) rather than one after the other: a delta read
again after a resume gets the number it had the first time, so a subscriber that saw it drops
the repeat, and one that did not gets it. Its numbers skip a little (upstream events that
carry no text), never go back.

None of these writes moves `Thread.updated_at`: numbering is bookkeeping, not an edit."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlmodel import col

from atlas_gql.ai.models import Thread

# Numbers reserved at a time for a reply's events: a reply of up to this many deltas writes
# the thread row twice (at sendMessage and at its end), never in between.
SEQUENCE_BLOCK = 1024


@dataclass
class SequenceBlock:
    """The numbers a reply may still publish: `next` up to `reserved_until` (inclusive)."""

    next: int
    reserved_until: int

    @classmethod
    def open(cls, thread: Thread, *, taken: int) -> tuple[list[int], SequenceBlock]:
        """At sendMessage, with the thread row locked: `taken` numbers for events published
        now, and a block above them for the reply. Sets the thread's new mark (flushed with
        the caller's transaction)."""
        base = thread.last_event_sequence
        numbers = [base + offset for offset in range(1, taken + 1)]
        block = cls(next=base + taken + 1, reserved_until=base + taken + SEQUENCE_BLOCK)
        thread.last_event_sequence = block.reserved_until
        return numbers, block

    @classmethod
    def resume(cls, *, last_published: int, thread_mark: int) -> SequenceBlock:
        """For a reply resumed by another worker: numbers after `last_published` (the number
        of its last checkpointed event), under the thread's stored mark (every number its
        former worker published is at or below it)."""
        return cls(next=last_published + 1, reserved_until=thread_mark)

    def take(self) -> int:
        """The next number. Call `needs_extension` afterwards."""
        number = self.next
        self.next += 1
        return number

    def take_at(self, number: int) -> int:
        """`number` (or the next one, if `number` was passed already). Call `needs_extension`
        afterwards: `number` may lie beyond the reservation."""
        number = max(number, self.next)
        self.next = number + 1
        return number

    @property
    def needs_extension(self) -> bool:
        """True when the block has no number left beyond those taken (the final event needs
        one), or a number was taken beyond it: reserve more (`extension`) before publishing."""
        return self.next > self.reserved_until

    def extension(self) -> int:
        """The mark to store for the next block."""
        return max(self.reserved_until, self.next - 1 + SEQUENCE_BLOCK)

    def extend_statement(self, thread_id: uuid.UUID, mark: int) -> sa.Update:
        return (
            sa.update(Thread)
            .where(col(Thread.id) == thread_id)
            .values(
                last_event_sequence=sa.func.greatest(col(Thread.last_event_sequence), mark),
                updated_at=col(Thread.updated_at),
            )
        )

    def extended(self, mark: int) -> None:
        """The database holds `mark` now."""
        self.reserved_until = mark

    def release_statement(self, thread_id: uuid.UUID, final_sequence: int) -> sa.Update:
        """The thread's mark after the reply: exactly its last number when nobody reserved
        past this block, else unchanged (never lower than a number handed out)."""
        current = col(Thread.last_event_sequence)
        mark: Any = sa.case(
            (current == self.reserved_until, final_sequence),
            else_=sa.func.greatest(current, final_sequence),
        )
        return (
            sa.update(Thread)
            .where(col(Thread.id) == thread_id)
            .values(last_event_sequence=mark, updated_at=col(Thread.updated_at))
        )


def take_one_statement(thread_id: uuid.UUID) -> sa.Update:
    """One number outside any block (a reply finished by someone else than its worker)."""
    return (
        sa.update(Thread)
        .where(col(Thread.id) == thread_id)
        .values(
            last_event_sequence=col(Thread.last_event_sequence) + 1,
            updated_at=col(Thread.updated_at),
        )
    )
