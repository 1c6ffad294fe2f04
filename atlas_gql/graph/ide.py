"""Offline GraphiQL: Strawberry's GraphiQL page with assets vendored and served locally."""

from __future__ import annotations

import os
from pathlib import Path

from starlette.responses import Response
from starlette.routing import Mount
from starlette.staticfiles import PathLike, StaticFiles
from starlette.types import Scope

from atlas_gql_assets import ASSETS_DIR

__all__ = [
    "GRAPHIQL_HTML_PATH",
    "GRAPHIQL_STATIC_DIR",
    "GRAPHIQL_STATIC_URL",
    "graphiql_static_route",
    "render_graphiql_html",
]

GRAPHIQL_STATIC_DIR: Path = ASSETS_DIR / "graphiql"
"""Directory holding the vendored GraphiQL assets (see ``ASSETS.md`` there)."""

GRAPHIQL_HTML_PATH: Path = GRAPHIQL_STATIC_DIR.parent / "graphiql.html"
"""Strawberry's stock GraphiQL page with unpkg URLs pointing at ``GRAPHIQL_STATIC_URL``."""

GRAPHIQL_STATIC_URL = "/graphql/static"
"""URL prefix the html uses for the assets; must match the mount path."""

_CACHE_CONTROL = "public, max-age=31536000, immutable"
_SUBSCRIPTION_URL_LINE = "const subscriptionUrl = httpUrlToWebSockeUrl(fetchURL);"


def render_graphiql_html(*, subscriptions_enabled: bool = True) -> str:
    """Return the offline GraphiQL page.

    Strawberry (0.341) serves its stock page verbatim, with no template variables, so
    nothing is substituted by default. With ``subscriptions_enabled=False`` the
    fetcher gets no websocket URL.
    """
    html = GRAPHIQL_HTML_PATH.read_text(encoding="utf-8")
    if not subscriptions_enabled:
        if _SUBSCRIPTION_URL_LINE not in html:
            msg = f"{GRAPHIQL_HTML_PATH} no longer contains {_SUBSCRIPTION_URL_LINE!r}"
            raise RuntimeError(msg)
        html = html.replace(_SUBSCRIPTION_URL_LINE, "const subscriptionUrl = undefined;")
    return html


class _ImmutableStaticFiles(StaticFiles):
    """StaticFiles with far-future caching; asset paths are version-pinned."""

    def file_response(
        self,
        full_path: PathLike,
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = _CACHE_CONTROL
        return response


def graphiql_static_route() -> Mount:
    """Mount the vendored assets at ``GRAPHIQL_STATIC_URL``.

    Put it before any route/mount that would otherwise match ``/graphql/...``.
    """
    return Mount(
        GRAPHIQL_STATIC_URL,
        app=_ImmutableStaticFiles(directory=GRAPHIQL_STATIC_DIR),
        name="graphiql-static",
    )
