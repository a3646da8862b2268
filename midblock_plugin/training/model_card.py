"""The midblock section of a saved adapter's model card (``README.md``).

PEFT's ``save_pretrained`` writes a generic ``README.md`` beside the adapter; :func:`write_model_card`
adds (or replaces, between :data:`BEGIN` and :data:`END`) a short section saying what midblock
trained (window, rank, alpha, rsLoRA) and how to serve it. For an rsLoRA adapter it carries
:data:`RSLORA_SERVING_NOTE`: llama.cpp and SGLang ignore ``use_rslora`` and scale by
``alpha / r``, so the adapter as saved is applied ``sqrt(r)`` times too weakly there, without a
word from either (measured: docs/serving.md, "The rsLoRA trap"); ``midblock export`` folds the
scale into ``lora_alpha`` for them.

>>> section = model_card_section({"window": "1-3", "num_layers": 5, "mode": "lora", "layer_rank": 13,
...                                "baseline_rank": 8, "lora_alpha": 20.4, "use_rslora": True})
>>> "midblock export --target llama.cpp" in section
True
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


#: where midblock's section starts and ends in README.md (a rewrite replaces it, once)
BEGIN = "<!-- midblock:begin -->"
END = "<!-- midblock:end -->"

#: what a user of an rsLoRA adapter must know before serving it (model card, docs/serving.md)
RSLORA_SERVING_NOTE = (
    "rsLoRA adapter: llama.cpp and SGLang ignore `use_rslora` and scale by `lora_alpha / r`, so served as "
    "saved they apply it sqrt(r) times too weakly, without a warning. Serve it through `midblock export "
    "--target llama.cpp` or `midblock export --target sglang` (the rsLoRA scale folded into `lora_alpha`). "
    "PEFT, vLLM, TGI and LoRAX read `use_rslora` and need no change."
)


def _plan_dict(plan: Any) -> dict[str, Any]:
    if hasattr(plan, "to_json_dict"):
        return plan.to_json_dict()
    if isinstance(plan, dict):
        return plan
    raise ValueError(f"plan must be a MidBlockPlan or its to_json_dict() (plan.json), got {type(plan).__name__}.")


def model_card_section(plan: Any) -> str:
    """The midblock section (markdown, between :data:`BEGIN` and :data:`END`) for ``plan``
    (a :class:`~midblock_plugin.plan.MidBlockPlan` or the dict of ``midblock/plan.json``)."""
    p = _plan_dict(plan)
    lines = [BEGIN, "## Mid-Block Efficient Tuning (midblock)", ""]
    window = f"layers {p.get('window')} of {p.get('num_layers')}"
    if p.get("mode", "lora") == "lora":
        lines.append(
            f"LoRA on decoder {window} only, rank {p.get('layer_rank')} (budget-matched to uniform "
            f"LoRA r={p.get('baseline_rank')}), lora_alpha {float(p.get('lora_alpha') or 0):g}"
            f"{', rsLoRA scaling (alpha / sqrt(r))' if p.get('use_rslora') else ''}."
        )
        rank = (p.get("serving") or {}).get("max_lora_rank")
        if rank:
            lines.append(f"vLLM: pass `--max-lora-rank {rank}`.")
        if p.get("use_rslora"):
            lines += ["", f"**Serving: {RSLORA_SERVING_NOTE}**"]
    else:
        lines.append(f"Full-parameter updates of decoder {window}.")
    lines += ["", "See `midblock export --help` for each serving engine's form of the adapter.", END]
    return "\n".join(lines) + "\n"


def write_model_card(adapter_dir: str | os.PathLike, plan: Any) -> Path:
    """Add the midblock section to ``adapter_dir/README.md`` (PEFT's model card; created if
    absent), replacing a section written before. Returns the README path."""
    path = Path(adapter_dir) / "README.md"
    if not Path(adapter_dir).is_dir():
        raise ValueError(f"adapter_dir {str(adapter_dir)!r} is not a directory; call write_model_card after the save.")
    section = model_card_section(plan)
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    if BEGIN in text and END in text.split(BEGIN, 1)[1]:
        head, rest = text.split(BEGIN, 1)
        text = head + section.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + section
    from midblock_plugin.io import write_text_atomic

    write_text_atomic(path, text)
    return path
