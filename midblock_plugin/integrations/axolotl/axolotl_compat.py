"""What the plugin reproduces of Axolotl's own behaviour, because ``adapter: midblock`` is not
one of the adapters Axolotl handles itself: its defaults, its config schema's types, its
bitsandbytes config and its training dtype. Each entry names the Axolotl code it follows
(checked against Axolotl 0.19.0; the plugin supports 0.17 and newer); when Axolotl changes
one of these, this module is the one to change.

Needs the midblock core only (no Axolotl, no pydantic, no torch).
"""

from __future__ import annotations

from typing import Any, Mapping

from midblock_plugin.rules import is_number


#: MidBlockConfig fields whose default under Axolotl is Axolotl's, not the core's: ``lora_dropout``
#: is 0.0 for every adapter (``AxolotlInputConfig.lora_dropout``; the core's default is the paper's 0.05).
AXOLOTL_DEFAULTS: dict[str, Any] = {"lora_dropout": 0.0}

#: Axolotl's bitsandbytes keys: LoRA mode on a quantized base (QLoRA); the plugin builds the
#: quantization config Axolotl builds for ``adapter: qlora`` / ``adapter: lora``.
QUANTIZATION_KEYS = ("load_in_4bit", "load_in_8bit")


def check_axolotl_schema(data: Mapping[str, Any]) -> None:
    """Values the core accepts but Axolotl's own config schema would refuse, with a message that
    says why: ``lora_alpha`` is typed ``int | None`` (``LoraConfig.lora_alpha``), so ``12.5`` fails
    in Axolotl's validation (``16.0`` passes: pydantic takes a whole float as an int)."""
    alpha = data.get("lora_alpha")
    if is_number(alpha) and alpha > 0 and not float(alpha).is_integer():
        raise ValueError(
            f"adapter: midblock: lora_alpha: {alpha!r} must be a whole number: Axolotl's config schema types "
            f"lora_alpha as an integer; write e.g. lora_alpha: {max(1, round(alpha))}."
        )


def quantized_by(data: Mapping[str, Any]) -> str | None:
    """The quantization key set to ``true`` (``load_in_4bit`` / ``load_in_8bit``), or ``None``;
    both at once are refused (Axolotl's loader would take one of them silently)."""
    quantized = [k for k in QUANTIZATION_KEYS if data.get(k) is True]
    if len(quantized) > 1:
        raise ValueError(
            "adapter: midblock: load_in_4bit and load_in_8bit are both true; keep one of them "
            "(load_in_4bit: true is QLoRA's 4-bit NF4 base)."
        )
    return quantized[0] if quantized else None


def bnb_quantization_config(data: Mapping[str, Any], bf16_available: bool = False) -> dict[str, Any] | None:
    """The bitsandbytes quantization config (a plain ``BitsAndBytesConfig`` dict) that
    ``load_in_4bit`` / ``load_in_8bit`` ask for under ``adapter: midblock``, or ``None``.

    The same settings Axolotl 0.19 builds for ``adapter: qlora`` (NF4, double quantization,
    compute in the training dtype, ``bnb_4bit_quant_storage`` bf16 so ZeRO-3 / FSDP can shard
    it) and ``adapter: lora`` + ``load_in_8bit`` (``axolotl/loaders/model.py``,
    ``ModelLoader._set_quantization_config``), with ``bnb_config_kwargs`` on top for 4-bit.
    ``bf16_available``: whether ``bf16: auto`` would find bf16 (a CUDA device that has it).
    """
    from midblock_plugin.integrations.axolotl.keys import is_midblock

    if not is_midblock(data) or str(data.get("midblock_mode") or "lora") != "lora":
        return None
    if data.get("load_in_8bit") is True and data.get("load_in_4bit") is not True:
        return {"load_in_8bit": True}
    if data.get("load_in_4bit") is not True:
        return None
    config = {
        "load_in_4bit": True,
        "llm_int8_threshold": 6.0,
        "llm_int8_has_fp16_weight": False,
        "bnb_4bit_compute_dtype": training_dtype(data, bf16_available),
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_quant_storage": "bfloat16",
    }
    extra = data.get("bnb_config_kwargs")
    if isinstance(extra, Mapping):
        config.update(extra)
    return config


def training_dtype(data: Mapping[str, Any], bf16_available: bool) -> str:
    """The dtype Axolotl will train in, as a torch dtype name, read from the raw config the way
    its ``resolve_dtype`` / ``normalize_config`` decide it: ``bf16: auto`` is bf16 where the GPU
    has it (``bf16_available``) and otherwise fp16 unless ``fp16`` is set; bf16 wins over fp16;
    ``load_in_8bit`` or ``fp16`` is float16; else float32."""
    bf16, fp16 = data.get("bf16"), data.get("fp16")
    if bf16 == "auto":
        if fp16:
            bf16 = False
        else:
            bf16 = bf16_available
            if not bf16 and fp16 is None and not data.get("float16"):
                fp16 = True
    if bf16 is True or data.get("bfloat16"):
        return "bfloat16"
    if data.get("load_in_8bit") or fp16 or data.get("float16"):
        return "float16"
    return "float32"
