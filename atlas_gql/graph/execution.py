"""How an operation's fields run against its one database session.

graphql-core resolves sibling fields concurrently, and when one of them fails through a
non-null field it cancels the others (`gather_with_cancel`). A sibling cancelled in the middle
of a statement leaves the session's connection unusable: the whole response was lost
("cannot call Transaction.rollback(): the underlying connection is closed", issue 10 part 7).
`AtlasExecutor` changes two things:

- **No field is abandoned.** Every field that resolves asynchronously runs as a task the
  operation tracks, behind `asyncio.shield`: when graphql-core gives up on it, it still
  finishes its statement. The operation boundary (`graph/errors.py`) waits for every such task
  before it commits, rolls back or closes the session.
- **Each root mutation field is a unit.** Mutation fields run one after the other; each runs
  inside a SAVEPOINT (or, first in its transaction, inside the transaction itself). A field
  that ends null with an error is rolled back, with its after-commit hooks: a failed mutation
  leaves nothing written, the ones before it keep their effect, and the boundary commits once.
"""

from __future__ import annotations

import asyncio
from typing import Any

from graphql import GraphQLObjectType
from graphql.pyutils import Path
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from atlas_gql.db.session import SerializedAsyncSession
from atlas_gql.graph.context import Context, OperationState


class AtlasExecutor(StrawberryGraphQLCoreExecutionContext):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # graphql-core builds the executor only for a request it will run: what fails before
        # (parsing, validation, limits, variables) has failed by now (graph/streams.py).
        super().__init__(*args, **kwargs)
        if isinstance(self.context_value, Context):
            self.context_value.mark_execution_started()

    def _state(self) -> OperationState | None:
        context = self.context_value
        return context.state if isinstance(context, Context) else None

    def execute_field(
        self,
        parent_type: GraphQLObjectType,
        source: Any,
        field_details_list: Any,
        path: Path,
        position_context: Any = None,
    ) -> Any:
        state = self._state()
        if state is None:
            return super().execute_field(
                parent_type, source, field_details_list, path, position_context
            )
        if parent_type is self.schema.mutation_type:
            return self._mutation_unit(
                state, parent_type, source, field_details_list, path, position_context
            )
        result = super().execute_field(
            parent_type, source, field_details_list, path, position_context
        )
        if not self.is_awaitable(result):
            return result
        task = asyncio.ensure_future(result)
        state.track(task)
        return asyncio.shield(task)

    async def _mutation_unit(
        self,
        state: OperationState,
        parent_type: GraphQLObjectType,
        source: Any,
        field_details_list: Any,
        path: Path,
        position_context: Any,
    ) -> Any:
        db = state.db
        # A savepoint when earlier work holds a transaction; otherwise the field's own work
        # (if any) is the transaction, and the session is opened only if the field needs it.
        savepoint = await db.begin_nested() if db is not None and db.in_transaction() else None
        hooks_mark = db.hooks_mark if db is not None else 0
        try:
            result = super().execute_field(
                parent_type, source, field_details_list, path, position_context
            )
            if self.is_awaitable(result):
                result = await result
        except BaseException:
            await state.settle_fields()
            await _undo(state.db, savepoint, hooks_mark)
            raise
        await state.settle_fields()
        if self.collected_errors.has_nulled_position(path):
            await _undo(state.db, savepoint, hooks_mark)
        elif savepoint is not None:
            await savepoint.commit()
        return result


async def _undo(db: SerializedAsyncSession | None, savepoint: Any, hooks_mark: int) -> None:
    """Roll back what a failed mutation field wrote (and forget its after-commit hooks)."""
    if db is None:
        return
    if savepoint is not None:
        await savepoint.rollback()
        db.forget_hooks_after(hooks_mark)
    elif db.in_transaction():
        await db.rollback()
