"""The adapter being exported and its base model: read and checked before any weight is loaded.

:func:`read_source` reads ``adapter_config.json``, finds the base model (``--base`` or the
adapter's ``base_model_name_or_path``), checks that the adapter fits it (layers, module names,
widths: :func:`midblock_plugin.checks.check_adapter`), and returns an :class:`AdapterSource`.
:func:`lora_modules` splits the saved tensor names into (layer, module) pairs.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from midblock_plugin.architecture import ModelLayout
from midblock_plugin.checks import ADAPTER_WEIGHT_FILES, check_adapter, check_model_dir, read_adapter_config


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
    """The adapter at ``adapter`` and its base model, checked (config files only)."""
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
    base_flag = "--base"
    if base is None:
        base = cfg.get("base_model_name_or_path")
        base_flag = f"the base_model_name_or_path of {flag}/adapter_config.json"
        if not base:
            raise ValueError(f"{shown}: adapter_config.json names no base_model_name_or_path; give --base MODEL_DIR.")
    base_config = check_model_dir(base, base_flag)
    check_adapter(adapter, base_config, flag, base_flag=f"the base model {base!r}")
    path = Path(os.fspath(adapter)).expanduser()
    weights = next(path / w for w in ADAPTER_WEIGHT_FILES if (path / w).is_file())
    return AdapterSource(
        path=path,
        config=cfg,
        base=str(base),
        base_config=base_config,
        layout=ModelLayout.from_config(base_config),
        weights_file=weights,
    )


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
