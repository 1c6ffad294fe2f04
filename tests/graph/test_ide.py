"""Offline GraphiQL page: every asset is same-origin and matches its SRI hash."""

from __future__ import annotations

import base64
import hashlib
from html.parser import HTMLParser

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from atlas_gql.graph.ide import (
    GRAPHIQL_STATIC_DIR,
    GRAPHIQL_STATIC_URL,
    graphiql_static_route,
    render_graphiql_html,
)


class _AssetParser(HTMLParser):
    """Collect (url, integrity, crossorigin-present) for <script src> and <link href>."""

    def __init__(self) -> None:
        super().__init__()
        self.assets: list[tuple[str, str | None, bool]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        url = attr.get("src") if tag == "script" else attr.get("href") if tag == "link" else None
        if url is not None:
            self.assets.append((url, attr.get("integrity"), "crossorigin" in attr))


def _assets(html: str) -> list[tuple[str, str | None, bool]]:
    parser = _AssetParser()
    parser.feed(html)
    parser.close()
    return parser.assets


HTML = render_graphiql_html()
ASSETS = [a for a in _assets(HTML) if not a[0].startswith("data:")]


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(Starlette(routes=[graphiql_static_route()]))


def test_all_seven_assets_referenced() -> None:
    assert len(ASSETS) == 7
    on_disk = {
        p.relative_to(GRAPHIQL_STATIC_DIR).as_posix()
        for p in GRAPHIQL_STATIC_DIR.rglob("*")
        if p.is_file()
    }
    referenced = {url.removeprefix(GRAPHIQL_STATIC_URL + "/") for url, _, _ in ASSETS}
    assert referenced <= on_disk


def test_no_external_sources() -> None:
    for url, _, _ in _assets(HTML):
        assert not url.startswith(("http://", "https://", "//")), url
    assert "unpkg.com" not in HTML


@pytest.mark.parametrize(("url", "integrity", "crossorigin"), ASSETS, ids=[a[0] for a in ASSETS])
def test_asset_served_with_matching_sri(
    client: TestClient, url: str, integrity: str | None, crossorigin: bool
) -> None:
    assert url.startswith(GRAPHIQL_STATIC_URL + "/")
    assert integrity is not None
    assert integrity.startswith("sha384-")
    assert crossorigin
    response = client.get(url)
    assert response.status_code == 200
    digest = base64.b64encode(hashlib.sha384(response.content).digest()).decode()
    assert f"sha384-{digest}" == integrity
    assert "max-age" in response.headers["cache-control"]


def test_subscriptions_toggle() -> None:
    assert "httpUrlToWebSockeUrl(fetchURL);" in HTML
    disabled = render_graphiql_html(subscriptions_enabled=False)
    assert "const subscriptionUrl = undefined;" in disabled
    assert _assets(disabled) == _assets(HTML)


def test_graphiql_keeps_the_token_in_session_storage_only() -> None:
    """The headers editor (where the bearer token goes) persists in sessionStorage: GraphiQL
    gets a storage of its own, so its default (localStorage) is never used."""
    assert "storage: sessionStore," in HTML
    assert "window.sessionStorage.setItem(key, value)" in HTML
    assert "localStorage" not in HTML
