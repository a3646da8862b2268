"""One export, end to end: :func:`export_adapter`.

Every input is checked before any weight is loaded (the adapter directory, its base model, the
target's limits, the output directory); then the export is written, checked against the
original adapter on a few prompts, and ``midblock-export.json`` records what was done, the
check and the command that serves the result.

>>> report = export_adapter("out/adapter", "tgi", "out/tgi")   # doctest: +SKIP
>>> report["passed"], report["checks"][0]["max_abs_diff"]        # doctest: +SKIP
(True, 0.0)
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

from midblock_plugin.checks import check_device, check_output_dir
from midblock_plugin.export import DEFAULT_TOLERANCE, DTYPES, REPORT_JSON, TARGETS
from midblock_plugin.export.source import AdapterSource, read_source
from midblock_plugin.export.targets import (
    ENGINES,
    check_llamacpp_readable,
    check_servable,
    fold_rslora,
    pad_every_layer,
    serve_command,
    unwindowed_config,
    vllm_advice,
)
from midblock_plugin.export.verify import DEFAULT_PROMPTS, Check, compare, logits, prompt_ids
from midblock_plugin.io import write_json


#: Tokenizer and chat-template files copied beside an exported adapter (engines may read them).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json", "added_tokens.json")


def check_request(adapter: Any, target: Any, output: Any, *, base: str | None = None, dtype: str | None = None,
                  tolerance: float = DEFAULT_TOLERANCE, device: str = "cpu", overwrite: bool = False,
                  max_shard_size: str = "5GB") -> AdapterSource:
    """Every check that needs no weights; returns the adapter source."""
    if target not in TARGETS:
        raise ValueError(f"--target {target!r} is not a target; choose one of {', '.join(TARGETS)}.")
    if dtype is not None and target != "merged":
        raise ValueError(f"--dtype applies to --target merged only (an adapter keeps its own dtype); drop --dtype "
                         f"{dtype} or use --target merged.")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r} is not allowed; choose one of {', '.join(DTYPES)}.")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not math.isfinite(tolerance) \
            or tolerance <= 0:
        raise ValueError(f"--tolerance {tolerance!r} must be a positive number, e.g. 1e-5.")
    if not isinstance(max_shard_size, str) or not max_shard_size.strip():
        raise ValueError(f"--max-shard-size {max_shard_size!r}: give a size such as 5GB or 500MB.")
    check_device(device)
    source = read_source(adapter, base)
    check_servable(source, target)
    out = Path(os.fspath(output)).expanduser()
    if out.resolve() == source.path.resolve():
        raise ValueError(f"--output {os.fspath(output)!r} is the adapter directory itself; give a new directory.")
    check_output_dir(output, "--output")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"--output {os.fspath(output)!r} is not empty; give a new directory or add --overwrite.")
    return source


def export_adapter(adapter: str | os.PathLike, target: str, output: str | os.PathLike, *, base: str | None = None,
                   dtype: str | None = None, max_shard_size: str = "5GB", tolerance: float = DEFAULT_TOLERANCE,
                   device: str = "cpu", overwrite: bool = False, prompts: Sequence[str] = DEFAULT_PROMPTS,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Export ``adapter`` for ``target`` into ``output`` and check it; returns the report (also
    written to ``output/midblock-export.json``). ``report["passed"]`` is False if the export's
    logits disagree with the original adapter's."""
    source = check_request(adapter, target, output, base=base, dtype=dtype, tolerance=tolerance, device=device,
                           overwrite=overwrite, max_shard_size=max_shard_size)
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(os.fspath(output)).expanduser()
    if out.is_dir() and overwrite:
        for child in out.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "target": target, "engine": ENGINES[target], "adapter": str(source.path), "base": source.base,
        "output": str(out), "adapter_rank": source.rank, "adapter_alpha": source.alpha,
        "use_rslora": source.use_rslora, "layers_to_transform": source.config.get("layers_to_transform"),
    }
    if target == "merged":
        checks = _merged(source, out, report, dtype or "float32", max_shard_size, tolerance, device, prompts, log)
    else:
        checks = _adapter_target(source, target, out, report, tolerance, device, prompts, log)
    report["checks"] = [c.to_dict() for c in checks]
    report["passed"] = all(c.passed for c in checks)
    report["command"] = serve_command(target, str(out), source.base, report.get("vllm"))
    report["files"] = sorted(p.name for p in out.iterdir()) + [REPORT_JSON]
    write_json(out / REPORT_JSON, report)
    return report


# --------------------------------------------------------------------------- the two kinds of export


def _progress(total: int, target: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"midblock export --target {target}: logits", unit="prompt", leave=False)


