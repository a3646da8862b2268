"""Tiny offline models, tokenizers and data for tests, examples and benchmarks.

Nothing here downloads anything: tokenizers are trained in a second on built-in text
with the ``tokenizers`` library, models are built from configs with random weights.

>>> from midblock_plugin.testing import tiny_tokenizer, tiny_model
>>> tok = tiny_tokenizer()
>>> model = tiny_model("llama", num_layers=5)
>>> model.config.num_hidden_layers
5
"""

from midblock_plugin.testing.tiny import (  # noqa: F401
    ARCHITECTURES,
    GSM8K_DIR,
    gsm8k_rows,
    save_tiny,
    tiny_config,
    tiny_model,
    tiny_tokenizer,
)
