"""The adapter being exported and its base model: read and checked before any weight is loaded.

:func:`read_source` reads ``adapter_config.json``, finds the base model (``--base`` or the
adapter's ``base_model_name_or_path``), checks that the base is the kind of model the adapter was
trained on (:func:`trained_on`: architecture, depth and hidden size of the adapter's recorded base,
else of the midblock ``plan.json`` saved beside it), then that the adapter fits it (layers, module
names, widths from the weights' shapes: :func:`midblock_plugin.checks.check_adapter`), and returns
an :class:`AdapterSource`. Another base of the same kind (a fine-tuned copy) is allowed with a note.
:func:`lora_modules` splits the saved tensor names into (layer, module) pairs.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from midblock_plugin.architecture import ModelLayout, num_layers_from_config
from midblock_plugin.checks import ADAPTER_WEIGHT_FILES, check_adapter, check_model_dir, read_adapter_config
from midblock_plugin.io import PLAN_JSON, read_json


#: PEFT's prefix of every saved adapter tensor (``PeftModel.save_pretrained``); TGI and LoRAX
#: look tensors up under exactly ``base_model.model.{module}.lora_A.weight`` (``map_weights_for_model``
#: in huggingface/text-generation-inference server/text_generation_server/adapters/lora.py and
#: predibase/lorax server/lorax_server/adapters/lora.py).
PEFT_PREFIX = "base_model.model."
LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight")


@dataclass
class AdapterSource:
    """One PEFT LoRA adapter directory and the base model it was trained on."""

    path: Path
    config: dict[str, Any]
    base: str
    base_config: Any = field(repr=False)
    layout: ModelLayout = field(repr=False)
    weights_file: Path = field(repr=False, default=Path())
    #: the adapter's own ``base_model_name_or_path`` (``None`` if it names none)
    recorded_base: str | None = None
    #: one line when ``base`` is not the recorded base (a base of the same kind), else ``None``
    base_note: str | None = None

    @property
    def rank(self) -> int:
        return int(self.config["r"])

    @property
    def alpha(self) -> float:
        return float(self.config["lora_alpha"])

    @property
    def use_rslora(self) -> bool:
        return bool(self.config.get("use_rslora"))

    def load_tensors(self) -> dict[str, Any]:
        """Every tensor of the adapter file, on the CPU."""
        import torch

        if self.weights_file.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(self.weights_file), device="cpu")
        return torch.load(self.weights_file, map_location="cpu", weights_only=True)


def read_source(adapter: str | os.PathLike, base: str | None = None, flag: str = "ADAPTER_DIR") -> AdapterSource:
    """The adapter at ``adapter`` and its base model, checked (config files and safetensors headers only)."""
    cfg = read_adapter_config(adapter, flag)
    shown = f"{flag} {os.fspath(adapter)!r}"
    peft_type = str(cfg.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise ValueError(
            f"{shown} is a {cfg.get('peft_type')!r} adapter; midblock export handles LoRA adapters "
            "(peft_type 'LORA') only."
        )
    for key in ("r", "lora_alpha"):
        value = cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(
                f"{shown}: adapter_config.json has {key}={value!r}; a LoRA adapter needs a positive {key}."
            )
    recorded = cfg.get("base_model_name_or_path") or None
    given = base is not None
    base_flag = "--base"
    if base is None:
        base = recorded
        base_flag = f"the base_model_name_or_path of {flag}/adapter_config.json"
        if not base:
            raise ValueError(f"{shown}: adapter_config.json names no base_model_name_or_path; give --base MODEL_DIR.")
    base_config = check_model_dir(base, base_flag)
    path = Path(os.fspath(adapter)).expanduser()
    other_base = given and recorded is not None and not same_model(base, recorded)
    trained, where = trained_on(path, cfg, recorded if other_base else None)
    if trained is not None:
        given_facts = ModelFacts.of_config(base_config)
        differ = trained.differences(given_facts)
        if differ:
            label = f"--base {base!r}" if given else f"its recorded base {base!r}"
            raise ValueError(
                f"{shown} was trained on {trained.describe()} ({where}); {label} is {given_facts.describe()} "
                f"(the {' and the '.join(differ)} {'differ' if len(differ) > 1 else 'differs'}). A LoRA adapter fits only the architecture, depth and "
                "widths it was trained on: give --base the model it was trained on (or a fine-tuned copy of it)."
            )
    check_adapter(adapter, base_config, flag, base_flag=f"the base model {base!r}")
    note = None
    if other_base:
        if trained is not None:
            note = (
                f"note: --base {base!r} is not the adapter's recorded base {recorded!r} but the same kind of model "
                f"({trained.describe()}, from {where}); exporting onto it and recording it as base_model_name_or_path."
            )
        else:
            note = (
                f"note: --base {base!r} is not the adapter's recorded base {recorded!r}, which cannot be read here "
                "(and no midblock plan.json lies beside the adapter): checked against the adapter's weights only "
                "(layer indices, module names, widths); exporting onto it and recording it as base_model_name_or_path."
            )
    weights = next(path / w for w in ADAPTER_WEIGHT_FILES if (path / w).is_file())
    return AdapterSource(
        path=path,
        config=cfg,
        base=_as_recorded(base),
        base_config=base_config,
        layout=ModelLayout.from_config(base_config),
        weights_file=weights,
        recorded_base=recorded,
        base_note=note,
    )


# --------------------------------------------------------------------------- what the adapter was trained on


@dataclass(frozen=True)
class ModelFacts:
    """What an adapter shares with every base it fits: architecture, depth and hidden size
    (``None``: not known from where it was read)."""

    model_type: str | None
    num_layers: int | None
    hidden_size: int | None = None

    @classmethod
    def of_config(cls, config: Any) -> ModelFacts:
        """The facts of a transformers config (a multimodal model's text config for the width)."""
        try:
            layers = num_layers_from_config(config)
        except ValueError:
            layers = None
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        hidden = getattr(text, "hidden_size", None)
        return cls(
            getattr(config, "model_type", None) or None,
            layers,
            hidden if isinstance(hidden, int) and not isinstance(hidden, bool) else None,
        )

    def describe(self) -> str:
        """``'llama, 30 layers, hidden size 576'`` (what is known)."""
        parts = [self.model_type or "an unknown architecture"]
        if self.num_layers is not None:
            parts.append(f"{self.num_layers} layers")
        if self.hidden_size is not None:
            parts.append(f"hidden size {self.hidden_size}")
        return ", ".join(parts)

    def differences(self, other: ModelFacts) -> list[str]:
        """The names of the facts both know and that differ."""
        pairs = (
            ("architecture (model_type)", self.model_type, other.model_type),
            ("depth (num_hidden_layers)", self.num_layers, other.num_layers),
            ("hidden size", self.hidden_size, other.hidden_size),
        )
        return [name for name, a, b in pairs if a is not None and b is not None and a != b]


def trained_on(path: Path, cfg: dict[str, Any], recorded: str | None) -> tuple[ModelFacts | None, str]:
    """What the adapter at ``path`` was trained on, and where that was read: the config of its
    ``recorded`` base if readable here (a local directory, or a hub id in the local cache: nothing is
    downloaded), else the midblock ``plan.json`` saved beside the adapter (in it, or in its parent
    directory, as ``midblock run`` and the trainer callback save them) when its layers are the
    adapter's. ``(None, "")`` when neither is there."""
    if recorded is not None:
        config = _local_config(recorded)
        if config is not None:
            return ModelFacts.of_config(config), f"its recorded base {recorded!r}"
    window = cfg.get("layers_to_transform")
    for candidate in (path / PLAN_JSON, path.parent / PLAN_JSON):
        try:
            plan = read_json(candidate)
        except (OSError, ValueError):
            continue
        if not isinstance(plan, dict) or not isinstance(plan.get("num_layers"), int):
            continue
        if window is not None and plan.get("layers") is not None and list(plan["layers"]) != list(window):
            continue  # a plan.json of something else
        return ModelFacts(plan.get("model_type") or None, plan["num_layers"]), f"its midblock plan {candidate}"
    return None, ""


def _local_config(spec: str) -> Any:
    """The transformers config of ``spec`` from disk only (a directory, or the hub cache), else ``None``."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(spec, local_files_only=True)
    except Exception:  # noqa: BLE001  (any unreadable config means: not known here)
        return None


def same_model(a: str, b: str) -> bool:
    """Whether two model specs name the same model: the same local directory, or the same hub id."""
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        try:
            return os.path.samefile(pa, pb)
        except OSError:
            return False
    return str(a).rstrip("/") == str(b).rstrip("/")


def _as_recorded(base: str) -> str:
    """``base`` as written into an exported adapter and its serve command: a local directory as an
    absolute path (it must still be found from elsewhere), a hub id as given."""
    p = Path(base).expanduser()
    return os.path.abspath(p) if p.is_dir() else str(base)


def lora_modules(names: Any, layout: ModelLayout) -> tuple[dict[tuple[int, str], str], list[str]]:
    """``(layer, module) -> saved module name`` for every LoRA pair inside the layer stack, and
    the module names (relative to a layer, first-seen order) the adapter targets there."""
    prefix = PEFT_PREFIX + layout.layers_path + "."
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.(.+)$")
    found: dict[tuple[int, str], str] = {}
    rels: list[str] = []
    for name in names:
        if not name.endswith(LORA_SUFFIXES[0]):
            continue
        module = name[: -len(LORA_SUFFIXES[0])]
        m = pattern.match(module)
        if not m:
            continue
        index, rel = int(m.group(1)), m.group(2)
        found[(index, rel)] = module
        if rel not in rels:
            rels.append(rel)
    return found, rels
