"""``MidBlockPlan``: a config resolved against one model (layers, ranks, alphas, counts).

The plan is computed from the model *config* alone (weights are never needed: a model
is built on the meta device to read shapes), so ``midblock plan`` and every
integration can show exactly what will be trained before anything is loaded.

>>> from midblock_plugin.testing import tiny_config
>>> plan = build_plan(tiny_config("llama", num_layers=10), MidBlockConfig(rank=8))
>>> plan.layers, plan.ranks[2]
([2, 3, 4, 5, 6, 7], 13)
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from midblock_plugin.config import MidBlockConfig
from midblock_plugin.window import (
    WindowError,
    _unwrap,
    describe_window,
    find_decoder_layers,
    layers_pattern_of,
    matched_rank,
    num_layers_from_config,
    resolve_layers,
)

#: Submodule names (within a decoder layer) that hold attention / MLP projections.
_ATTENTION_HINTS = ("attn", "attention")
_MLP_HINTS = ("mlp", "feed_forward", "ffn")


@dataclass
class MidBlockPlan:
    """What will be trained on one model. Built by :func:`build_plan`."""

    architecture: str
    model_type: str
    num_layers: int
    layers: list[int]
    layers_path: str
    layers_pattern: str
    mode: str
    rank: int
    ranks: dict[int, int]
    base_alpha: float
    lora_alpha: float
    use_rslora: bool
    target_modules: list[str]
    lora_dropout: float
    trainable_params: int | None = None
    uniform_lora_params: int | None = None
    full_params: int | None = None
    extra_trainable: list[str] = field(default_factory=list)
    fan_in_fan_out: bool = False
    largest_module_params: int | None = None
    config: MidBlockConfig | None = field(default=None, repr=False)

    @property
    def window(self) -> str:
        return describe_window(self.num_layers, self.layers)

    @property
    def first_layer(self) -> int:
        return self.layers[0]

    def layer_prefix(self, index: int) -> str:
        return f"{self.layers_path}.{index}."

    def to_json_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("config", None)
        d["ranks"] = {str(k): v for k, v in self.ranks.items()}
        d["window"] = self.window
        d["midblock_config"] = self.config.to_dict() if self.config else None
        return d

    def summary(self) -> str:
        """A one-screen human summary of the plan."""
        lines = [
            f"midblock plan: {self.architecture} ({self.model_type}), L={self.num_layers} decoder layers at '{self.layers_path}'",
            f"  mode           {self.mode}",
            f"  window         layers {self.window} ({len(self.layers)} of {self.num_layers}: "
            f"{100 * self.layers[0] / self.num_layers:.0f}%-{100 * (self.layers[-1] + 1) / self.num_layers:.0f}% depth)",
        ]
        if self.mode == "lora":
            ranks = sorted(set(self.ranks.values()))
            scale = self.lora_alpha / (math.sqrt(ranks[0]) if self.use_rslora else ranks[0])
            lines += [
                f"  target modules {', '.join(self.target_modules)}",
                f"  ranks          {ranks[0] if len(ranks) == 1 else self.ranks} per active layer "
                f"(uniform baseline r={self.rank}; rank sum {sum(self.ranks.values())} vs {self.rank * self.num_layers})",
                f"  lora_alpha     {self.lora_alpha:g} (baseline {self.base_alpha:g}; scale {scale:.4g}"
                f"{', rsLoRA' if self.use_rslora else ''}), dropout {self.lora_dropout:g}",
            ]
        elif self.extra_trainable:
            lines.append(f"  also trained   {', '.join(self.extra_trainable)}")
        if self.trainable_params is not None:
            full = self.full_params or 1
            lines.append(
                f"  trainable      {self.trainable_params:,} params ({100 * self.trainable_params / full:.3f}% of {full:,})"
            )
            if self.uniform_lora_params:
                lines.append(
                    f"  vs uniform     LoRA r={self.rank} on all layers: {self.uniform_lora_params:,} params "
                    f"(ratio {self.trainable_params / self.uniform_lora_params:.3f})"
                )
        return "\n".join(lines)


# --------------------------------------------------------------------------- targets


def _is_linear(module: Any) -> bool:
    import torch.nn as nn

    if isinstance(module, nn.Linear):
        return True
    return type(module).__name__ == "Conv1D"  # transformers' GPT-2 projection (PEFT supports it)


def _in_out(module: Any) -> tuple[int, int]:
    w = module.weight
    shape = tuple(getattr(w, "ds_shape", None) or w.shape)
    if type(module).__name__ == "Conv1D":  # weight is (in, out)
        return int(shape[0]), int(shape[1])
    return int(shape[1]), int(shape[0])


def linear_modules_of_layer(layer: Any) -> dict[str, Any]:
    """Relative name -> linear module, for every linear leaf of one decoder layer."""
    return {name: mod for name, mod in layer.named_modules() if name and _is_linear(mod)}


def resolve_target_modules(layer: Any, spec: str | list[str]) -> list[str]:
    """Target-module names, relative to a decoder layer, for a preset or an explicit list.

    Names are the layer-relative dotted paths (``self_attn.q_proj``; ``attn.c_proj`` on
    GPT-2, where the MLP also has a ``c_proj``), which PEFT matches as key suffixes.
    """
    linears = linear_modules_of_layer(layer)
    if isinstance(spec, str):
        if spec == "all-linear":
            names = list(linears)
        else:
            hints = _ATTENTION_HINTS if spec == "attention" else _MLP_HINTS
            names = [n for n in linears if any(h in part for part in n.split(".")[:-1] for h in hints)]
        if not names:
            raise WindowError(
                f"target_modules={spec!r}: no linear module of {type(layer).__name__} matches this preset "
                f"(its linear modules: {', '.join(linears) or 'none'}); give an explicit list instead."
            )
        return names
    resolved: list[str] = []
    for want in spec:
        hits = [n for n in linears if n == want or n.endswith("." + want)]
        if not hits:
            raise WindowError(
                f"target_modules: {want!r} matches no linear module of {type(layer).__name__}; "
                f"available: {', '.join(linears)}."
            )
        resolved.extend(h for h in hits if h not in resolved)
    return resolved


# --------------------------------------------------------------------------- build


def _meta_model(config: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    cfg = config
    if hasattr(cfg, "quantization_config"):
        cfg = cfg.__class__.from_dict({k: v for k, v in cfg.to_dict().items() if k != "quantization_config"})
    try:
        cls = AutoModelForCausalLM._model_mapping[type(cfg)]
    except KeyError:  # custom-code models: only from_config knows them
        cls = None
    with torch.device("meta"):
        # Constructing the class directly (not from_config) keeps an active ZeRO-3 config from
        # partitioning this shape-only copy.
        return cls(cfg) if cls is not None else AutoModelForCausalLM.from_config(cfg)


def load_config(model_or_path: Any) -> Any:
    """A transformers config from a config object, a model directory / hub id, or a model."""
    if isinstance(model_or_path, (str, os.PathLike)):
        from transformers import AutoConfig

        path = str(model_or_path)
        if os.path.isdir(path) and not os.path.exists(os.path.join(path, "config.json")):
            raise FileNotFoundError(f"{path!r} has no config.json; give a Hugging Face model directory.")
        return AutoConfig.from_pretrained(path)
    return getattr(model_or_path, "config", model_or_path)


def _count(params: Any) -> int:
    total = 0
    for p in params:
        total += int(getattr(p, "ds_numel", 0) or p.numel())
    return total


def build_plan(model_or_config: Any = None, config: MidBlockConfig | None = None, *, num_layers: int | None = None) -> MidBlockPlan:
    """Resolve ``config`` against a model (loaded, or a config / directory: then a meta-device
    copy is built to read shapes), or against a bare layer count (no parameter counts)."""
    import torch.nn as nn

    config = config or MidBlockConfig()
    model = None
    if model_or_config is None:
        if num_layers is None:
            raise WindowError("build_plan needs a model, a model config, or num_layers.")
        L = num_layers
        arch, model_type, path = "unknown", "unknown", "model.layers"
        layers = resolve_layers(L, **config.window_kwargs())
    else:
        if isinstance(model_or_config, nn.Module):
            model = model_or_config
            hf_config = getattr(model, "config", None)
            if hasattr(model, "peft_config") or any("lora_" in n for n, _ in model.named_parameters()):
                model = None  # shapes are read from a clean meta-device copy, not the wrapped model
        else:
            hf_config = load_config(model_or_config)
        L = num_layers or num_layers_from_config(hf_config)
        arch = (getattr(hf_config, "architectures", None) or [None])[0] or (
            type(_unwrap(model)).__name__ if model is not None else None
        )
        model_type = getattr(hf_config, "model_type", "unknown")
        # the window is resolved (and validated) before anything heavy (the meta model) is built
        layers = resolve_layers(L, **config.window_kwargs())
        if model is None:
            model = _meta_model(hf_config)
        if arch is None:
            arch = type(model).__name__
        path, _ = find_decoder_layers(model)

    if config.mode == "lora":
        r_active = matched_rank(config.rank, L, len(layers)) if config.budget == "match" else config.rank
    else:
        r_active = 0
    alpha = config.base_alpha
    if config.mode == "lora" and config.alpha_policy == "ratio":
        factor = math.sqrt(r_active / config.rank) if config.use_rslora else r_active / config.rank
        alpha = alpha * factor
    alpha = float(round(alpha, 6))

    plan = MidBlockPlan(
        architecture=arch,
        model_type=model_type,
        num_layers=L,
        layers=layers,
        layers_path=path,
        layers_pattern=layers_pattern_of(path),
        mode=config.mode,
        rank=config.rank,
        ranks={i: r_active for i in layers} if config.mode == "lora" else {},
        base_alpha=config.base_alpha,
        lora_alpha=alpha,
        use_rslora=config.use_rslora,
        target_modules=[],
        lora_dropout=config.lora_dropout,
        config=config,
    )
    if model is not None:
        _fill_counts(plan, model, config)
    return plan


def _fill_counts(plan: MidBlockPlan, model: Any, config: MidBlockConfig) -> None:
    base = _unwrap(model)
    _, layer_list = find_decoder_layers(base)
    plan.target_modules = resolve_target_modules(layer_list[0], config.target_modules)
    first = linear_modules_of_layer(layer_list[0])
    plan.fan_in_fan_out = any(type(first[n]).__name__ == "Conv1D" for n in plan.target_modules)
    frozen_base = [p for n, p in base.named_parameters() if "lora_" not in n]
    plan.full_params = _count(dict.fromkeys(frozen_base))
    # the largest single module's own parameters: what ZeRO-3 gathers at once (DeepSpeed's rule)
    plan.largest_module_params = max(
        (_count(m.parameters(recurse=False)) for m in base.modules()), default=0
    )

    def lora_params(index: int, rank: int) -> int:
        mods = linear_modules_of_layer(layer_list[index])
        return sum(rank * sum(_in_out(mods[name])) for name in plan.target_modules if name in mods)

    plan.uniform_lora_params = sum(lora_params(i, config.rank) for i in range(plan.num_layers))
    if plan.mode == "lora":
        plan.trainable_params = sum(lora_params(i, plan.ranks[i]) for i in plan.layers)
    else:
        names = full_mode_trainable_names(base, plan, config)
        plan.trainable_params = _count(p for n, p in base.named_parameters() if n in names)


def full_mode_trainable_names(model: Any, plan: MidBlockPlan, config: MidBlockConfig) -> set[str]:
    """Names of the parameters full mode trains: the window's layers (+ opted-in extras)."""
    prefixes = tuple(plan.layer_prefix(i) for i in plan.layers)
    names = {n for n, _ in model.named_parameters() if n.startswith(prefixes)}
    extras: list[str] = []
    if config.train_final_norm:
        norm = _final_norm_names(model, plan)
        if not norm:
            raise WindowError(
                f"train_final_norm=True but no final norm was found in {type(model).__name__}; turn it off."
            )
        names |= norm
        extras.append("final norm")
    if config.train_embeddings:
        emb = model.get_input_embeddings()
        ids = {id(p) for p in emb.parameters()}
        names |= {n for n, p in model.named_parameters() if id(p) in ids}
        extras.append("input embeddings")
    plan.extra_trainable = extras
    return names


def _final_norm_names(model: Any, plan: MidBlockPlan) -> set[str]:
    stack = plan.layers_path.rsplit(".", 1)[0] if "." in plan.layers_path else ""
    prefix = f"{stack}." if stack else ""
    out = set()
    for cand in ("norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f"):
        out |= {n for n, _ in model.named_parameters() if n.startswith(prefix + cand + ".")}
    return out
