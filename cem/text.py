"""Normalised words: how the leak guard, the general probe and Review read text."""

from __future__ import annotations

import re
import unicodedata

_NON_WORD = re.compile(r"[^\w\s]|_")


def tokens(text: str) -> list[str]:
    """Normalised tokens: NFKC, lowercase, punctuation stripped, split on whitespace."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).split()
