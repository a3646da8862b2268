"""``midblock export``: make a mid-block LoRA adapter loadable by a serving engine, and prove it.

A mid-block adapter is a plain PEFT LoRA adapter whose ``adapter_config.json`` names the
window in ``layers_to_transform``. Serving engines do not read that key; each decides by the
tensor names it finds, and they disagree. One module per concern:

* :mod:`.source`   - read and check the adapter and its base model (before any weight is loaded);
* :mod:`.targets`  - what each engine needs, per target (padding, rsLoRA folding, vLLM rank advice,
  what llama.cpp's converter reads), with the engines' source files cited;
* :mod:`.merge`    - the ``merged`` target (PEFT's own ``merge_and_unload``, sharded safetensors);
* :mod:`.verify`   - logits of base + export against base + the original adapter;
* :mod:`.pipeline` - :func:`~midblock_plugin.export.pipeline.export_adapter`, which runs one export
  and writes ``midblock-export.json`` beside it.

This ``__init__`` holds constants only, so ``midblock --help`` stays instant (no torch import).
"""

from __future__ import annotations


#: ``--target`` values of ``midblock export``.
TARGETS = ("vllm", "sglang", "tgi", "lorax", "llama.cpp", "merged")
#: ``--dtype`` values of the ``merged`` target.
DTYPES = ("float32", "bfloat16", "float16")
#: The report every export writes beside its files.
REPORT_JSON = "midblock-export.json"
#: Default tolerance of the self-check: max |logit difference| / max(1, max |logit|).
DEFAULT_TOLERANCE = 1e-5
