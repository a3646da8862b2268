"""The export targets: :data:`TARGETS`, one :class:`ExportTarget` per name, and what each engine needs.

:data:`TARGETS` is the only place a target's name is written: ``midblock export --target``'s
choices and help, the checks before any weight is loaded, the steps that rewrite the adapter,
the report's engine name and the serve command all read it. Adding a target is one entry at
the end of this file (with its step and serve functions, here too) and a row in
``docs/serving.md``.

What the engines read (their current source, read for this module):

* **TGI / LoRAX** - ``LoraWeights.prepare_weights`` / ``LoraWeights.load``
  (huggingface/text-generation-inference ``server/text_generation_server/adapters/lora.py``,
  predibase/lorax ``server/lorax_server/adapters/lora.py``) loop over *every* layer of a module
  type and ``return None`` as soon as one layer has no ``lora_A``/``lora_B`` for it: the whole
  module type of the adapter is dropped, with only a log line about unused adapter weights. They
  stack the per-layer matrices, so every layer needs the same rank. Scaling: ``alpha / r``, or
  ``alpha / sqrt(r)`` with ``use_rslora`` (``get_scaling_factor``). Hence :func:`pad_every_layer`.
* **vLLM** - ``PEFTHelper`` (vllm-project/vllm ``vllm/lora/peft_helper.py``) reads ``r``,
  ``lora_alpha``, ``target_modules`` (required), ``use_rslora`` (honoured), ``use_dora`` and
  ``modules_to_save`` (refused); missing layers are zero-filled. ``--max-lora-rank`` must be one of
  ``MaxLoRARanks`` (``vllm/config/lora.py``): :mod:`midblock_plugin.serving`.
* **SGLang** - ``LoRAAdapter.__init__`` (sgl-project/sglang ``python/sglang/srt/lora/lora.py``) sets
  ``scaling = lora_alpha / r`` and ``LoRAConfig`` (``lora_config.py``) reads ``target_modules``,
  ``r`` and ``lora_alpha`` only: ``use_rslora`` is ignored. Missing weights are zero-filled
  (``load_lora_weight_to_buffer`` in ``python/sglang/srt/lora/mem_pool.py``). Hence :func:`fold_rslora`.
* **llama.cpp** - ``convert_lora_to_gguf.py`` (ggml-org/llama.cpp) reads ``lora_alpha`` (and
  ``base_model_name_or_path`` without ``--base``) from ``adapter_config.json``, and from
  ``adapter_model.safetensors`` (else ``adapter_model.bin``) only ``*.lora_A.weight`` /
  ``*.lora_B.weight`` pairs (``base_model.model.`` stripped to the base tensor name; any other tensor
  but a norm stops it). At run time ``llama_adapter_lora_weight::get_scale`` (``src/llama-adapter.h``)
  scales by ``alpha / rank``: no rsLoRA. Hence :func:`fold_rslora` and :func:`check_llamacpp_readable`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from midblock_plugin.export.source import LORA_SUFFIXES, PEFT_PREFIX, AdapterSource, lora_modules
from midblock_plugin.rules import OptionError, check_vllm_rank
from midblock_plugin.serving import VLLM_MAX_LORA_RANKS, lora_flops_per_token, vllm_max_lora_rank


@dataclass
class AdapterExport:
    """One adapter export in progress: what a target's steps read and rewrite, in place."""

    target: ExportTarget
    source: AdapterSource
    tensors: dict[str, Any]
    config: dict[str, Any]
    report: dict[str, Any]
    log: Callable[[str], None]


