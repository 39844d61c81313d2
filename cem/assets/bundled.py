"""Assets that ship inside the package: no fetch, no network.

``TINY_TOKENIZER_DIR`` is the tokenizer of ``model.random_init`` models
(``conf/model/tiny_random_llama.yaml``): a 2,048-token byte-level BPE trained once on
English Wikipedia summaries. It is committed; ``python -m cem.assets.make_tokenizer``
rebuilds it.
"""

from pathlib import Path

TINY_TOKENIZER_DIR = Path(__file__).parent / "tiny_tokenizer"
