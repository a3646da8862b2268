"""Run one or two models over a prompt set and collect per-layer statistics.

Hidden states are taken with forward hooks on the decoder layers (the residual stream
each layer outputs) and reduced on the spot: each layer's B x T x D token states become
a mean-pooled B x D batch (fed to streaming D x D accumulators), per-sequence prompt
entropy and curvature, and the early-exit top-1 token of each position. Nothing of size
N x T x D or N x N is kept; memory grows with L * D^2, not with the number of prompts.

Two-model mode compares BASE with TUNED (a full model directory, or a PEFT adapter
directory applied to BASE: then one model is loaded and the base pass runs with the
adapter disabled). Single-model mode measures BASE alone, plus weight statistics.

>>> from midblock_plugin.analysis import AnalysisConfig, run_analysis  # doctest: +SKIP
>>> result = run_analysis(AnalysisConfig(base="path/to/base", tuned="path/to/adapter"))  # doctest: +SKIP
>>> result.recommendation.layers  # doctest: +SKIP
[3, 4, 5, 6, 7, 8, 9, 10, 11]
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from midblock_plugin.analysis.prompts import check_prompt_source, load_prompt_rows, render_prompts
from midblock_plugin.analysis.recommend import Recommendation, recommend_window

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

_ATTN_KEYS = ("attn", "attention")
_MLP_KEYS = ("mlp", "feed_forward", "ffn", "moe", "experts", "fc1", "fc2")
_FINAL_NORM_NAMES = ("norm", "final_layer_norm", "ln_f", "final_layernorm", "norm_f", "final_norm")


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
        data_dir: directory of GSM8K ``{split}.jsonl`` (default: ``midblock_plugin.testing.GSM8K_DIR``).
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
        check_model_path(self.base, "BASE")
        if self.tokenizer:
            check_model_path(self.tokenizer, "--tokenizer")
        if self.tuned is not None:
            self.tuned_kind = detect_tuned_kind(self.tuned)
        check_prompt_source(self.prompts, self.data_dir, self.split)

    @property
    def mode(self) -> str:
        """``"pair"`` with a TUNED model, else ``"single"``."""
        return "single" if self.tuned is None else "pair"


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


# --------------------------------------------------------------------------- model plumbing


def _inner(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _walk(obj: Any, dotted: str) -> Any:
    for part in filter(None, dotted.split(".")):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def backbone_and_readout(model: Any) -> tuple[Any, Any, Any, str]:
    """``(backbone, final_norm, lm_head, layers_path)``: the module that runs the decoder
    stack (called instead of the full model so no full-vocabulary logits are built), its
    final norm (None if not found) and the output embedding (None for a bare model)."""
    import torch.nn as nn

    from midblock_plugin.architecture import find_decoder_layers

    path, _ = find_decoder_layers(model)
    inner = _inner(model)
    parent = path.rsplit(".", 1)[0] if "." in path else ""
    backbone = _walk(inner, parent) if parent else inner
    norm = None
    for name in _FINAL_NORM_NAMES:
        mod = getattr(backbone, name, None)
        if isinstance(mod, nn.Module):
            norm = mod
            break
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    return backbone, norm, head, path


@dataclass
class Readout:
    """Early exit: the final norm and LM head applied to one layer's token states."""

    norm: Any
    head: Any
    chunk: int = 512

    def top1(self, hidden: Any, mask: Any) -> Any:
        """Top-1 token id at every unmasked position (1-D, row-major over the batch)."""
        import torch

        states = hidden[mask]
        out = []
        for part in states.split(self.chunk):
            out.append(self.head(self.norm(part)).argmax(-1))
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=hidden.device)


