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


def test_prisma_only_parameters_are_dropped() -> None:
    target = parse_database_url(
        "postgresql://u:p@h:5432/atlas?schema=public&connection_limit=5&pool_timeout=10&sslmode=require"
    )
    assert dict(target.url.query) == {"ssl": "require"}


def test_unencoded_at_sign_in_password_is_refused_with_advice() -> None:
    with pytest.raises(DatabaseUrlError, match="percent-encode"):
        parse_database_url("postgresql://bob:p@ss#w/rd@localhost/atlas")


def test_percent_encoded_password_is_decoded() -> None:
    target = parse_database_url("postgresql://bob:p%40ss%23w%2Frd@localhost/atlas")
    assert target.url.password == "p@ss#w/rd"
    assert target.url.host == "localhost"
