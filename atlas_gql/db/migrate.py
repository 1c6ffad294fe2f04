"""Running Alembic from code (the CLI, `serve` and the tests), with the app's DATABASE_URL."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from atlas_gql.db.url import DatabaseTarget

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def alembic_config(target: DatabaseTarget) -> Config:
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    config.attributes["database_target"] = target
    config.attributes["configure_logging"] = False
    return config


def upgrade_to_head(target: DatabaseTarget) -> None:
    """`alembic upgrade head` (blocking: call it from a thread inside an event loop)."""
    command.upgrade(alembic_config(target), "head")


def downgrade_to_base(target: DatabaseTarget) -> None:
    command.downgrade(alembic_config(target), "base")


def check_models_match(target: DatabaseTarget) -> None:
    """`alembic check`: raises when the models and the migrations disagree."""
    command.check(alembic_config(target))
