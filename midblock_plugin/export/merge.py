"""The ``merged`` target: the base with the adapter merged in by PEFT's own ``merge_and_unload``,
cast to the dtype asked for and saved as sharded safetensors with the tokenizer, so any engine
(vLLM, SGLang, TGI, llama.cpp's ``convert_hf_to_gguf.py``, transformers) loads it as a plain model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from midblock_plugin.export.verify import Check, compare, logits


def save_merged(
    peft_model: Any,
    ids: Sequence[Any],
    ref: Sequence[Any],
    out: Path,
    *,
    dtype: str,
    max_shard_size: str,
    tolerance: float,
    device: str,
    tokenizer_sources: Sequence[Any],
    progress: Any = None,
    log: Callable[[str], None] = print,
) -> tuple[list[Check], dict[str, Any]]:
    """Merge, check the merge in float32, save in ``dtype``, reload with transformers and check
    again. Returns the checks (all must pass) and facts for the report."""
    import gc

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = peft_model.merge_and_unload()  # PEFT's own merge
    checks = [
        compare(
            "merged in float32 (PEFT merge_and_unload, in memory)",
            logits(merged, ids, device, progress),
            ref,
            tolerance,
        )
    ]
    log(checks[-1].line())
    merged.to(getattr(torch, dtype))
    merged.save_pretrained(out, max_shard_size=max_shard_size)
    info: dict[str, Any] = {
        "dtype": dtype,
        "max_shard_size": max_shard_size,
        "weight_files": sorted(p.name for p in out.glob("*.safetensors")),
    }
    info["tokenizer"] = None
    for src in tokenizer_sources:
        try:
            AutoTokenizer.from_pretrained(str(src)).save_pretrained(out)
        except (OSError, ValueError, TypeError, KeyError):
            continue
        info["tokenizer"] = str(src)
        break
    if info["tokenizer"] is None:
        log("warning: no tokenizer found in the adapter or the base directory; the merged model has none.")
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).to(device).eval()
    if dtype != "float32":  # the saved weights are the merged ones, rounded once to dtype
        saved = dict(reloaded.named_parameters())
        with torch.no_grad():
            diff = max(float((saved[n] - p.float()).abs().max()) for n, p in merged.named_parameters())
        checks.append(
            Check(
                what=f"saved {dtype} weights reloaded with transformers vs the merged weights in memory",
                max_abs_diff=diff,
                max_abs_logit=0.0,
                tolerance=tolerance,
            )
        )
        log(checks[-1].line().replace("logit difference", "weight difference"))
    del merged
    gc.collect()
    got = logits(reloaded, ids, device, progress)
    if dtype == "float32":
        checks.append(compare("saved model reloaded with transformers", got, ref, tolerance))
        log(checks[-1].line())
    if dtype != "float32":
        rounding = compare(
            f"{dtype} rounding (informational: saved model against base + adapter in float32)", got, ref, tolerance
        )
        info["rounding_max_abs_diff"] = rounding.max_abs_diff
        log(
            f"{dtype} rounding: the saved model differs from base + adapter in float32 by up to "
            f"{rounding.max_abs_diff:.3e} (expected from the dtype; not a failure)"
        )
    return checks, info
