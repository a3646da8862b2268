"""Where the layers are in a model: the one place that knows Hugging Face model layouts.

A :class:`ModelLayout` is computed once from a config, a model directory or a loaded
model, and handed to whoever needs it (the plan, the adapters, the training hooks, the
analysis). It holds the layer count, the dotted path of the decoder stack (and PEFT's
``layers_pattern``), the linear projections of every layer with their shapes, the
final norm and the parameter counts. Nothing else in the package looks for layer stacks,
norms or projections by name.

>>> from midblock_plugin.testing import tiny_config
>>> layout = ModelLayout.from_config(tiny_config("llama", num_layers=4))
>>> layout.num_layers, layout.layers_path, layout.layers_pattern
(4, 'model.layers', 'layers')
>>> layout.target_modules("attention")
['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj', 'self_attn.o_proj']
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

from midblock_plugin.window import WindowError


#: Attribute names of the layer count, in the order they are tried.
NUM_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
#: Nested configs of multimodal / composite models that hold the text decoder.
NESTED_CONFIG_KEYS = ("text_config", "language_config", "llm_config", "decoder")

#: Dotted paths of the decoder layer list, tried in order. The last component is the
#: ``layers_pattern`` PEFT needs.
DECODER_LAYER_PATHS = (
    "model.layers",  # Llama, Qwen2/3, Mistral, Gemma, OLMo2, Phi3 (CausalLM wrapper)
    "layers",  # the bare base model
    "model.language_model.layers",  # multimodal (Gemma3, Llava, ...)
    "language_model.model.layers",
    "language_model.layers",
    "transformer.h",  # GPT-2, GPT-J, Falcon, Bloom
    "h",
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "model.decoder.layers",  # OPT
    "decoder.layers",
    "transformer.blocks",  # MPT
    "blocks",
)

#: Attribute names of the final norm on the module that holds the decoder stack.
FINAL_NORM_NAMES = ("norm", "final_layer_norm", "ln_f", "final_layernorm", "norm_f", "final_norm")

#: Name fragments that put a module (or parameter) inside a decoder layer into a group.
ATTENTION_HINTS = ("attn", "attention")
MLP_HINTS = ("mlp", "feed_forward", "ffn", "moe", "experts", "fc1", "fc2")


# --------------------------------------------------------------------------- configs


def _get(config: Any, key: str) -> Any:
    if isinstance(config, dict):
        return config.get(key)
    return getattr(config, key, None)


def num_layers_from_config(config: Any) -> int:
    """Number of decoder layers of a Hugging Face config (object or dict).

    Tries ``num_hidden_layers``, ``n_layer``, ``num_layers``, ``n_layers`` on the config
    and then on a nested ``text_config`` (multimodal models) and similar.
    """
    for key in NUM_LAYER_KEYS:
        value = _get(config, key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    for nested in NESTED_CONFIG_KEYS:
        sub = _get(config, nested)
        if sub is not None:
            try:
                return num_layers_from_config(sub)
            except WindowError:
                pass
    name = _get(config, "model_type") or type(config).__name__
    raise WindowError(
        f"cannot find the number of decoder layers in the config of {name!r}: none of "
        f"{', '.join(NUM_LAYER_KEYS)} is set (also looked in {', '.join(NESTED_CONFIG_KEYS)}). "
        "Pass the layer count explicitly (num_layers=N / --num-layers N)."
    )


def load_config(model_or_path: Any, **kwargs: Any) -> Any:
    """A transformers config from a config object, a model directory / hub id, or a model."""
    if isinstance(model_or_path, (str, os.PathLike)):
        from transformers import AutoConfig

        path = str(model_or_path)
        if os.path.isdir(path) and not os.path.exists(os.path.join(path, "config.json")):
            raise FileNotFoundError(f"{path!r} has no config.json; give a Hugging Face model directory.")
        return AutoConfig.from_pretrained(path, **kwargs)
    return getattr(model_or_path, "config", model_or_path)


def check_decoder(config: Any, shown: str = "the model", *, trust_remote_code: bool = False) -> None:
    """``config`` is a decoder-only causal LM that transformers can build and midblock can count layers of."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    from midblock_plugin.compat import causal_lm_class

    model_type = getattr(config, "model_type", None) or type(config).__name__
    arch = ", ".join(getattr(config, "architectures", None) or []) or type(config).__name__
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(
            f"{shown} is an encoder-decoder model ({model_type}: {arch}); midblock tunes decoder-only causal "
            "language models (Llama, Qwen, OLMo, Mistral, Gemma, Phi, GPT-2, ...)."
        )
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False):
        raise ValueError(
            f"{shown} is an encoder ({model_type}: {arch}, a masked language model), not a decoder; midblock tunes "
            'decoder-only causal language models. (A config with "is_decoder": true is accepted.)'
        )
    custom = bool((getattr(config, "auto_map", None) or {}).get("AutoModelForCausalLM")) and trust_remote_code
    if causal_lm_class(config) is None and not custom:
        raise ValueError(
            f"{shown} ({model_type}: {arch}) has no causal-LM class in transformers (AutoModelForCausalLM does not "
            "support it); midblock tunes decoder-only causal language models."
        )
    try:
        num_layers_from_config(config)
    except WindowError as exc:
        raise ValueError(f"{shown}: {exc}") from None


