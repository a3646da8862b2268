"""Run one or two models over a prompt set and compute every per-layer metric.

Two-model mode compares BASE with TUNED (a full model directory, or a PEFT adapter
directory applied to BASE: then one model is loaded and the base pass runs with the
adapter disabled). Single-model mode measures BASE alone, plus weight statistics.
The per-layer statistics are streamed by :class:`~midblock_plugin.analysis.collect.LayerCollector`;
each layer's own change by :class:`~midblock_plugin.analysis.collect.OwnChange`; the weight
statistics come from :mod:`midblock_plugin.analysis.weights`; the optional pre-training
gradient probe from :mod:`midblock_plugin.analysis.probe`.

The recommendation is made only from a TUNED model that was trained on *every* layer (a
uniform ``11111`` adapter or a full fine-tune): an adapter that trains only some layers
(``layers_to_transform`` / its weights) gets its metrics but no recommendation
(``recommendation.refused`` says why), since the layers it never trained cannot show change.

>>> from midblock_plugin.analysis import AnalysisConfig, run_analysis  # doctest: +SKIP
>>> result = run_analysis(AnalysisConfig(base="path/to/base", tuned="path/to/adapter"))  # doctest: +SKIP
>>> result.recommendation.layers  # doctest: +SKIP
[3, 4, 5, 6, 7, 8, 9, 10, 11]
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

from midblock_plugin import architecture
from midblock_plugin.analysis.collect import (
    LayerCollector,
    OwnChange,
    Readout,
    backbone_and_readout,
    padded_batches,
    tokenize_prompts,
)
from midblock_plugin.analysis.config import (  # noqa: F401  (re-exported: the old import paths keep working)
    DTYPES,
    PAIR_SIGNALS,
    STATS_DTYPES,
    AnalysisConfig,
    _check_pair_configs,
    adapter_trained_layers,
    check_model_path,
    check_pair,
    detect_tuned_kind,
    detect_variant,
)
from midblock_plugin.analysis.prompts import load_prompt_rows, render_prompts
from midblock_plugin.analysis.recommend import (
    Recommendation,
    compare_windows,
    default_recommendation,
    recommend_window,
    refused_recommendation,
)
from midblock_plugin.analysis.weights import weight_change_adapter, weight_change_models, weight_snr
from midblock_plugin.io import json_safe


#: Per-layer columns and their meaning, by mode. ``{m}`` columns appear once per model
#: (suffix ``_base`` / ``_tuned`` in two-model mode, no suffix in single-model mode).
PAIR_COLUMNS = {
    "own_change": "the layer's own change: ||f_tuned(h) - f_base(h)|| / ||f_base(h)|| over tokens, h = the base "
    "model's input to the layer, f(h) = output - h (the layer's residual update)",
    "cka": "linear CKA of base vs tuned mean-pooled states (inherited: includes change passed up from below)",
    "cosine": "mean cosine similarity of paired base/tuned pooled vectors",
    "mean_shift": "||mean(tuned) - mean(base)||_2 of pooled states",
    "weight_change_attn": "||W_tuned - W_base||_F / ||W_base||_F over the attention weights of the layer",
    "weight_change_mlp": "the same over the MLP weights",
    "weight_change": "the same over all weights of the layer",
    "early_exit_cross": "fraction of tokens where base and tuned early-exit top-1 agree at this layer",
}
MODEL_COLUMNS = {
    "effective_rank": "exp(entropy of normalised s^2 of the pooled N x D matrix) / min(N, D)",
    "dataset_entropy": "matrix entropy of the Gram of L2-normalised pooled rows / log(min(N, D))",
    "prompt_entropy": "per-sequence matrix entropy of normalised token states / log(min(T, D)), averaged",
    "curvature": "mean angle between consecutive token-difference vectors / pi, averaged over sequences",
    "early_exit": "fraction of tokens whose top-1 via final norm + LM head at this layer equals the model's final top-1",
}
SINGLE_COLUMNS = {
    "adjacent_cka": "linear CKA between the pooled input and output of the layer (layer-to-layer similarity)",
    "snr_attn": "Spectrum-style spectral signal-to-noise ratio, mean over the attention matrices",
    "snr_mlp": "the same over the MLP matrices",
}


# --------------------------------------------------------------------------- config


@dataclass
class AnalysisResult:
    """Everything ``midblock analyze`` measured; :meth:`to_dict` is the JSON document."""

    mode: str
    base: str
    tuned: Optional[str]
    tuned_kind: Optional[str]
    num_layers: int
    hidden_size: int
    layers_path: str
    model_type: Optional[str]
    prompts: dict
    settings: dict
    columns: dict
    rows: list[dict]
    recommendation: Recommendation
    runtime: dict
    tuned_variant: Optional[str] = None
    tuned_layers: Optional[list] = None
    probe: Optional[dict] = None

    def column(self, name: str) -> list[Optional[float]]:
        """The per-layer values of one column."""
        return [row.get(name) for row in self.rows]

    def to_dict(self) -> dict:
        """The analysis JSON document (schema ``midblock.analysis/2``)."""
        from midblock_plugin import __version__

        return {
            "schema": "midblock.analysis/2",
            "midblock_version": __version__,
            "mode": self.mode,
            "base": self.base,
            "tuned": self.tuned,
            "tuned_kind": self.tuned_kind,
            "tuned_variant": self.tuned_variant,
            "tuned_layers": self.tuned_layers,
            "model": {
                "num_layers": self.num_layers,
                "hidden_size": self.hidden_size,
                "layers_path": self.layers_path,
                "model_type": self.model_type,
            },
            "prompts": self.prompts,
            "settings": self.settings,
            "columns": self.columns,
            "layers": self.rows,
            "recommendation": self.recommendation.to_dict(),
            "recommended_layers": self.recommendation.layers,
            "probe": self.probe,
            "runtime": self.runtime,
        }


# --------------------------------------------------------------------------- driver


def _resolve_device_dtype(config: AnalysisConfig) -> tuple[Any, Any]:
    import torch

    if config.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(config.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device={config.device!r}: CUDA is not available here; use --device cpu or auto.")
    if config.dtype == "auto":
        dtype = "auto" if device.type == "cuda" else torch.float32
    else:
        dtype = getattr(torch, config.dtype)
    return device, dtype


def _peak_memory(device: Any) -> dict:
    import resource

    import torch

    out = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if device.type == "cuda":
        out["peak_cuda_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return out


def result_columns(mode: str, *, weight_stats: bool = True, early_exit: bool = True) -> dict[str, str]:
    """The per-layer columns (name -> description) of a ``"pair"`` or ``"single"`` analysis, in order."""
    columns: dict[str, str] = {
        "layer": "decoder layer index (0 = bottom)",
        "relative_depth": "(layer + 0.5) / L, the layer's centre in relative depth",
    }
    if mode == "pair":
        columns.update({k: v for k, v in PAIR_COLUMNS.items() if weight_stats or not k.startswith("weight_change")})
        for k, v in MODEL_COLUMNS.items():
            columns[f"{k}_base"] = f"{v} (base)"
            columns[f"{k}_tuned"] = f"{v} (tuned)"
    else:
        columns["adjacent_cka"] = SINGLE_COLUMNS["adjacent_cka"]
        columns.update(MODEL_COLUMNS)
        if weight_stats:
            columns["snr_attn"] = SINGLE_COLUMNS["snr_attn"]
            columns["snr_mlp"] = SINGLE_COLUMNS["snr_mlp"]
    if not early_exit:
        columns = {k: v for k, v in columns.items() if not k.startswith("early_exit")}
    return columns


def run_analysis(config: AnalysisConfig) -> AnalysisResult:
    """Load the model(s), stream the prompts through them and compute every metric."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    rows_in = load_prompt_rows(config.prompts, config.num_prompts, config.data_dir, config.split)
    if len(rows_in) < 2:
        raise ValueError(f"--prompts {config.prompts!r} gave {len(rows_in)} prompt(s); the metrics need at least 2.")
    if config.tuned_kind == "model":
        _check_pair_configs(config)
    device, dtype = _resolve_device_dtype(config)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    tokenizer = AutoTokenizer.from_pretrained(config.tokenizer or config.base)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token; pass --tokenizer DIR with one.")
    texts = render_prompts(rows_in, tokenizer)
    ids = tokenize_prompts(tokenizer, texts, config.max_length)
    if len(ids) < 2:
        raise ValueError(f"only {len(ids)} prompt(s) are non-empty after tokenization; the metrics need at least 2.")

    def load(path: str):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        return model.to(device).eval()

    base = load(config.base)
    tuned = None
    if config.tuned_kind == "adapter":
        from peft import PeftModel

        base = PeftModel.from_pretrained(base, config.tuned).to(device).eval()
    elif config.tuned_kind == "model":
        tuned = load(config.tuned)

    inner = architecture.unwrap(base)
    layers_path, base_layers = architecture.find_decoder_layers(base)
    num_layers = len(base_layers)
    cfg_layers = architecture.num_layers_from_config(inner.config)
    if cfg_layers != num_layers:
        raise ValueError(f"BASE config says {cfg_layers} layers but {layers_path} holds {num_layers}.")
    backbone_b, norm_b, head_b, _ = backbone_and_readout(base)
    hidden = int(getattr(inner.config, "hidden_size", 0) or inner.get_input_embeddings().weight.shape[1])

    readouts: dict[str, Optional[Readout]] = {}
    early_exit = config.early_exit and norm_b is not None and head_b is not None
    if config.early_exit and not early_exit:
        print(
            "midblock analyze: warning: no final norm / LM head found; early-exit agreement is skipped.",
            file=sys.stderr,
        )
    if early_exit:
        readouts["base"] = Readout(norm_b, head_b)
    stats_dtype = getattr(torch, config.stats_dtype)
    collector = LayerCollector(
        num_layers, hidden, pair=config.mode == "pair", stats_dtype=stats_dtype, device=device, readouts=readouts
    )
    collector.attach(base_layers)
    own = OwnChange(num_layers) if config.mode == "pair" else None
    if own is not None:
        own.attach(base_layers)
    backbone_t = None
    tuned_layers = base_layers  # an adapter: the same modules, with the adapter enabled
    if tuned is not None:
        _, tuned_layers = architecture.find_decoder_layers(tuned)
        backbone_t, norm_t, head_t, _ = backbone_and_readout(tuned)
        collector.attach(tuned_layers)
        if early_exit:
            readouts["tuned"] = Readout(norm_t, head_t)
    elif config.tuned_kind == "adapter" and early_exit:
        readouts["tuned"] = readouts["base"]

    num_batches = math.ceil(len(ids) / config.batch_size)
    tokens = 0
    try:
        with torch.inference_mode():
            for input_ids, mask in tqdm(
                padded_batches(ids, config.batch_size, pad_id),
                total=num_batches,
                desc="midblock analyze",
                unit="batch",
                disable=not config.progress,
                file=sys.stderr,
            ):
                input_ids, mask = input_ids.to(device), mask.to(device)
                tokens += int(mask.sum())
                collector.begin_batch(mask)
                kw = dict(input_ids=input_ids, attention_mask=mask, use_cache=False)
                capture = own.capture() if own is not None else contextlib.nullcontext()
                if config.tuned_kind == "adapter":
                    with base.disable_adapter(), collector.pass_of("base"), capture:
                        backbone_b(**kw)
                    with collector.pass_of("tuned"):
                        backbone_b(**kw)
                else:
                    with collector.pass_of("base"), capture:
                        backbone_b(**kw)
                    if tuned is not None:
                        with collector.pass_of("tuned"):
                            backbone_t(**kw)
                if own is not None:
                    own.measure(tuned_layers, mask)  # adapter enabled again here
                collector.end_batch()
    finally:
        collector.detach()
        if own is not None:
            own.detach()
    collector_rows = collector.rows()
    if own is not None:
        for row, value in zip(collector_rows, own.values()):
            row["own_change"] = value

    probe = None
    if config.probe:
        from midblock_plugin.analysis.probe import gradient_probe

        probe_ctx = base.disable_adapter() if config.tuned_kind == "adapter" else contextlib.nullcontext()
        with probe_ctx:
            probe = gradient_probe(
                base,
                tokenizer,
                texts,
                num_batches=config.probe_batches,
                batch_size=config.batch_size,
                max_length=config.max_length,
                device=device,
                min_objective=config.min_objective,
            )

    rows = collector_rows
    if config.weight_stats:
        with torch.inference_mode():
            if config.tuned_kind == "adapter":
                extra = weight_change_adapter(base_layers)
            elif tuned is not None:
                extra = weight_change_models(base_layers, tuned_layers)
            else:
                extra = weight_snr(base_layers, progress=config.progress)
        for row, more in zip(rows, extra):
            row.update(more)

    columns = result_columns(config.mode, weight_stats=config.weight_stats, early_exit=early_exit)
    final_rows = []
    for i, row in enumerate(rows):
        full = {"layer": i, "relative_depth": (i + 0.5) / num_layers}
        full.update(row)
        final_rows.append({k: json_safe(full.get(k)) for k in columns})

    rec = _recommend(config, final_rows, num_layers, probe)
    probe_doc = None
    if probe is not None:
        probe_doc = probe.to_dict()
        if config.mode == "pair" and not rec.refused:
            probe_doc["vs_recommendation"] = compare_windows(probe.recommendation.layers, rec.layers)
    if rec.refused:
        print(f"midblock analyze: warning: no window is recommended: {rec.refused}.", file=sys.stderr)

    runtime = {"seconds": round(time.perf_counter() - t0, 3)}
    runtime.update(_peak_memory(device))
    return AnalysisResult(
        mode=config.mode,
        base=config.base,
        tuned=config.tuned,
        tuned_kind=config.tuned_kind,
        num_layers=num_layers,
        hidden_size=hidden,
        layers_path=layers_path,
        model_type=getattr(inner.config, "model_type", None),
        prompts={
            "source": config.prompts,
            "count": len(ids),
            "max_length": config.max_length,
            "tokens": tokens,
            "split": config.split if config.prompts == "gsm8k" else None,
        },
        settings={
            "signal": config.signal if config.mode == "pair" else None,
            "min_objective": config.min_objective,
            "probe_batches": config.probe_batches if config.probe else None,
            "batch_size": config.batch_size,
            "dtype": str(next(inner.parameters()).dtype).replace("torch.", ""),
            "device": str(device),
            "stats_dtype": config.stats_dtype,
            "early_exit": early_exit,
            "weight_stats": config.weight_stats,
        },
        columns=columns,
        rows=final_rows,
        recommendation=rec,
        runtime=runtime,
        tuned_variant=None if config.mode == "single" else (config.tuned_variant or config.detected_variant),
        tuned_layers=config.tuned_layers,
        probe=probe_doc,
    )


def pair_signal(rows: list[dict], signal: str) -> list[Optional[float]]:
    """The per-layer two-model signal ``signal`` (a name of :data:`PAIR_SIGNALS`) from result rows."""
    if signal == "own_output":
        return [r.get("own_change") for r in rows]
    if signal == "weight":
        return [r.get("weight_change") for r in rows]
    if signal == "inherited_cka":
        return [None if r.get("cka") is None else 1.0 - r["cka"] for r in rows]
    raise ValueError(f"signal={signal!r} is not one of {', '.join(PAIR_SIGNALS)}.")


def _recommend(config: AnalysisConfig, rows: list[dict], num_layers: int, probe: Any) -> Recommendation:
    if config.mode == "pair":
        signal = pair_signal(rows, config.signal)
        reason = config.window_tuned
        if reason:
            return refused_recommendation(num_layers, config.signal, signal, reason)
        return recommend_window(signal, signal_name=config.signal, min_objective=config.min_objective)
    if probe is not None:
        return probe.recommendation
    return default_recommendation(
        num_layers,
        "one model and no --probe: nothing here measures which layers a fine-tune changes; give TUNED "
        "(a uniform 11111 adapter or a full fine-tune) or pass --probe",
    )
