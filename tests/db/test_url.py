from __future__ import annotations

import pytest

from atlas_gql.db.url import DatabaseUrlError, parse_database_url


@pytest.mark.parametrize(
    "raw",
    [
        "postgresql://postgres:postgres@localhost:5432/atlas?schema=public",
        "postgres://postgres:postgres@localhost:5432/atlas",
        "postgresql+asyncpg://postgres:postgres@localhost:5432/atlas",
    ],
)
def test_accepted_spellings_become_asyncpg(raw: str) -> None:
    target = parse_database_url(raw)
    assert target.url.drivername == "postgresql+asyncpg"
    assert target.database == "atlas"
    assert "schema" not in target.url.query
    assert target.connect_args == {}


def test_schema_parameter_sets_search_path() -> None:
    target = parse_database_url("postgresql://u:p@h/atlas?schema=tenant")
    assert target.schema == "tenant"
    assert target.connect_args == {"server_settings": {"search_path": '"tenant",public'}}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("not a url", "malformed"),
        ("mysql://u:p@h/db", "PostgreSQL"),
        ("postgresql://u:p@h", "must name a database"),
    ],
)
def test_malformed_urls_are_refused_clearly(raw: str, message: str) -> None:
    with pytest.raises(DatabaseUrlError, match=message):
        parse_database_url(raw)


def test_password_is_hidden_in_messages() -> None:
    assert "secret" not in parse_database_url("postgresql://u:secret@h/atlas").render()