def meta_model(config: Any) -> Any:
    """A shape-only (meta-device) causal LM of ``config``: no weights, no memory."""
    import torch
    from transformers import AutoModelForCausalLM

    from midblock_plugin.compat import causal_lm_class

    cfg = config
    if hasattr(cfg, "quantization_config"):
        cfg = cfg.__class__.from_dict({k: v for k, v in cfg.to_dict().items() if k != "quantization_config"})
    cls = causal_lm_class(cfg)
    with torch.device("meta"):
        # Constructing the class directly (not from_config) keeps an active ZeRO-3 config from
        # partitioning this shape-only copy.
        return cls(cfg) if cls is not None else AutoModelForCausalLM.from_config(cfg)


# --------------------------------------------------------------------------- models


def unwrap(model: Any) -> Any:
    """Peel PEFT / DeepSpeed / DDP wrappers down to the transformers model."""
    for _ in range(8):
        if hasattr(model, "get_base_model") and callable(model.get_base_model):
            model = model.get_base_model()
        elif hasattr(model, "module") and not hasattr(model, "config"):
            model = model.module
        else:
            break
    return model


def walk(obj: Any, dotted: str) -> Any:
    """``obj.a.b.c`` for ``"a.b.c"`` (``None`` when a step is missing; ``""`` is ``obj``)."""
    for part in filter(None, dotted.split(".")):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def find_decoder_layers(model: Any) -> tuple[str, Any]:
    """Return ``(dotted_path, module_list)`` of the decoder layer stack of ``model``
    (relative to the unwrapped transformers model)."""
    import torch.nn as nn

    base = unwrap(model)
    for path in DECODER_LAYER_PATHS:
        layers = walk(base, path)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return path, layers
    raise WindowError(
        f"cannot locate the decoder layers of {type(base).__name__}: none of "
        f"{', '.join(DECODER_LAYER_PATHS)} is an nn.ModuleList. Supported are decoder-only "
        "Hugging Face models; for another layout pass explicit target modules or open an issue."
    )


def decoder_layers(model: Any) -> Any:
    """The decoder layer ``ModuleList`` of ``model``."""
    return find_decoder_layers(model)[1]


def final_norm(model: Any) -> tuple[str | None, Any]:
    """``(dotted name, module)`` of the norm applied after the last decoder layer, or
    ``(None, None)`` when the model has none under a known name."""
    import torch.nn as nn

    base = unwrap(model)
    path, _ = find_decoder_layers(base)
    parent = path.rsplit(".", 1)[0] if "." in path else ""
    holder = walk(base, parent)
    for name in FINAL_NORM_NAMES:
        mod = getattr(holder, name, None)
        if isinstance(mod, nn.Module):
            return (f"{parent}.{name}" if parent else name), mod
    return None, None


def backbone(model: Any) -> Any:
    """The module that runs the decoder stack (the model without its LM head)."""
    base = unwrap(model)
    path, _ = find_decoder_layers(base)
    parent = path.rsplit(".", 1)[0] if "." in path else ""
    return walk(base, parent)


def projection_group(name: str) -> str:
    """``"attn"``, ``"mlp"`` or ``"other"``: the group of a module or parameter named
    ``name`` inside a decoder layer (e.g. ``self_attn.q_proj``, ``mlp.c_fc.weight``)."""
    low = name.lower()
    if any(h in low for h in ATTENTION_HINTS):
        return "attn"
    if any(h in low for h in MLP_HINTS):
        return "mlp"
    return "other"