class _ModelStats:
    """Per-layer accumulators of one model."""

    def __init__(self, num_layers: int, dim: int, dtype: Any, device: Any) -> None:
        import torch

        from midblock_plugin.analysis.metrics import MomentStats

        self.moments = [MomentStats(dim, dtype=dtype, device=device) for _ in range(num_layers)]
        zeros = lambda: torch.zeros(num_layers, dtype=torch.float64, device=device)  # noqa: E731
        self.pe_sum, self.pe_n = zeros(), zeros()
        self.curv_sum, self.curv_n = zeros(), zeros()
        self.ee_agree, self.ee_total = zeros(), zeros()

    def add_token_metrics(self, layer: int, pe: Any, curv: Any) -> None:
        import torch

        for values, s, n in ((pe, self.pe_sum, self.pe_n), (curv, self.curv_sum, self.curv_n)):
            ok = ~torch.isnan(values)
            s[layer] += values[ok].double().sum().to(s.device)
            n[layer] += ok.sum().to(n.device)


class LayerCollector:
    """Forward hooks that reduce each decoder layer's output as it is produced.

    Use :meth:`attach` on every layer stack involved, then per batch :meth:`begin_batch`,
    one forward per model under :meth:`pass_of`, and :meth:`end_batch`.
    """

    def __init__(self, num_layers: int, dim: int, *, pair: bool, stats_dtype: Any, device: Any,
                 readouts: dict[str, Optional[Readout]]) -> None:
        import torch

        from midblock_plugin.analysis.metrics import CrossStats, MomentStats

        self.num_layers, self.dim, self.pair = num_layers, dim, pair
        self.device = device
        keys = ("base", "tuned") if pair else ("base",)
        self.stats = {k: _ModelStats(num_layers, dim, stats_dtype, device) for k in keys}
        self.cross = [CrossStats() for _ in range(num_layers)]
        self.input_moments = None if pair else MomentStats(dim, dtype=stats_dtype, device=device, track_normalized=False)
        self.readouts = readouts
        self.ee_cross = torch.zeros(num_layers, dtype=torch.float64, device=device)
        self.current: Optional[str] = None
        self.mask: Any = None
        self._pooled: dict[str, list] = {}
        self._preds: dict[str, list] = {}
        self._prev: Any = None
        self._handles: list = []

    # hooks ------------------------------------------------------------------
    def attach(self, layers: Any) -> None:
        """Register the hooks on a decoder ``nn.ModuleList``."""
        for idx, layer in enumerate(layers):
            self._handles.append(layer.register_forward_hook(self._make_hook(idx)))
        if not self.pair:
            self._handles.append(layers[0].register_forward_pre_hook(self._input_hook, with_kwargs=True))

    def detach(self) -> None:
        """Remove every hook."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _make_hook(self, idx: int):
        def hook(module, args, output):
            if self.current is not None:
                self.observe(idx, output[0] if isinstance(output, tuple) else output)

        return hook

    def _input_hook(self, module, args, kwargs):
        from midblock_plugin.analysis.metrics import mean_pool

        if self.current is None:
            return None
        hidden = args[0] if args else kwargs.get("hidden_states")
        pooled = mean_pool(hidden, self.mask)
        self.input_moments.update(pooled)
        self._prev = pooled
        return None

    # batch protocol ------------------------------------------------------------
    def begin_batch(self, mask: Any) -> None:
        """Start a batch with its (right-padded) attention mask, B x T."""
        self.mask = mask.bool()
        self._pooled = {k: [None] * self.num_layers for k in self.stats}
        self._preds = {k: [None] * self.num_layers for k in self.stats}

    @contextlib.contextmanager
    def pass_of(self, key: str) -> Iterator[None]:
        """Context manager: forward passes inside it are recorded as model ``key``."""
        self.current = key
        try:
            yield
        finally:
            self.current = None
        self._finish_pass(key)

    def observe(self, layer: int, hidden: Any) -> None:
        """Reduce one layer's output (B x T x D) of the current model."""
        from midblock_plugin.analysis.metrics import curvature, mean_pool, prompt_entropy

        key = self.current
        stats = self.stats[key]
        mask = self.mask.to(hidden.device)
        pooled = mean_pool(hidden, mask)
        stats.moments[layer].update(pooled)
        stats.add_token_metrics(layer, prompt_entropy(hidden, mask), curvature(hidden, mask))
        readout = self.readouts.get(key)
        if readout is not None:
            self._preds[key][layer] = readout.top1(hidden, mask)
        if self.pair:
            if key == "base":
                self._pooled["base"][layer] = pooled
            else:
                base = self._pooled["base"][layer]
                if base is None:
                    raise RuntimeError("LayerCollector: the tuned pass ran before the base pass of this batch")
                self.cross[layer].update(base, pooled, self.stats["base"].moments[layer], stats.moments[layer])
        else:
            prev_moments = self.input_moments if layer == 0 else stats.moments[layer - 1]
            self.cross[layer].update(self._prev, pooled, prev_moments, stats.moments[layer])
            self._prev = pooled

    def _finish_pass(self, key: str) -> None:
        preds = self._preds[key]
        if self.readouts.get(key) is None or preds[-1] is None:
            return
        final = preds[-1]
        stats = self.stats[key]
        for layer, p in enumerate(preds):
            stats.ee_agree[layer] += (p == final).sum().to(stats.ee_agree.device)
            stats.ee_total[layer] += final.numel()
        if key == "tuned" and self._preds.get("base") and self._preds["base"][-1] is not None:
            for layer, (pb, pt) in enumerate(zip(self._preds["base"], preds)):
                self.ee_cross[layer] += (pb == pt).sum().to(self.ee_cross.device)

    def end_batch(self) -> None:
        """Drop the batch's stored pooled states and predictions."""
        self._pooled, self._preds, self._prev, self.mask = {}, {}, None, None

    # results -------------------------------------------------------------------
    def rows(self) -> list[dict]:
        """Per-layer metric values (floats or None)."""
        from midblock_plugin.analysis.metrics import cka_from_stats, mean_shift

        def ratio(a, b, i):
            return float(a[i] / b[i]) if float(b[i]) > 0 else None

        out = []
        for i in range(self.num_layers):
            row: dict[str, Any] = {}
            if self.pair:
                b, t = self.stats["base"], self.stats["tuned"]
                row["cka"] = cka_from_stats(b.moments[i], t.moments[i], self.cross[i])
                row["cosine"] = self.cross[i].mean_cosine()
                row["mean_shift"] = mean_shift(b.moments[i], t.moments[i])
                row["early_exit_cross"] = ratio(self.ee_cross, b.ee_total, i)
            else:
                prev = self.input_moments if i == 0 else self.stats["base"].moments[i - 1]
                row["adjacent_cka"] = cka_from_stats(prev, self.stats["base"].moments[i], self.cross[i])
            for key, st in self.stats.items():
                sfx = f"_{key}" if self.pair else ""
                row[f"effective_rank{sfx}"] = st.moments[i].effective_rank(normalize=True)
                row[f"dataset_entropy{sfx}"] = st.moments[i].dataset_entropy()
                row[f"prompt_entropy{sfx}"] = ratio(st.pe_sum, st.pe_n, i)
                row[f"curvature{sfx}"] = ratio(st.curv_sum, st.curv_n, i)
                row[f"early_exit{sfx}"] = ratio(st.ee_agree, st.ee_total, i)
            out.append(row)
        return out