@dataclass(frozen=True)
class ExportTarget:
    """One ``--target`` of ``midblock export``: everything that differs between targets."""

    name: str = field(metadata={"help": "the --target value (the key of TARGETS)"})
    engine: str = field(metadata={"help": "the engine(s) that load the export, as reports and errors name them"})
    summary: str = field(
        metadata={"help": "what the export does, in one line: --target's help (docs/serving.md says it at length)"}
    )
    serve: Callable[[str, str, dict[str, Any]], str] = field(
        metadata={"help": "(output directory, base model, report) -> the command that serves or converts the export"}
    )
    steps: tuple[Callable[[AdapterExport], None], ...] = field(
        default=(),
        metadata={
            "help": "what rewrites the adapter's tensors and config for the engine, in order (each "
            "may add to the report and log a line); none: the adapter is written unchanged"
        },
    )
    limits: Callable[[AdapterSource, ExportTarget], None] | None = field(
        default=None,
        metadata={
            "help": "the engine's own limits, checked before any weight is loaded (every adapter "
            "target also gets check_servable's: no DoRA, modules_to_save, bias, ...)"
        },
    )
    merges: bool = field(
        default=False,
        metadata={
            "help": "the export is the base with the adapter merged in (a model, not an adapter, "
            "loaded by any engine); --dtype and --max-shard-size apply to it"
        },
    )

    def __post_init__(self) -> None:
        if self.merges and (self.steps or self.limits):
            raise ValueError(
                f"export target {self.name!r}: a merging target writes a model, not an adapter; its "
                "steps and limits would never run. Drop them or set merges=False."
            )


def target_names() -> tuple[str, ...]:
    """The ``--target`` values, read from :data:`TARGETS` when called."""
    return tuple(TARGETS)


def target_help() -> str:
    """``--target``'s help: one line per target, from :data:`TARGETS`."""
    return "; ".join(f"{name}: {t.summary}" for name, t in TARGETS.items())


def get_target(name: Any) -> ExportTarget:
    """The :class:`ExportTarget` called ``name``, or a ``ValueError`` naming the choices."""
    spec = TARGETS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ValueError(f"--target {name!r} is not a target; choose one of {', '.join(TARGETS)}.")
    return spec


def merging_targets() -> tuple[str, ...]:
    """The targets that write a merged model (what an adapter an engine refuses can still become)."""
    return tuple(name for name, t in TARGETS.items() if t.merges)


# --------------------------------------------------------------------------- what an engine refuses


def check_servable(source: AdapterSource, target: str) -> None:
    """Refuse, before any weight is loaded, an adapter the target engine cannot load as it is."""
    spec = get_target(target)
    if spec.merges:
        return
    cfg = source.config
    problems = []
    if cfg.get("use_dora"):
        problems.append("use_dora: true (DoRA)")
    if cfg.get("modules_to_save"):
        problems.append(f"modules_to_save {cfg['modules_to_save']}")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        problems.append("per-module ranks or alphas (rank_pattern / alpha_pattern)")
    if cfg.get("bias", "none") != "none":
        problems.append(f"bias={cfg.get('bias')!r}")
    if not isinstance(source.config.get("r"), int):
        problems.append(f"a non-integer rank r={cfg.get('r')!r}")
    if problems:
        raise ValueError(
            f"--target {spec.name}: the adapter has {'; '.join(problems)}, which {spec.engine} does not serve as a "
            f"LoRA adapter; {_merged_advice()}."
        )
    if spec.limits is not None:
        spec.limits(source, spec)


def _merged_advice() -> str:
    names = merging_targets()
    if not names:
        return "merge it into the base model (PeftModel.merge_and_unload) and serve the model"
    return (
        f"use --target {' or --target '.join(names)} (the base with the adapter merged in), which every engine loads"
    )


def vllm_rank_limit(source: AdapterSource, spec: ExportTarget) -> None:
    """vLLM starts only with a ``--max-lora-rank`` of :data:`~midblock_plugin.serving.VLLM_MAX_LORA_RANKS`."""
    try:
        check_vllm_rank(source.rank)
    except OptionError as exc:
        raise ValueError(
            f"--target {spec.name}: the adapter has rank {source.rank}, which {exc.rule}; {_merged_advice()}."
        ) from None


# --------------------------------------------------------------------------- transformations


