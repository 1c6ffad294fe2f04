"""ATLAS's vendored web assets (the offline GraphiQL page and the files it loads), kept out of
the `atlas_gql` code package: they are third-party data, not code we maintain. Installed with
it (pyproject's `module-name`); `atlas_gql/graph/ide.py` serves them."""

from pathlib import Path

ASSETS_DIR: Path = Path(__file__).resolve().parent
"""Where the assets are on disk (the installed or checked-out package directory)."""