def is_linear(module: Any) -> bool:
    import torch.nn as nn

    if isinstance(module, nn.Linear):
        return True
    return type(module).__name__ == "Conv1D"  # transformers' GPT-2 projection (PEFT supports it)


def param_shape(p: Any) -> tuple[int, ...]:
    """The shape a parameter stands for: ``ds_shape`` under ZeRO-3, the unpacked shape of a
    bitsandbytes 4-bit weight (``Params4bit`` stores two 4-bit values per byte, as a
    ``(numel / 2, 1)`` tensor; its ``quant_state`` keeps the real shape), else its own."""
    shape = getattr(p, "ds_shape", None)
    if not shape:
        shape = getattr(getattr(p, "quant_state", None), "shape", None)
    return tuple(int(n) for n in (shape or p.shape))


def in_out_features(module: Any) -> tuple[int, int]:
    """``(in, out)`` of a linear module (``ds_shape`` under ZeRO-3, the unpacked shape of a
    4-bit weight; Conv1D stores ``(in, out)``)."""
    shape = param_shape(module.weight)
    if type(module).__name__ == "Conv1D":
        return int(shape[0]), int(shape[1])
    return int(shape[1]), int(shape[0])


def linear_modules(layer: Any) -> dict[str, Any]:
    """Relative name -> linear module, for every linear leaf of one decoder layer."""
    return {name: mod for name, mod in layer.named_modules() if name and is_linear(mod)}


def param_numel(p: Any) -> int:
    """Element count of one parameter: ``ds_numel`` for a ZeRO-3 partitioned one, the
    unpacked count of a bitsandbytes 4-bit weight (whose own ``numel()`` is half of it)."""
    ds = int(getattr(p, "ds_numel", 0) or 0)
    if ds:
        return ds
    shape = getattr(getattr(p, "quant_state", None), "shape", None)
    return math.prod(int(n) for n in shape) if shape is not None else p.numel()


def numel(params: Iterable[Any]) -> int:
    """Element count of parameters (``ds_numel`` for ZeRO-3 partitioned ones, unpacked for 4-bit ones)."""
    return sum(param_numel(p) for p in params)


#: bitsandbytes parameter classes -> the quantization they hold
BNB_PARAM_CLASSES = {"Params4bit": "bnb-4bit", "Int8Params": "bnb-8bit"}


def param_quantization(p: Any) -> str | None:
    """``"bnb-4bit"`` / ``"bnb-8bit"`` for a bitsandbytes-quantized weight, else ``None``."""
    kind = BNB_PARAM_CLASSES.get(type(p).__name__)
    if kind == "bnb-4bit" and not getattr(p, "bnb_quantized", True):
        return None  # not quantized yet (before the weights reached the device)
    return kind


def config_quantization(config: Any) -> tuple[str | None, tuple[str, ...]]:
    """``(kind, modules bitsandbytes leaves in full precision)`` from a transformers config's
    ``quantization_config`` (a dict or a ``BitsAndBytesConfig``): ``("bnb-4bit", ...)``,
    ``("bnb-8bit", ...)``, or ``(None, ())`` for no or another quantization method."""
    qc = _get(config, "quantization_config")
    if qc is None:
        return None, ()
    if not isinstance(qc, dict):
        qc = qc.to_dict() if hasattr(qc, "to_dict") else vars(qc)
    method = str(getattr(qc.get("quant_method"), "value", qc.get("quant_method")) or "bitsandbytes")
    if method != "bitsandbytes":
        return None, ()
    kind = "bnb-4bit" if qc.get("load_in_4bit") else "bnb-8bit" if qc.get("load_in_8bit") else None
    return kind, tuple(qc.get("llm_int8_skip_modules") or ())


def is_peft_wrapped(model: Any) -> bool:
    return hasattr(model, "peft_config") or any("lora_" in n for n, _ in model.named_parameters())


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Linear:
    """One linear projection inside a decoder layer."""

    in_features: int
    out_features: int
    conv1d: bool = False  # transformers' Conv1D (weight stored transposed: PEFT's fan_in_fan_out)