# --------------------------------------------------------------------------- weights


def param_group(name: str) -> str:
    """``"attn"``, ``"mlp"`` or ``"other"`` for a parameter name inside a decoder layer."""
    low = name.lower()
    if any(k in low for k in _ATTN_KEYS):
        return "attn"
    if any(k in low for k in _MLP_KEYS):
        return "mlp"
    return "other"


def _change_row(sq_delta: dict, sq_base: dict) -> dict:
    from midblock_plugin.analysis.metrics import relative_change

    total_d = sum(sq_delta.values())
    total_b = sum(sq_base.values())
    return {
        "weight_change_attn": relative_change(sq_delta.get("attn", 0.0), sq_base.get("attn", 0.0)),
        "weight_change_mlp": relative_change(sq_delta.get("mlp", 0.0), sq_base.get("mlp", 0.0)),
        "weight_change": relative_change(total_d, total_b),
    }


def weight_change_models(base_layers: Any, tuned_layers: Any) -> list[dict]:
    """Relative weight change per layer between two full models (attention, MLP, all)."""
    rows = []
    for i, (lb, lt) in enumerate(zip(base_layers, tuned_layers)):
        tuned = dict(lt.named_parameters())
        sq_delta: dict[str, float] = {}
        sq_base: dict[str, float] = {}
        for name, pb in lb.named_parameters():
            pt = tuned.get(name)
            if pt is None or pt.shape != pb.shape:
                raise ValueError(
                    f"layer {i} parameter {name!r} differs in name or shape between BASE and TUNED; "
                    "give two checkpoints of the same architecture."
                )
            g = param_group(name)
            wb = pb.detach().float()
            sq_delta[g] = sq_delta.get(g, 0.0) + float((pt.detach().float().to(wb.device) - wb).pow(2).sum())
            sq_base[g] = sq_base.get(g, 0.0) + float(wb.pow(2).sum())
        rows.append(_change_row(sq_delta, sq_base))
    return rows


