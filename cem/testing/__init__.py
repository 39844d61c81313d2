"""Fixtures for the tiny end-to-end tier: a bundled tokenizer and a random 2-layer Llama.

``TOKENIZER_DIR`` holds a 2,048-token byte-level BPE trained once on English Wikipedia
summaries (``make_tokenizer.py``); it ships with the package so that tests need no download.
"""

from pathlib import Path

TOKENIZER_DIR = Path(__file__).parent / "tiny_tokenizer"
