"""Offline assets: pinned PyPI wheels whose data files (never their code) the project uses."""
