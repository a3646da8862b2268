"""``MidBlockPlan``: what is trained and how much, for one run (a config x a model layout).

The plan is built **once per run** (:func:`build_plan`) and handed on: its
:meth:`~MidBlockPlan.lora_config` gives the PEFT config, ``MidBlockCallback(plan=plan)``
the training hooks, and ``plan.json`` records it. It needs the model *config* only
(shapes come from a meta-device copy), so ``midblock plan`` and every integration can
show exactly what will be trained before any weight is loaded.

Ranks: ``baseline_rank`` is the rank ``r`` of the uniform-LoRA baseline whose budget is
matched (``MidBlockConfig.rank``); ``layer_rank`` is the rank each window layer is
actually trained with (``floor(r*L/n)`` under the matched budget).

>>> from midblock_plugin.testing import tiny_config
>>> plan = build_plan(tiny_config("llama", num_layers=10), MidBlockConfig(rank=8))
>>> plan.layers, plan.baseline_rank, plan.layer_rank
([2, 3, 4, 5, 6, 7], 8, 13)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from midblock_plugin.architecture import ModelLayout, layout_of, load_config, num_layers_from_config
from midblock_plugin.config import MidBlockConfig
from midblock_plugin.rules import check_quantized_full
from midblock_plugin.serving import VLLM_MAX_LORA_RANKS, lora_flops_per_token, serve_rank, vllm_max_lora_rank
from midblock_plugin.window import WindowError, WindowOptionError, describe_window, matched_rank, resolve_layers


@dataclass
class MidBlockPlan:
    """What will be trained on one model. Built by :func:`build_plan`."""

    config: MidBlockConfig = field(repr=False)
    layout: ModelLayout = field(repr=False)
    #: the window: sorted decoder-layer indices that are trained
    layers: list[int]
    #: LoRA rank of each window layer (0 in full mode)
    layer_rank: int
    #: LoRA alpha of each window layer (after the alpha policy)
    lora_alpha: float
    #: target modules, relative to a decoder layer ([] for a bare layout or full mode)
    target_modules: list[str] = field(default_factory=list)
    trainable_params: int | None = None
    uniform_lora_params: int | None = None
    extra_trainable: list[str] = field(default_factory=list)
    #: things the user should know about this plan (printed in the summary, kept in plan.json)
    warnings: list[str] = field(default_factory=list)
    #: the budget-matched rank floor(r*L/n) (budget='serve' trains at or below it; None in full mode)
    matched_rank: int | None = None

    # ------------------------------------------------------------------ derived views
    @property
    def mode(self) -> str:
        return self.config.mode

    @property
    def baseline_rank(self) -> int:
        """Rank of the uniform-LoRA baseline whose budget is matched."""
        return self.config.rank

    @property
    def base_alpha(self) -> float:
        """Alpha of the uniform-LoRA baseline."""
        return self.config.base_alpha

    @property
    def ranks(self) -> dict[int, int]:
        """Layer -> rank for every window layer (``{}`` in full mode)."""
        return dict.fromkeys(self.layers, self.layer_rank) if self.mode == "lora" else {}

    @property
    def use_rslora(self) -> bool:
        return self.config.use_rslora

    @property
    def lora_dropout(self) -> float:
        return self.config.lora_dropout

    @property
    def num_layers(self) -> int:
        return self.layout.num_layers

    @property
    def architecture(self) -> str:
        return self.layout.architecture

    @property
    def model_type(self) -> str:
        return self.layout.model_type

    @property
    def layers_path(self) -> str:
        return self.layout.layers_path

    @property
    def layers_pattern(self) -> str:
        return self.layout.layers_pattern

    @property
    def full_params(self) -> int | None:
        return self.layout.full_params

    @property
    def largest_module_params(self) -> int | None:
        return self.layout.largest_module_params

    @property
    def fan_in_fan_out(self) -> bool:
        return self.layout.fan_in_fan_out(self.target_modules)

    @property
    def window(self) -> str:
        return describe_window(self.num_layers, self.layers)

    @property
    def first_layer(self) -> int:
        return self.layers[0]

    def layer_prefix(self, index: int) -> str:
        return self.layout.layer_prefix(index)

    # ------------------------------------------------------------------ products
    def lora_config(self, **overrides: Any):
        """A plain ``peft.LoraConfig`` that puts LoRA on the plan's layers only, at the plan's
        rank (so a saved adapter loads with PEFT alone, without this package)."""
        from peft import LoraConfig

        if self.mode != "lora":
            raise ValueError(f"lora_config needs a plan with mode='lora' (this plan has mode={self.mode!r}).")
        if not self.target_modules:
            raise ValueError("the plan has no resolved target modules; build it from a model or a model config.")
        kwargs: dict[str, Any] = dict(
            r=self.layer_rank,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            use_rslora=self.use_rslora,
            target_modules=list(self.target_modules),
            layers_to_transform=list(self.layers),
            layers_pattern=self.layers_pattern,
            bias="none",
            fan_in_fan_out=self.fan_in_fan_out,
            task_type="CAUSAL_LM",
        )
        kwargs.update(overrides)
        return LoraConfig(**kwargs)

    def serving_cost(self) -> dict[str, Any] | None:
        """LoRA serving cost per token under vLLM, against uniform LoRA at the baseline rank
        (``None`` in full mode or without module shapes). vLLM runs its LoRA kernels on every
        layer at the padded ``--max-lora-rank``, zeros outside the window included."""
        if self.mode != "lora":
            return None
        shapes = self.layout.has_shapes and bool(self.target_modules)
        widths = [
            (m.in_features, m.out_features)
            for layer in self.layout.linears
            for n, m in layer.items()
            if n in self.target_modules
        ]
        window_widths = [
            (m.in_features, m.out_features)
            for i in self.layers
            for n, m in (self.layout.linears[i] if shapes else {}).items()
            if n in self.target_modules
        ]
        padded, uniform_padded = vllm_max_lora_rank(self.layer_rank), vllm_max_lora_rank(self.baseline_rank)
        cost = lora_flops_per_token(padded, widths) if padded and shapes else None
        uniform = lora_flops_per_token(uniform_padded, widths) if uniform_padded and shapes else None
        return {
            "engine": "vllm",
            "max_lora_rank": padded,
            "lora_flops_per_token": cost,
            "uniform_max_lora_rank": uniform_padded,
            "uniform_lora_flops_per_token": uniform,
            "ratio_to_uniform": (cost / uniform) if cost and uniform else None,
            # what the window's own rank would cost on an engine that ran LoRA only where it is
            "window_only_lora_flops_per_token": lora_flops_per_token(self.layer_rank, window_widths)
            if shapes
            else None,
        }

    def to_json_dict(self) -> dict[str, Any]:
        """The plan as written to ``midblock/plan.json`` and printed by ``midblock plan --json``."""
        return {
            "architecture": self.architecture,
            "model_type": self.model_type,
            "num_layers": self.num_layers,
            "layers": list(self.layers),
            "window": self.window,
            "layers_path": self.layers_path,
            "layers_pattern": self.layers_pattern,
            "mode": self.mode,
            "baseline_rank": self.baseline_rank,
            "budget": self.config.budget,
            "matched_rank": self.matched_rank,
            "layer_rank": self.layer_rank,
            "ranks": {str(k): v for k, v in self.ranks.items()},
            "base_alpha": self.base_alpha,
            "lora_alpha": self.lora_alpha,
            "use_rslora": self.use_rslora,
            "target_modules": list(self.target_modules),
            "lora_dropout": self.lora_dropout,
            "fan_in_fan_out": self.fan_in_fan_out,
            "trainable_params": self.trainable_params,
            "uniform_lora_params": self.uniform_lora_params,
            "full_params": self.full_params,
            "largest_module_params": self.largest_module_params,
            "extra_trainable": list(self.extra_trainable),
            "quantization": self.layout.quantization,
            "warnings": list(self.warnings),
            "serving": self.serving_cost(),
            "midblock_config": self.config.to_dict(),
        }

    def summary(self) -> str:
        """A one-screen human summary of the plan."""
        lines = [
            f"midblock plan: {self.architecture} ({self.model_type}), L={self.num_layers} decoder layers at '{self.layers_path}'",
            f"  mode           {self.mode}",
            f"  window         layers {self.window} ({len(self.layers)} of {self.num_layers}: "
            f"{100 * self.layers[0] / self.num_layers:.0f}%-{100 * (self.layers[-1] + 1) / self.num_layers:.0f}% depth)",
        ]
        if self.mode == "lora":
            r = self.layer_rank
            scale = self.lora_alpha / (math.sqrt(r) if self.use_rslora else r)
            serve = (
                f"; budget 'serve': the largest vLLM rank <= the matched {self.matched_rank}"
                if self.config.budget == "serve"
                else ""
            )
            lines += [
                f"  target modules {', '.join(self.target_modules) or '(resolved when the model is known)'}",
                f"  ranks          {r} per active layer (uniform baseline r={self.baseline_rank}; "
                f"rank sum {r * len(self.layers)} vs {self.baseline_rank * self.num_layers}{serve})",
                f"  lora_alpha     {self.lora_alpha:g} (baseline {self.base_alpha:g}; scale {scale:.4g}"
                f"{', rsLoRA' if self.use_rslora else ''}), dropout {self.lora_dropout:g}",
            ]
            if self.use_rslora:
                lines.append(
                    "  serving        rsLoRA: llama.cpp and SGLang ignore use_rslora (they scale by alpha / r); "
                    "serve it to them through 'midblock export --target llama.cpp' or '--target sglang' "
                    "(folds the scale into lora_alpha)"
                )
        elif self.extra_trainable:
            lines.append(f"  also trained   {', '.join(self.extra_trainable)}")
        if self.layout.quantization:
            lines.append(
                f"  base           quantized ({self.layout.quantization}): QLoRA; counts are of real parameters"
            )
        if self.trainable_params is not None:
            full = self.full_params or 1
            lines.append(
                f"  trainable      {self.trainable_params:,} params ({100 * self.trainable_params / full:.3f}% of {full:,})"
            )
            if self.uniform_lora_params:
                lines.append(
                    f"  vs uniform     LoRA r={self.baseline_rank} on all layers: {self.uniform_lora_params:,} params "
                    f"(ratio {self.trainable_params / self.uniform_lora_params:.3f})"
                )
        cost = self.serving_cost()
        if cost is not None:
            lines.append(_serving_line(cost, self.baseline_rank))
        lines += [f"  warning        {w}" for w in self.warnings]
        return "\n".join(lines)


def _serving_line(cost: dict[str, Any], baseline_rank: int) -> str:
    if cost["max_lora_rank"] is None:
        return (
            f"  serving        vLLM: rank above its largest --max-lora-rank {VLLM_MAX_LORA_RANKS[-1]}; serve the merged model "
            "('midblock export --target merged') or use budget='serve'"
        )
    line = f"  serving        vLLM --max-lora-rank {cost['max_lora_rank']} (on every layer)"
    if cost["lora_flops_per_token"] is None:
        return line + f"; uniform r={baseline_rank}: --max-lora-rank {cost['uniform_max_lora_rank']}"
    line += f": {cost['lora_flops_per_token'] / 1e6:.4g} MFLOP/token of LoRA"
    if cost["uniform_lora_flops_per_token"]:
        line += (
            f" vs uniform r={baseline_rank} at --max-lora-rank {cost['uniform_max_lora_rank']}: "
            f"{cost['uniform_lora_flops_per_token'] / 1e6:.4g} (ratio {cost['ratio_to_uniform']:.3f})"
        )
    return line


# --------------------------------------------------------------------------- build


def _layer_count(model_or_config: Any) -> int:
    import torch.nn as nn

    if isinstance(model_or_config, ModelLayout):
        return model_or_config.num_layers
    if isinstance(model_or_config, nn.Module):
        from midblock_plugin.architecture import decoder_layers, unwrap

        config = getattr(unwrap(model_or_config), "config", None)
        return num_layers_from_config(config) if config is not None else len(decoder_layers(model_or_config))
    return num_layers_from_config(load_config(model_or_config))


def build_plan(
    model_or_config: Any = None, config: MidBlockConfig | None = None, *, num_layers: int | None = None
) -> MidBlockPlan:
    """Resolve ``config`` against a model (loaded, a transformers config, a model directory
    or hub id, or a :class:`~midblock_plugin.architecture.ModelLayout`), or against a bare
    layer count ``num_layers`` (no parameter counts; given with a model, it must be the model's
    depth). The window is resolved, and so validated, before anything heavy (the meta-device
    model) is built."""
    config = config or MidBlockConfig()
    if model_or_config is None:
        if num_layers is None:
            raise WindowError("build_plan needs a model, a model config, or num_layers.")
        layers = resolve_layers(num_layers, **config.window_kwargs())
        layout = ModelLayout.bare(num_layers)
    else:
        if not isinstance(model_or_config, ModelLayout) and not hasattr(model_or_config, "named_parameters"):
            model_or_config = load_config(model_or_config)  # a path is read once
        depth = _layer_count(model_or_config)
        if num_layers is not None and num_layers != depth:
            raise WindowOptionError(
                "num_layers",
                num_layers,
                f"contradicts the model, which has {depth} decoder layers (its config); give the model alone "
                "(its depth is read from its config) or the layer count alone, not both",
            )
        layers = resolve_layers(depth, **config.window_kwargs())
        layout = layout_of(model_or_config)
    return plan_for_layout(layout, config, layers)


def plan_for_layout(layout: ModelLayout, config: MidBlockConfig, layers: list[int] | None = None) -> MidBlockPlan:
    """The plan of ``config`` on ``layout`` (``layers`` if already resolved)."""
    check_quantized_full(config.mode, layout.quantization, error=WindowOptionError)
    layers = layers if layers is not None else resolve_layers(layout.num_layers, **config.window_kwargs())
    matched = matched_rank(config.rank, layout.num_layers, len(layers)) if config.mode == "lora" else None
    if config.mode == "lora":
        r = {"match": matched, "serve": serve_rank(matched)}.get(config.budget, config.rank)
        alpha = config.base_alpha
        if config.alpha_policy == "ratio":
            alpha *= math.sqrt(r / config.rank) if config.use_rslora else r / config.rank
    else:
        r, alpha = 0, config.base_alpha
    plan = MidBlockPlan(
        config=config,
        layout=layout,
        layers=layers,
        layer_rank=r,
        lora_alpha=float(round(alpha, 6)),
        matched_rank=matched,
    )
    if matched is not None and config.budget == "serve" and 2 * r <= matched:
        plan.warnings.append(
            f"budget 'serve' trains rank {r}, under half the matched rank {matched}: vLLM's --max-lora-rank sizes "
            f"are {', '.join(map(str, VLLM_MAX_LORA_RANKS))}; use budget='match' (served at the next size up) or a "
            "larger rank."
        )
    if layout.has_shapes:
        plan.target_modules = layout.target_modules(config.target_modules)
        plan.uniform_lora_params = sum(
            layout.lora_params(i, config.rank, plan.target_modules) for i in range(layout.num_layers)
        )
        if plan.mode == "lora":
            plan.trainable_params = sum(layout.lora_params(i, r, plan.target_modules) for i in layers)
            width, name = min(
                (min(m.in_features, m.out_features), n)
                for n, m in layout.linears[layers[0]].items()
                if n in plan.target_modules
            )
            if r > width:
                plan.warnings.append(
                    f"rank {r} per layer exceeds the width {width} of {name}: a LoRA update of it has rank at most "
                    f"{width}, so part of the budget is wasted; lower rank, widen the window or use budget='none'."
                )
        else:
            plan.trainable_params = sum(layout.layer_params[i] for i in layers)
            if config.train_final_norm:
                if layout.final_norm_name is None:
                    raise WindowError(
                        f"train_final_norm=True but no final norm was found in {layout.architecture}; turn it off."
                    )
                plan.trainable_params += layout.final_norm_params
                plan.extra_trainable.append("final norm")
            if config.train_embeddings:
                plan.trainable_params += layout.embedding_params
                plan.extra_trainable.append("input embeddings")
    return plan
