"""Database access: engine and sessions, embedded PostgreSQL, base mixins, the three helpers."""

from atlas_gql.db.utils import check_db_connection, execute_db_operation, execute_transaction

__all__ = ["check_db_connection", "execute_db_operation", "execute_transaction"]
