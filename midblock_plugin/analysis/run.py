"""Run one or two models over a prompt set and compute every per-layer metric.

Two-model mode compares BASE with TUNED (a full model directory, or a PEFT adapter
directory applied to BASE: then one model is loaded and the base pass runs with the
adapter disabled). Single-model mode measures BASE alone, plus weight statistics.
The per-layer statistics are streamed by :class:`~midblock_plugin.analysis.collect.LayerCollector`;
the weight statistics come from :mod:`midblock_plugin.analysis.weights`.

>>> from midblock_plugin.analysis import AnalysisConfig, run_analysis  # doctest: +SKIP
>>> result = run_analysis(AnalysisConfig(base="path/to/base", tuned="path/to/adapter"))  # doctest: +SKIP
>>> result.recommendation.layers  # doctest: +SKIP
[3, 4, 5, 6, 7, 8, 9, 10, 11]
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from midblock_plugin import architecture, checks
from midblock_plugin.analysis.collect import (
    LayerCollector,
    Readout,
    backbone_and_readout,
    padded_batches,
    tokenize_prompts,
)
from midblock_plugin.analysis.prompts import check_prompt_source, load_prompt_rows, render_prompts
from midblock_plugin.analysis.recommend import Recommendation, recommend_window
from midblock_plugin.analysis.weights import weight_change_adapter, weight_change_models, weight_snr
from midblock_plugin.io import json_safe


DTYPES = ("auto", "float32", "bfloat16", "float16")
STATS_DTYPES = ("float64", "float32")

#: Per-layer columns and their meaning, by mode. ``{m}`` columns appear once per model
#: (suffix ``_base`` / ``_tuned`` in two-model mode, no suffix in single-model mode).
PAIR_COLUMNS = {
    "cka": "linear CKA of base vs tuned mean-pooled states",
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


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or os.sep != "/" and os.sep in spec


def check_model_path(spec: str, flag: str) -> None:
    """Raise ``FileNotFoundError`` if ``spec`` is a local path that is not a model directory."""
    path = Path(os.path.expanduser(spec))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{flag} {spec!r} is a directory without config.json; give a model directory "
                "saved with save_pretrained (config.json + weights)."
            )
    elif path.exists() or _looks_like_path(spec):
        raise FileNotFoundError(f"{flag} {spec!r}: no such model directory; give a directory saved with save_pretrained.")


def detect_tuned_kind(spec: str) -> str:
    """``"adapter"`` (adapter_config.json) or ``"model"`` (config.json) for a TUNED directory."""
    path = Path(os.path.expanduser(spec))
    if not path.is_dir():
        raise FileNotFoundError(
            f"TUNED {spec!r}: no such directory; give a full model directory (config.json) or a "
            "PEFT adapter directory (adapter_config.json) saved with save_pretrained."
        )
    if (path / "adapter_config.json").is_file():
        return "adapter"
    if (path / "config.json").is_file():
        return "model"
    raise FileNotFoundError(
        f"TUNED {spec!r} has neither adapter_config.json nor config.json; give a full model "
        "directory or a PEFT adapter directory saved with save_pretrained."
    )


@dataclass
class AnalysisConfig:
    """What ``midblock analyze`` measures and how.

    Attributes:
        base: the base model (directory or cached hub id).
        tuned: a tuned model directory or a PEFT adapter directory; None for single-model mode.
        prompts: ``"builtin"``, ``"gsm8k"`` or a JSONL path (``text`` or chat ``messages`` rows).
        data_dir: directory of GSM8K ``{split}.jsonl`` (default: ``$MIDBLOCK_GSM8K_DIR``).
        split: GSM8K split to read.
        num_prompts: at most this many prompts (at least 2 are needed).
        max_length: tokens per prompt (longer prompts are truncated).
        batch_size: prompts per forward pass.
        dtype: model dtype; ``auto`` = the checkpoint dtype on GPU, float32 on CPU.
        device: ``auto`` (CUDA if present), ``cpu``, ``cuda``, ``cuda:1``, ...
        stats_dtype: dtype of the D x D accumulators (float64; float32 halves their memory).
        tokenizer: tokenizer directory (default: BASE).
        early_exit: compute early-exit agreement (final norm + LM head at each layer).
        weight_stats: compute weight change (two models) or spectral SNR (one model).
        progress: show a tqdm progress bar on stderr.
    """

    base: str
    tuned: Optional[str] = None
    prompts: str = "builtin"
    data_dir: Optional[str] = None
    split: str = "test"
    num_prompts: int = 200
    max_length: int = 128
    batch_size: int = 8
    dtype: str = "auto"
    device: str = "auto"
    stats_dtype: str = "float64"
    tokenizer: Optional[str] = None
    early_exit: bool = True
    weight_stats: bool = True
    progress: bool = True
    tuned_kind: Optional[str] = field(default=None, init=False)

    def __post_init__(self) -> None:
        for name, value in (("base", self.base), ("tuned", self.tuned), ("tokenizer", self.tokenizer)):
            if value is None and name != "base":
                continue
            if not isinstance(value, (str, os.PathLike)):
                raise ValueError(f"{name}={value!r} must be a model directory or hub id (a string).")
        for name in ("early_exit", "weight_stats", "progress"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"{name}={value!r} must be True or False (a bool, not {type(value).__name__}).")
        for name, low in (("num_prompts", 2), ("max_length", 2), ("batch_size", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"--{name.replace('_', '-')}={value!r}: need an integer >= {low}.")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype={self.dtype!r} is not one of {', '.join(DTYPES)}.")
        if self.stats_dtype not in STATS_DTYPES:
            raise ValueError(f"--stats-dtype={self.stats_dtype!r} is not one of {', '.join(STATS_DTYPES)}.")
        if self.split not in ("train", "test"):
            raise ValueError(f"--split={self.split!r} is not one of train, test.")
        dev = str(self.device)
        if dev not in ("auto", "cpu", "cuda", "mps") and not (dev.startswith("cuda:") and dev[5:].isdigit()):
            raise ValueError(f"--device={dev!r}: use auto, cpu, cuda, cuda:N or mps.")
        checks.check_device(dev, "--device")
        self.base, self.tuned = os.fspath(self.base), None if self.tuned is None else os.fspath(self.tuned)
        check_model_path(self.base, "BASE")
        if self.tokenizer:
            check_model_path(self.tokenizer, "--tokenizer")
        if self.tuned is not None:
            self.tuned_kind = detect_tuned_kind(self.tuned)
        check_prompt_source(self.prompts, self.data_dir, self.split)
        check_pair(self)

    @property
    def mode(self) -> str:
        """``"pair"`` with a TUNED model, else ``"single"``."""
        return "single" if self.tuned is None else "pair"


def check_pair(config: "AnalysisConfig") -> None:
    """BASE (and TUNED) from ``config.json`` and the adapter files alone, before any weights
    load: each is a decoder with weights; a TUNED model has BASE's architecture, depth and
    width; a TUNED adapter fits BASE (layers, modules, widths)."""
    cb = checks.check_model_dir(config.base, "BASE", weights=True)
    if config.tuned_kind == "adapter":
        checks.check_adapter(config.tuned, cb, "TUNED", base_flag="BASE")
    elif config.tuned_kind == "model":
        ct = checks.check_model_dir(config.tuned, "TUNED", weights=True)
        arch_b = (getattr(cb, "architectures", None) or [type(cb).__name__])[0]
        arch_t = (getattr(ct, "architectures", None) or [type(ct).__name__])[0]
        if type(cb) is not type(ct):
            raise ValueError(
                f"BASE is a {arch_b} ({cb.model_type}) but TUNED is a {arch_t} ({ct.model_type}); give a TUNED "
                "checkpoint fine-tuned from BASE (same architecture)."
            )
        _check_pair_configs(config, cb, ct)


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

    def column(self, name: str) -> list[Optional[float]]:
        """The per-layer values of one column."""
        return [row.get(name) for row in self.rows]

    def to_dict(self) -> dict:
        """The analysis JSON document (schema ``midblock.analysis/1``)."""
        from midblock_plugin import __version__

        return {
            "schema": "midblock.analysis/1",
            "midblock_version": __version__,
            "mode": self.mode,
            "base": self.base,
            "tuned": self.tuned,
            "tuned_kind": self.tuned_kind,
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


def _check_pair_configs(config: AnalysisConfig, cb: Any = None, ct: Any = None) -> None:
    """Compare layer count and width of BASE and a full TUNED model before loading weights."""
    cb = cb if cb is not None else architecture.load_config(config.base)
    ct = ct if ct is not None else architecture.load_config(config.tuned)
    lb, lt = architecture.num_layers_from_config(cb), architecture.num_layers_from_config(ct)
    db = getattr(cb, "hidden_size", None) or getattr(cb, "n_embd", None)
    dt = getattr(ct, "hidden_size", None) or getattr(ct, "n_embd", None)
    if lb != lt or db != dt:
        raise ValueError(
            f"BASE has {lb} layers of width {db} but TUNED has {lt} layers of width {dt}; "
            "give a TUNED checkpoint fine-tuned from BASE (same architecture)."
        )



def _peak_memory(device: Any) -> dict:
    import resource

    import torch

    out = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if device.type == "cuda":
        out["peak_cuda_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return out


def result_columns(mode: str, *, weight_stats: bool = True, early_exit: bool = True) -> dict[str, str]:
    """The per-layer columns (name -> description) of a ``"pair"`` or ``"single"`` analysis, in order."""
    columns: dict[str, str] = {"layer": "decoder layer index (0 = bottom)",
                               "relative_depth": "(layer + 0.5) / L, the layer's centre in relative depth"}
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
        print("midblock analyze: warning: no final norm / LM head found; early-exit agreement is skipped.", file=sys.stderr)
    if early_exit:
        readouts["base"] = Readout(norm_b, head_b)
    stats_dtype = getattr(torch, config.stats_dtype)
    collector = LayerCollector(num_layers, hidden, pair=config.mode == "pair", stats_dtype=stats_dtype,
                               device=device, readouts=readouts)
    collector.attach(base_layers)
    backbone_t = None
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
            for input_ids, mask in tqdm(padded_batches(ids, config.batch_size, pad_id), total=num_batches,
                                        desc="midblock analyze", unit="batch", disable=not config.progress,
                                        file=sys.stderr):
                input_ids, mask = input_ids.to(device), mask.to(device)
                tokens += int(mask.sum())
                collector.begin_batch(mask)
                kw = dict(input_ids=input_ids, attention_mask=mask, use_cache=False)
                if config.tuned_kind == "adapter":
                    with base.disable_adapter(), collector.pass_of("base"):
                        backbone_b(**kw)
                    with collector.pass_of("tuned"):
                        backbone_b(**kw)
                else:
                    with collector.pass_of("base"):
                        backbone_b(**kw)
                    if tuned is not None:
                        with collector.pass_of("tuned"):
                            backbone_t(**kw)
                collector.end_batch()
    finally:
        collector.detach()

    rows = collector.rows()
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

    if config.mode == "pair":
        signal = [None if r["cka"] is None else 1.0 - r["cka"] for r in final_rows]
        rec = recommend_window(signal, basis="cka")
    else:
        signal = [None if r["adjacent_cka"] is None else 1.0 - r["adjacent_cka"] for r in final_rows]
        rec = recommend_window(signal, basis="adjacent_cka")

    runtime = {"seconds": round(time.perf_counter() - t0, 3)}
    runtime.update(_peak_memory(device))
    return AnalysisResult(
        mode=config.mode, base=config.base, tuned=config.tuned, tuned_kind=config.tuned_kind,
        num_layers=num_layers, hidden_size=hidden, layers_path=layers_path,
        model_type=getattr(inner.config, "model_type", None),
        prompts={"source": config.prompts, "count": len(ids), "max_length": config.max_length,
                 "tokens": tokens, "split": config.split if config.prompts == "gsm8k" else None},
        settings={"batch_size": config.batch_size, "dtype": str(next(inner.parameters()).dtype).replace("torch.", ""),
                  "device": str(device), "stats_dtype": config.stats_dtype, "early_exit": early_exit,
                  "weight_stats": config.weight_stats},
        columns=columns, rows=final_rows, recommendation=rec, runtime=runtime,
    )