@dataclass(frozen=True)
class ModelLayout:
    """The structure of one decoder model, as the plan and the hooks need it.

    Built by :meth:`from_config`, :meth:`from_pretrained`, :meth:`from_model` (or
    :func:`layout_of` for any of them), or :meth:`bare` for a layer count alone.
    """

    num_layers: int
    layers_path: str = "model.layers"
    architecture: str = "unknown"
    model_type: str = "unknown"
    #: per layer: relative module name -> shape (empty for a bare layout)
    linears: tuple[dict[str, Linear], ...] = field(default=(), repr=False)
    final_norm_name: str | None = None
    full_params: int | None = None
    largest_module_params: int | None = None
    #: per layer: parameter count of the whole decoder layer (full-mode counts)
    layer_params: tuple[int, ...] = field(default=(), repr=False)
    final_norm_params: int = 0
    embedding_params: int = 0
    #: ``"bnb-4bit"`` / ``"bnb-8bit"`` for a bitsandbytes-quantized base (QLoRA), else ``None``
    quantization: str | None = None
    #: how many of ``full_params`` are stored quantized (the decoder's linear weights)
    quantized_params: int = 0

    # ------------------------------------------------------------------ builders
    @classmethod
    def bare(cls, num_layers: int) -> "ModelLayout":
        """A layout that knows only the layer count (no shapes, no parameter counts)."""
        return cls(num_layers=num_layers)

    @classmethod
    def from_config(cls, config: Any) -> "ModelLayout":
        """From a transformers config: a meta-device model is built to read shapes (after
        :func:`check_decoder` refused encoder-decoder and encoder models with a clear message)."""
        check_decoder(
            config,
            f"the model {getattr(config, '_name_or_path', '') or getattr(config, 'model_type', '')!r}",
            trust_remote_code=True,
        )
        return cls._from_module(meta_model(config), config, shapes_only=True)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs: Any) -> "ModelLayout":
        """From a model directory or hub id (``config.json`` only, no weights)."""
        return cls.from_config(load_config(path, **kwargs))

    @classmethod
    def from_model(cls, model: Any) -> "ModelLayout":
        """From a loaded model. A PEFT-wrapped model is read through a clean meta copy of
        its config, so the shapes are the base model's."""
        base = unwrap(model)
        config = getattr(base, "config", None)
        if is_peft_wrapped(model) and config is not None:
            return cls.from_config(config)
        return cls._from_module(base, config)

    @classmethod
    def _from_module(cls, model: Any, config: Any, shapes_only: bool = False) -> "ModelLayout":
        """``shapes_only``: ``model`` is the meta-device copy of ``config`` (no quantized weights;
        a bitsandbytes ``quantization_config`` in ``config`` says which would be quantized)."""
        base = unwrap(model)
        path, layer_list = find_decoder_layers(base)
        num_layers = num_layers_from_config(config) if config is not None else len(layer_list)
        if num_layers != len(layer_list):
            raise WindowError(
                f"the config of {type(base).__name__} says {num_layers} layers but '{path}' holds "
                f"{len(layer_list)}; fix num_hidden_layers in config.json."
            )
        arch = (getattr(config, "architectures", None) or [None])[0] or type(base).__name__
        linears = tuple(
            {
                n: Linear(*in_out_features(m), conv1d=type(m).__name__ == "Conv1D")
                for n, m in linear_modules(layer).items()
            }
            for layer in layer_list
        )
        norm_name, norm = final_norm(base)
        emb = base.get_input_embeddings() if hasattr(base, "get_input_embeddings") else None
        return cls(
            num_layers=num_layers,
            layers_path=path,
            architecture=arch,
            model_type=getattr(config, "model_type", None) or "unknown",
            linears=linears,
            final_norm_name=norm_name,
            full_params=numel(dict.fromkeys(p for n, p in base.named_parameters() if "lora_" not in n)),
            # the largest single module's own parameters: what ZeRO-3 gathers at once (DeepSpeed's rule)
            largest_module_params=max((numel(m.parameters(recurse=False)) for m in base.modules()), default=0),
            layer_params=tuple(numel(layer.parameters()) for layer in layer_list),
            final_norm_params=numel(norm.parameters()) if norm is not None else 0,
            embedding_params=numel(emb.parameters()) if emb is not None else 0,
            **_quantized_counts(base, config, shapes_only),
        )

    # ------------------------------------------------------------------ queries
    @property
    def layers_pattern(self) -> str:
        """PEFT's ``layers_pattern``: the attribute name of the layer list."""
        return self.layers_path.rsplit(".", 1)[-1]

    @property
    def has_shapes(self) -> bool:
        return bool(self.linears)

    def layer_prefix(self, index: int) -> str:
        """Parameter-name prefix of layer ``index`` on the unwrapped model."""
        return f"{self.layers_path}.{index}."

    def layer_index(self, param_name: str) -> int | None:
        """The decoder layer a (possibly wrapped) parameter name belongs to, or ``None``."""
        marker = f"{self.layers_pattern}."
        if param_name.startswith(marker):
            rest = param_name[len(marker) :]
        else:
            pos = param_name.find("." + marker)
            if pos < 0:
                return None
            rest = param_name[pos + 1 + len(marker) :]
        head = rest.split(".", 1)[0]
        return int(head) if head.isdigit() else None

    def target_modules(self, spec: str | list[str]) -> list[str]:
        """Target-module names, relative to a decoder layer, for a preset or an explicit list.

        Names are the layer-relative dotted paths (``self_attn.q_proj``; ``attn.c_proj`` on
        GPT-2, where the MLP also has a ``c_proj``), which PEFT matches as key suffixes.
        """
        if not self.has_shapes:
            raise WindowError(
                "this layout has no module shapes (a bare layer count); build it from a model or config."
            )
        linears = self.linears[0]
        kind = self.architecture
        if isinstance(spec, str):
            if spec == "all-linear":
                names = list(linears)
            else:
                group = "attn" if spec == "attention" else "mlp"
                names = [n for n in linears if projection_group(n.rsplit(".", 1)[0] if "." in n else "") == group]
            if not names:
                raise WindowError(
                    f"target_modules={spec!r}: no linear module of {kind} matches this preset "
                    f"(its linear modules: {', '.join(linears) or 'none'}); give an explicit list instead."
                )
            return names
        resolved: list[str] = []
        for want in spec:
            hits = [n for n in linears if n == want or n.endswith("." + want)]
            if not hits:
                raise WindowError(
                    f"target_modules: {want!r} matches no linear module of {kind}; available: {', '.join(linears)}."
                )
            resolved.extend(h for h in hits if h not in resolved)
        return resolved

    def fan_in_fan_out(self, targets: Iterable[str]) -> bool:
        """Whether PEFT needs ``fan_in_fan_out`` (GPT-2's Conv1D projections)."""
        first = self.linears[0] if self.linears else {}
        return any(first[n].conv1d for n in targets if n in first)

    def lora_params(self, index: int, rank: int, targets: Iterable[str]) -> int:
        """LoRA parameters of rank ``rank`` on ``targets`` of layer ``index``."""
        mods = self.linears[index]
        return sum(rank * (mods[n].in_features + mods[n].out_features) for n in targets if n in mods)