def pad_every_layer(tensors: dict[str, Any], source: AdapterSource) -> tuple[dict[str, Any], int]:
    """TGI / LoRAX: add zero ``lora_A`` / ``lora_B`` (same rank) for every layer and target
    module the adapter lacks, so no module type is dropped. Returns the tensors and how many
    (layer, module) pairs were added."""
    import torch

    layout = source.layout
    found, rels = lora_modules(tensors, layout)
    if not rels:
        raise ValueError(
            f"{source.path}: no LoRA tensor lies in the decoder layers at '{layout.layers_path}'; nothing to pad."
        )
    r = source.rank
    dtype = next(iter(tensors.values())).dtype
    out = dict(tensors)
    added = 0
    for index in range(layout.num_layers):
        for rel in rels:
            if (index, rel) in found:
                continue
            lin = layout.linears[index].get(rel)
            if lin is None:
                raise ValueError(
                    f"layer {index} of the base model has no module {rel!r}; TGI/LoRAX need the same "
                    "modules in every layer."
                )
            module = f"{PEFT_PREFIX}{layout.layers_path}.{index}.{rel}"
            out[module + LORA_SUFFIXES[0]] = torch.zeros(r, lin.in_features, dtype=dtype)
            out[module + LORA_SUFFIXES[1]] = torch.zeros(lin.out_features, r, dtype=dtype)
            added += 1
    return out, added


def unwindowed_config(config: dict[str, Any]) -> dict[str, Any]:
    """The adapter config without the window keys (the tensors then cover every layer)."""
    out = dict(config)
    out["layers_to_transform"] = None
    out["layers_pattern"] = None
    return out


def fold_rslora(config: dict[str, Any]) -> dict[str, Any]:
    """rsLoRA scales by ``alpha / sqrt(r)``; SGLang and llama.cpp by ``alpha / r``. The same
    update under plain scaling needs ``alpha' = alpha * sqrt(r)`` and ``use_rslora: false``."""
    out = dict(config)
    if out.get("use_rslora"):
        out["lora_alpha"] = float(out["lora_alpha"]) * math.sqrt(int(out["r"]))
        out["use_rslora"] = False
    return out


# --------------------------------------------------------------------------- advice


def _baseline_rank(source: AdapterSource) -> int | None:
    """The uniform-LoRA rank the adapter was budget-matched to, from the ``midblock/plan.json``
    midblock writes beside a trained adapter (``None`` if absent)."""
    from midblock_plugin.io import PLAN_JSON, read_json

    for candidate in (source.path / PLAN_JSON, source.path.parent / PLAN_JSON):
        try:
            rank = read_json(candidate).get("baseline_rank")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(rank, int) and rank > 0:
            return rank
    return None


def vllm_advice(source: AdapterSource, tensors: dict[str, Any]) -> dict[str, Any]:
    """The ``--max-lora-rank`` to pass and what the adapter costs per token under vLLM."""
    layout = source.layout
    found, rels = lora_modules(tensors, layout)
    layers = sorted({i for i, _ in found})
    padded = vllm_max_lora_rank(source.rank)
    every = [
        (layout.linears[i][m].in_features, layout.linears[i][m].out_features)
        for i in range(layout.num_layers)
        for m in rels
        if m in layout.linears[i]
    ]
    window = [(layout.linears[i][m].in_features, layout.linears[i][m].out_features) for i, m in found]
    cost = lora_flops_per_token(padded, every)
    advice: dict[str, Any] = {
        "max_lora_rank": padded,
        "adapter_rank": source.rank,
        "layers_with_lora": layers,
        "lora_flops_per_token": cost,
        "window_only_lora_flops_per_token": lora_flops_per_token(source.rank, window),
    }
    note = (
        f"vLLM runs its LoRA kernels on all {layout.num_layers} layers at --max-lora-rank {padded} (zeros outside "
        f"layers {layers[0]}-{layers[-1]}): {cost / 1e6:.4g} MFLOP/token of LoRA"
    )
    baseline = _baseline_rank(source)
    if baseline is not None and vllm_max_lora_rank(baseline):
        uniform_rank = vllm_max_lora_rank(baseline)
        uniform = lora_flops_per_token(uniform_rank, every)
        advice.update(
            uniform_rank=baseline,
            uniform_max_lora_rank=uniform_rank,
            uniform_lora_flops_per_token=uniform,
            ratio_to_uniform=cost / uniform,
        )
        note += (
            f", {cost / uniform:.3g}x uniform LoRA r={baseline} (--max-lora-rank {uniform_rank}: "
            f"{uniform / 1e6:.4g} MFLOP/token)"
        )
    if padded != source.rank:
        note += (
            f". Rank {source.rank} is not a vLLM size; training with --budget serve picks "
            f"{max(s for s in VLLM_MAX_LORA_RANKS if s <= source.rank)}, served without padding"
        )
    advice["note"] = note + "."
    return advice


