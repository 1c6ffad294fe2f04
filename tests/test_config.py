"""Settings: environment then .env; production refuses development secrets, naming them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from atlas_gql.auth.ratelimit import LoginLimits
from atlas_gql.config import (
    DEVELOPMENT_CORS_ORIGINS,
    DEVELOPMENT_JWT_SECRET,
    DEVELOPMENT_SEED_PASSWORD,
    Settings,
    settings_group,
)
from atlas_gql.graph.limits.extension import DocumentLimits
from atlas_gql.graph.limits.structure import STRUCTURE_CAPS
from atlas_gql.logs.audit import ErrorLogPolicy

STRONG_SECRET = "p" * 48


def production(**values: Any) -> Settings:
    return Settings(_env_file=None, atlas_env="production", **values)


def test_production_refuses_development_jwt_secret() -> None:
    with pytest.raises(ValidationError, match="ATLAS_JWT_SECRET"):
        production(atlas_jwt_secret=DEVELOPMENT_JWT_SECRET, atlas_seed_password="a-real-one-123")


def test_production_refuses_empty_jwt_secret() -> None:
    with pytest.raises(ValidationError, match="ATLAS_JWT_SECRET"):
        production(atlas_jwt_secret="", atlas_seed_password="a-real-one-123")


def test_production_refuses_development_seed_password() -> None:
    with pytest.raises(ValidationError, match="ATLAS_SEED_PASSWORD"):
        production(atlas_jwt_secret=STRONG_SECRET, atlas_seed_password=DEVELOPMENT_SEED_PASSWORD)


def test_production_accepts_real_secrets_and_disables_introspection() -> None:
    settings = production(atlas_jwt_secret=STRONG_SECRET, atlas_seed_password="a-real-one-123")
    assert settings.is_production
    assert settings.introspection_enabled is False


def test_development_defaults_enable_introspection() -> None:
    settings = Settings(_env_file=None)
    assert settings.introspection_enabled is True
    assert settings.atlas_access_token_ttl <= 3600


def test_settings_whose_default_follows_the_environment_keep_a_value_set() -> None:
    development = Settings(_env_file=None)
    real: dict[str, Any] = {
        "atlas_jwt_secret": STRONG_SECRET,
        "atlas_seed_password": "a-real-one-123",
    }
    assert (development.registration_mode, development.graphiql_enabled) == ("open", True)
    assert (production(**real).registration_mode, production(**real).graphiql_enabled) == (
        "approval",
        False,
    )
    # A value set wins over the environment's default, false and "closed" included.
    assert Settings(_env_file=None, atlas_introspection=False).introspection_enabled is False
    assert production(**real, atlas_introspection=True).introspection_enabled is True
    assert Settings(_env_file=None, atlas_graphiql=False).graphiql_enabled is False
    assert production(**real, atlas_registration="closed").registration_mode == "closed"
    # Tracing follows the collector's endpoint unless set.
    endpoint: dict[str, Any] = {"otel_exporter_otlp_endpoint": "http://127.0.0.1:4318"}
    assert Settings(_env_file=None).tracing_enabled is False
    assert Settings(_env_file=None, **endpoint).tracing_enabled is True
    assert Settings(_env_file=None, **endpoint, atlas_tracing=False).tracing_enabled is False


# Each bound of a count(), seconds() or usd() setting: a value at it, and one just past it.
@pytest.mark.parametrize(
    ("setting", "accepted", "refused"),
    [
        ("atlas_api_keys_per_user", 1, 0),
        ("atlas_api_keys_per_user", 1000, 1001),
        ("atlas_api_key_last_used_interval", 3600, 3601),
        ("atlas_subscriber_backlog", 16, 15),
        ("atlas_error_log_window_seconds", 86_400, 86_401),
        ("atlas_subscription_recheck", 0, -1),
        ("atlas_subscriber_merge_after", 0, -0.001),
        ("atlas_web_search_call_usd", 0, -0.01),
    ],
)
def test_bounded_settings_take_their_bounds_and_refuse_beyond(
    setting: str, accepted: float, refused: float
) -> None:
    at_bound: dict[str, Any] = {setting: accepted}
    assert getattr(Settings(_env_file=None, **at_bound), setting) == accepted
    beyond: dict[str, Any] = {setting: refused}
    with pytest.raises(ValidationError, match=setting):
        Settings(_env_file=None, **beyond)


def test_environment_wins_over_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("ATLAS_DEFAULT_MODEL=from-dotenv\nATLAS_CORS_ORIGINS=http://a,http://b\n")
    monkeypatch.setenv("ATLAS_DEFAULT_MODEL", "from-environment")
    settings = Settings(_env_file=env_file)
    assert settings.atlas_default_model == "from-environment"
    assert settings.atlas_cors_origins == ["http://a", "http://b"]


def test_committed_dotenv_holds_only_development_defaults() -> None:
    dotenv = (Path(__file__).resolve().parents[1] / ".env").read_text()
    values = dict(
        line.split("=", 1) for line in dotenv.splitlines() if line and not line.startswith("#")
    )
    assert values["ATLAS_ENV"] == "development"
    assert values["ATLAS_JWT_SECRET"] == DEVELOPMENT_JWT_SECRET
    assert values["ATLAS_SEED_PASSWORD"] == DEVELOPMENT_SEED_PASSWORD
    assert "OPENAI_API_KEY" not in values


def test_development_cors_origins_include_vite_and_3000() -> None:
    settings = Settings(_env_file=None)
    for origin in (
        "http://localhost:3000",
        "http://127.0.0.1:3000",
        "http://localhost:5173",
        "http://127.0.0.1:5173",
    ):
        assert origin in settings.atlas_cors_origins


def test_committed_dotenv_allows_the_vite_dev_server() -> None:
    dotenv = (Path(__file__).resolve().parents[1] / ".env").read_text()
    line = next(line for line in dotenv.splitlines() if line.startswith("ATLAS_CORS_ORIGINS="))
    origins = line.split("=", 1)[1].split(",")
    assert set(DEVELOPMENT_CORS_ORIGINS) <= set(origins)


def test_production_allows_no_origin_unless_set() -> None:
    settings = production(atlas_jwt_secret=STRONG_SECRET, atlas_seed_password="a-real-one-123")
    assert settings.atlas_cors_origins == []
    chosen = production(
        atlas_jwt_secret=STRONG_SECRET,
        atlas_seed_password="a-real-one-123",
        atlas_cors_origins="https://app.example.com",
    )
    assert chosen.atlas_cors_origins == ["https://app.example.com"]


def test_an_empty_cors_setting_allows_no_origin_in_development() -> None:
    settings = Settings(_env_file=None, atlas_cors_origins="")
    assert settings.atlas_cors_origins == []


def test_settings_groups_read_each_field_from_its_setting() -> None:
    """`settings_group`: a field reads `<prefix><field>`, or the setting or property it names."""
    settings = Settings(
        _env_file=None,
        atlas_login_max_failures=3,
        atlas_login_failure_window=123,
        atlas_login_account_backoff_max=9,
        atlas_max_cost=777,
        atlas_document_cache_bytes=5,
        atlas_introspection=False,
        atlas_error_log_window_seconds=61,
        atlas_error_log_rows_per_window=7,
    )
    login = LoginLimits.from_settings(settings)
    assert (login.max_failures, login.window_seconds, login.account_backoff_max) == (3, 123, 9)
    document = DocumentLimits.from_settings(settings)
    assert (document.max_cost, document.cache_bytes, document.introspection) == (777, 5, False)
    assert document.caps == STRUCTURE_CAPS
    assert ErrorLogPolicy.from_settings(settings) == ErrorLogPolicy(
        window_seconds=61, rows_per_window=7
    )


def test_a_settings_group_field_without_a_setting_is_an_error() -> None:
    with pytest.raises(AttributeError, match="atlas_login_window_seconds"):
        settings_group(LoginLimits, Settings(_env_file=None), prefix="atlas_login_")