def _quantized_counts(base: Any, config: Any, shapes_only: bool) -> dict[str, Any]:
    """``quantization`` and ``quantized_params`` of a loaded model (from its weights) or of
    the meta copy of a config (the linear weights bitsandbytes would quantize: all but the
    output embeddings and ``llm_int8_skip_modules``)."""
    if not shapes_only:
        kinds: dict[str, int] = {}
        for p in dict.fromkeys(base.parameters()):
            kind = param_quantization(p)
            if kind is not None:
                kinds[kind] = kinds.get(kind, 0) + param_numel(p)
        if not kinds:
            return {}
        return {"quantization": max(kinds, key=kinds.get), "quantized_params": sum(kinds.values())}
    kind, skip = config_quantization(config) if config is not None else (None, ())
    if kind is None:
        return {}
    out = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    count = sum(
        param_numel(m.weight)
        for name, m in base.named_modules()
        if is_linear(m) and m is not out and not any(key in name for key in skip)
    )
    return {"quantization": kind, "quantized_params": count}


def model_quantization(model: Any) -> str | None:
    """``"bnb-4bit"`` / ``"bnb-8bit"`` when a loaded model's weights are bitsandbytes-quantized."""
    return _quantized_counts(unwrap(model), None, False).get("quantization")


def layout_of(model_or_config: Any) -> ModelLayout:
    """The layout of a loaded model, a transformers config, or a model directory / hub id."""
    import torch.nn as nn

    if isinstance(model_or_config, ModelLayout):
        return model_or_config
    if isinstance(model_or_config, nn.Module):
        return ModelLayout.from_model(model_or_config)
    return ModelLayout.from_config(load_config(model_or_config))