def check_llamacpp_readable(tensors: dict[str, Any], config: dict[str, Any], base_parameter_names: set[str]) -> int:
    """What ``convert_lora_to_gguf.py`` reads, checked without running it: ``lora_alpha`` is a
    number, every tensor is half of a ``lora_A``/``lora_B`` pair, and each pair names a weight of
    the base model (after stripping ``base_model.model.``, as its ``get_base_tensor_name`` does).
    Returns the number of pairs."""
    alpha = config.get("lora_alpha")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise ValueError(f"llama.cpp's converter reads lora_alpha as a number; adapter_config.json has {alpha!r}.")
    pairs: dict[str, set[str]] = {}
    for name in tensors:
        kind = next((s for s in LORA_SUFFIXES if name.endswith(s)), None)
        if kind is None:
            raise ValueError(
                f"llama.cpp's converter stops on {name!r}: it reads only *.lora_A.weight / *.lora_B.weight."
            )
        base_name = name[: -len(kind)].replace(PEFT_PREFIX, "", 1) + ".weight"
        pairs.setdefault(base_name, set()).add(kind)
    for base_name, kinds in pairs.items():
        if len(kinds) != 2:
            raise ValueError(f"llama.cpp's converter needs both lora_A and lora_B for {base_name}.")
        if base_name not in base_parameter_names:
            raise ValueError(
                f"llama.cpp's converter maps the pair to {base_name!r}, which the base model does not have."
            )
    return len(pairs)


# --------------------------------------------------------------------------- steps (what a target does to the adapter)


def step_pad_every_layer(work: AdapterExport) -> None:
    """TGI / LoRAX: zero matrices for every layer outside the window, no ``layers_to_transform``."""
    work.tensors, added = pad_every_layer(work.tensors, work.source)
    work.config = unwindowed_config(work.config)
    work.report["padded_layer_modules"] = added
    work.log(
        f"{work.target.name}: added zero LoRA matrices for {added} (layer, module) pairs outside the window, so "
        f"{work.target.engine} keeps every module type; layers_to_transform removed from the config."
    )


def step_fold_rslora(work: AdapterExport) -> None:
    """SGLang / llama.cpp: rsLoRA folded into ``lora_alpha`` (they scale by ``alpha / r``)."""
    work.report["rslora_folded"] = bool(work.config.get("use_rslora"))
    work.config = fold_rslora(work.config)
    if work.report["rslora_folded"]:
        work.log(
            f"{work.target.name}: rsLoRA folded into alpha: lora_alpha {work.source.alpha:g} -> "
            f"{work.config['lora_alpha']:.6g} (alpha * sqrt(r), r={work.source.rank}), use_rslora false."
        )