def _load_base(source: AdapterSource, device: str):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(source.base, dtype=torch.float32).to(device).eval()


def _adapter_target(source: AdapterSource, target: str, out: Path, report: dict[str, Any], tolerance: float,
                    device: str, prompts: Sequence[str], log: Callable[[str], None]) -> list[Check]:
    from peft import PeftModel
    from safetensors.torch import save_file

    tensors = source.load_tensors()
    config = dict(source.config)
    if target in ("tgi", "lorax"):
        tensors, added = pad_every_layer(tensors, source)
        config = unwindowed_config(config)
        report["padded_layer_modules"] = added
        log(f"{target}: added zero LoRA matrices for {added} (layer, module) pairs outside the window, so "
            f"{ENGINES[target]} keeps every module type; layers_to_transform removed from the config.")
    elif target in ("sglang", "llama.cpp"):
        report["rslora_folded"] = bool(config.get("use_rslora"))
        config = fold_rslora(config)
        if report["rslora_folded"]:
            log(f"{target}: rsLoRA folded into alpha: lora_alpha {source.alpha:g} -> {config['lora_alpha']:.6g} "
                f"(alpha * sqrt(r), r={source.rank}), use_rslora false.")
        if target == "llama.cpp":
            from midblock_plugin.architecture import meta_model

            names = {n for n, _ in meta_model(source.base_config).named_parameters()}
            report["llama_cpp_pairs"] = check_llamacpp_readable(tensors, config, names)
            log(f"llama.cpp: {report['llama_cpp_pairs']} lora_A/lora_B pairs, each naming a base weight, and a numeric "
                "lora_alpha: what convert_lora_to_gguf.py reads.")
    elif target == "vllm":
        report["vllm"] = vllm_advice(source, tensors)
        log(f"vllm: pass --max-lora-rank {report['vllm']['max_lora_rank']}. {report['vllm']['note']}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    write_json(out / "adapter_config.json", config)
    for name in TOKENIZER_FILES:
        if (source.path / name).is_file():
            shutil.copy2(source.path / name, out / name)

    model = _load_base(source, device)
    ids, how = prompt_ids([source.path, source.base], int(model.config.get_text_config().vocab_size), prompts)
    report["prompts"] = how
    bar = _progress(3 * len(ids), target)
    try:
        base_logits = logits(model, ids, device, bar)
        peft_model = PeftModel.from_pretrained(model, str(source.path), adapter_name="original").eval()
        ref = logits(peft_model, ids, device, bar)
        peft_model.load_adapter(str(out), adapter_name="export")
        peft_model.set_adapter("export")
        peft_model.eval()
        got = logits(peft_model, ids, device, bar)
    finally:
        bar.close()
    check = compare(f"{target} export through PEFT vs the original adapter ({how})", got, ref, tolerance, base_logits)
    log(check.line())
    _warn_inert(check, log)
    return [check]


def _merged(source: AdapterSource, out: Path, report: dict[str, Any], dtype: str, max_shard_size: str,
            tolerance: float, device: str, prompts: Sequence[str], log: Callable[[str], None]) -> list[Check]:
    from peft import PeftModel

    from midblock_plugin.export.merge import save_merged

    model = _load_base(source, device)
    ids, how = prompt_ids([source.path, source.base], int(model.config.get_text_config().vocab_size), prompts)
    report["prompts"] = how
    bar = _progress(4 * len(ids), "merged")
    try:
        base_logits = logits(model, ids, device, bar)
        peft_model = PeftModel.from_pretrained(model, str(source.path)).eval()
        ref = logits(peft_model, ids, device, bar)
        effect = compare("adapter effect", ref, base_logits, tolerance)
        checks, info = save_merged(peft_model, ids, ref, out, dtype=dtype, max_shard_size=max_shard_size,
                                   tolerance=tolerance, device=device, tokenizer_sources=[source.path, source.base],
                                   progress=bar, log=_above(bar, log))
    finally:
        bar.close()
    for c in checks:
        c.adapter_effect = effect.max_abs_diff
    report["merged"] = info
    _warn_inert(checks[0], log)
    return checks


def _above(bar: Any, log: Callable[[str], None]) -> Callable[[str], None]:
    """``log`` that writes above the progress bar instead of through it."""
    def write(line: str) -> None:
        with bar.external_write_mode():
            log(line)
    return write


def _warn_inert(check: Check, log: Callable[[str], None]) -> None:
    if check.adapter_effect is not None and check.adapter_effect == 0.0:
        log("warning: the original adapter does not change the logits at all (lora_B is zero: an untrained adapter?), "
            "so this check cannot tell a correct export from a broken one.")