def weight_change_adapter(peft_layers: Any) -> list[dict]:
    """Relative weight change per layer of BASE + adapter vs BASE, from each tuner module's
    ``get_delta_weight`` (no merged copy of the model is made)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    rows = []
    unsupported: set[str] = set()
    for layer in peft_layers:
        tuners = {n: m for n, m in layer.named_modules() if isinstance(m, BaseTunerLayer)}
        sq_delta: dict[str, float] = {}
        sq_base: dict[str, float] = {}
        for name, p in layer.named_parameters():
            owner = next((t for t in tuners if name.startswith(t + ".")), None)
            if owner is not None and not name[len(owner) + 1:].startswith("base_layer."):
                continue  # an adapter parameter, not a base weight
            g = param_group(owner if owner is not None else name)
            sq_base[g] = sq_base.get(g, 0.0) + float(p.detach().float().pow(2).sum())
        broken = False
        for name, mod in tuners.items():
            base_w = mod.get_base_layer().weight
            for adapter in mod.active_adapters:
                try:
                    delta = mod.get_delta_weight(adapter)
                except (KeyError, ValueError):
                    continue  # this module does not hold that adapter
                except (AttributeError, NotImplementedError):
                    unsupported.add(type(mod).__name__)
                    broken = True
                    continue
                if delta.shape != base_w.shape and delta.T.shape == base_w.shape:
                    delta = delta.T
                g = param_group(name)
                sq_delta[g] = sq_delta.get(g, 0.0) + float(delta.detach().float().pow(2).sum())
        row = _change_row(sq_delta, sq_base)
        if broken:
            row = {k: None for k in row}
        rows.append(row)
    if unsupported:
        print(
            f"midblock analyze: warning: cannot compute weight deltas of {', '.join(sorted(unsupported))} "
            "(no get_delta_weight); weight change is left empty for those layers.",
            file=sys.stderr,
        )
    return rows


def weight_snr(layers: Any, progress: bool = False) -> list[dict]:
    """Mean Spectrum-style spectral SNR of the attention and MLP matrices of each layer."""
    from tqdm.auto import tqdm

    from midblock_plugin.analysis.metrics import spectral_snr

    rows = []
    for layer in tqdm(layers, desc="weight SNR", unit="layer", disable=not progress, file=sys.stderr):
        groups: dict[str, list[float]] = {"attn": [], "mlp": []}
        for name, p in layer.named_parameters():
            g = param_group(name)
            if p.ndim == 2 and g in groups:
                v = spectral_snr(p)
                if math.isfinite(v):
                    groups[g].append(v)
        rows.append({f"snr_{g}": (sum(v) / len(v) if v else None) for g, v in groups.items()})
    return rows


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


def _check_pair_configs(config: AnalysisConfig) -> None:
    """Compare layer count and width of BASE and a full TUNED model before loading weights."""
    from transformers import AutoConfig

    from midblock_plugin.architecture import num_layers_from_config

    cb = AutoConfig.from_pretrained(config.base)
    ct = AutoConfig.from_pretrained(config.tuned)
    lb, lt = num_layers_from_config(cb), num_layers_from_config(ct)
    db = getattr(cb, "hidden_size", None) or getattr(cb, "n_embd", None)
    dt = getattr(ct, "hidden_size", None) or getattr(ct, "n_embd", None)
    if lb != lt or db != dt:
        raise ValueError(
            f"BASE has {lb} layers of width {db} but TUNED has {lt} layers of width {dt}; "
            "give a TUNED checkpoint fine-tuned from BASE (same architecture)."
        )


def _tokenize(tokenizer: Any, texts: list[str], max_length: int) -> list[list[int]]:
    enc = tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=True)
    return [ids for ids in enc["input_ids"] if len(ids) > 0]


def _batches(ids: list[list[int]], batch_size: int, pad_id: int):
    """Right-padded (input_ids, attention_mask) batches of length-sorted sequences."""
    import torch

    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for start in range(0, len(order), batch_size):
        chunk = [ids[i] for i in order[start:start + batch_size]]
        width = max(len(x) for x in chunk)
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, x in enumerate(chunk):
            input_ids[r, : len(x)] = torch.tensor(x, dtype=torch.long)
            mask[r, : len(x)] = 1
        yield input_ids, mask


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

    from midblock_plugin.architecture import find_decoder_layers, num_layers_from_config

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
    ids = _tokenize(tokenizer, texts, config.max_length)
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

    layers_path, base_layers = find_decoder_layers(base)
    num_layers = len(base_layers)
    cfg_layers = num_layers_from_config(_inner(base).config)
    if cfg_layers != num_layers:
        raise ValueError(f"BASE config says {cfg_layers} layers but {layers_path} holds {num_layers}.")
    backbone_b, norm_b, head_b, _ = backbone_and_readout(base)
    hidden = int(getattr(_inner(base).config, "hidden_size", 0) or _inner(base).get_input_embeddings().weight.shape[1])

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
        _, tuned_layers = find_decoder_layers(tuned)
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
            for input_ids, mask in tqdm(_batches(ids, config.batch_size, pad_id), total=num_batches,
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
        final_rows.append({k: _clean(full.get(k)) for k in columns})

    if config.mode == "pair":
        signal = [None if r["cka"] is None else 1.0 - r["cka"] for r in final_rows]
        rec = recommend_window(signal, basis="cka")
    else:
        signal = [None if r["adjacent_cka"] is None else 1.0 - r["adjacent_cka"] for r in final_rows]
        rec = recommend_window(signal, basis="adjacent_cka")

    inner_cfg = _inner(base).config
    runtime = {"seconds": round(time.perf_counter() - t0, 3)}
    runtime.update(_peak_memory(device))
    return AnalysisResult(
        mode=config.mode, base=config.base, tuned=config.tuned, tuned_kind=config.tuned_kind,
        num_layers=num_layers, hidden_size=hidden, layers_path=layers_path,
        model_type=getattr(inner_cfg, "model_type", None),
        prompts={"source": config.prompts, "count": len(ids), "max_length": config.max_length,
                 "tokens": tokens, "split": config.split if config.prompts == "gsm8k" else None},
        settings={"batch_size": config.batch_size, "dtype": str(next(_inner(base).parameters()).dtype).replace("torch.", ""),
                  "device": str(device), "stats_dtype": config.stats_dtype, "early_exit": early_exit,
                  "weight_stats": config.weight_stats},
        columns=columns, rows=final_rows, recommendation=rec, runtime=runtime,
    )


def _clean(value: Any) -> Any:
    """JSON-safe scalar: NaN/inf become None, tensors become floats."""
    if value is None or isinstance(value, (int, str)) and not isinstance(value, bool):
        return value
    try:
        f = float(value)
    except (TypeError, ValueError):
        return value
    return f if math.isfinite(f) else None


def load_analysis(path: str | os.PathLike) -> dict:
    """Read an analysis JSON written by ``midblock analyze``."""
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)