def step_check_llamacpp(work: AdapterExport) -> None:
    """llama.cpp: the tensors and config hold what ``convert_lora_to_gguf.py`` reads."""
    from midblock_plugin.architecture import meta_model

    names = {n for n, _ in meta_model(work.source.base_config).named_parameters()}
    work.report["llama_cpp_pairs"] = check_llamacpp_readable(work.tensors, work.config, names)
    work.log(
        f"{work.target.name}: {work.report['llama_cpp_pairs']} lora_A/lora_B pairs, each naming a base weight, "
        "and a numeric lora_alpha: what convert_lora_to_gguf.py reads."
    )


def step_vllm_advice(work: AdapterExport) -> None:
    """vLLM: the adapter unchanged; the ``--max-lora-rank`` to pass, in ``report["vllm"]``."""
    work.report["vllm"] = vllm_advice(work.source, work.tensors)
    work.log(
        f"{work.target.name}: pass --max-lora-rank {work.report['vllm']['max_lora_rank']}. "
        f"{work.report['vllm']['note']}"
    )


# --------------------------------------------------------------------------- how to serve it


def serve_vllm(out: str, base: str, report: dict[str, Any]) -> str:
    rank = report.get("vllm", {}).get("max_lora_rank", 16)
    return f"vllm serve {base} --enable-lora --lora-modules midblock={out} --max-lora-rank {rank}"


def serve_sglang(out: str, base: str, report: dict[str, Any]) -> str:
    return f"python -m sglang.launch_server --model-path {base} --enable-lora --lora-paths midblock={out}"


def serve_tgi(out: str, base: str, report: dict[str, Any]) -> str:
    return (
        f"text-generation-launcher --model-id {base} --lora-adapters midblock={out}"
        '   # then request with parameters.adapter_id = "midblock"'
    )


def serve_lorax(out: str, base: str, report: dict[str, Any]) -> str:
    return (
        f'lorax-launcher --model-id {base}   # then request with parameters.adapter_id = "{out}", '
        'adapter_source = "local"'
    )


def serve_llamacpp(out: str, base: str, report: dict[str, Any]) -> str:
    return (
        f"python convert_lora_to_gguf.py {out} --base {base} --outfile {out}/midblock-lora-f16.gguf "
        f"--outtype f16   # in a llama.cpp checkout; then: llama-server -m BASE.gguf --lora "
        f"{out}/midblock-lora-f16.gguf"
    )


def serve_merged(out: str, base: str, report: dict[str, Any]) -> str:
    return f"vllm serve {out}   # or any engine / AutoModelForCausalLM.from_pretrained({out!r})"


# --------------------------------------------------------------------------- the table


#: Every ``--target`` of ``midblock export``, by name (the only place a target's name is written).
TARGETS: dict[str, ExportTarget] = {
    t.name: t
    for t in (
        ExportTarget(
            "vllm",
            "vLLM",
            "the adapter unchanged, with the --max-lora-rank to pass and its cost per token",
            serve_vllm,
            steps=(step_vllm_advice,),
            limits=vllm_rank_limit,
        ),
        ExportTarget(
            "sglang",
            "SGLang",
            "rsLoRA folded into alpha (SGLang scales by alpha / r)",
            serve_sglang,
            steps=(step_fold_rslora,),
        ),
        ExportTarget(
            "tgi",
            "TGI (text-generation-inference)",
            "every layer padded with zero LoRA matrices (TGI drops a module type that one layer lacks)",
            serve_tgi,
            steps=(step_pad_every_layer,),
        ),
        ExportTarget("lorax", "LoRAX", "as tgi (the same loader)", serve_lorax, steps=(step_pad_every_layer,)),
        ExportTarget(
            "llama.cpp",
            "llama.cpp",
            "rsLoRA folded into alpha, checked against what convert_lora_to_gguf.py reads",
            serve_llamacpp,
            steps=(step_fold_rslora, step_check_llamacpp),
        ),
        ExportTarget(
            "merged",
            "any engine (a merged model)",
            "the base with the adapter merged in (PEFT's merge_and_unload), saved in --dtype as sharded safetensors",
            serve_merged,
            merges=True,
        ),
    )
}
