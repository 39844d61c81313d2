"""CEM: make a language model continue evolving from its mistakes (arXiv 2404.08707)."""

__version__ = "0.1.0"
