"""``midblock export``: make a mid-block LoRA adapter loadable by a serving engine, and prove it.

A mid-block adapter is a plain PEFT LoRA adapter whose ``adapter_config.json`` names the
window in ``layers_to_transform``. Serving engines do not read that key; each decides by the
tensor names it finds, and they disagree. One module per concern:

* :mod:`.targets`  - :data:`~midblock_plugin.export.targets.TARGETS`, the table of targets (the only
  place a target's name is written), and what each engine needs (padding, rsLoRA folding, vLLM rank
  advice, what llama.cpp's converter reads), with the engines' source files cited;
* :mod:`.options`  - :class:`~midblock_plugin.export.options.ExportOptions`, the options of one export
  (``midblock export``'s flags are generated from its fields);
* :mod:`.source`   - read and check the adapter and its base model (before any weight is loaded);
* :mod:`.merge`    - merging targets (PEFT's own ``merge_and_unload``, sharded safetensors);
* :mod:`.verify`   - logits of base + export against base + the original adapter;
* :mod:`.pipeline` - :func:`~midblock_plugin.export.pipeline.export_adapter`, which runs one export
  and writes ``midblock-export.json`` beside it.

This ``__init__`` holds constants only; the table and the options import no torch either, so
``midblock --help`` stays instant.
"""

from __future__ import annotations

from typing import Literal, get_args


#: dtype of a merged model (``--dtype`` of a merging target); the first is the default.
MergedDtype = Literal["float32", "bfloat16", "float16"]
#: Its values.
DTYPES = get_args(MergedDtype)
#: The report every export writes beside its files.
REPORT_JSON = "midblock-export.json"
#: Default tolerance of the self-check: max |logit difference| / max(1, max |logit|).
DEFAULT_TOLERANCE = 1e-5
