"""QLoRA without bitsandbytes: the Axolotl keys (``load_in_4bit`` / ``load_in_8bit`` with
``adapter: midblock``), the quantization config the plugin hands to ``from_pretrained``, the
refusals, and the counts of a quantized base in the layout and the memory table.

Training on a quantized base (bitsandbytes on the CPU) is tested in the Axolotl environment:
``tests/axolotl/test_qlora.py`` (Axolotl) and ``tests/axolotl/test_qlora_trl.py`` (TRL).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from midblock_plugin import MidBlockConfig
from midblock_plugin.architecture import ModelLayout, config_quantization
from midblock_plugin.integrations.axolotl.axolotl_compat import (
    QUANTIZATION_KEYS,
    bnb_quantization_config,
    training_dtype,
)
from midblock_plugin.integrations.axolotl.validate import CONFLICTING_KEYS, validate_midblock_keys
from midblock_plugin.memory import QUANTIZED_WEIGHT_BYTES, WEIGHT_BYTES, zero3_estimates
from midblock_plugin.plan import build_plan
from midblock_plugin.testing import tiny_config


DOC = Path(__file__).resolve().parents[1] / "docs" / "axolotl.md"
BASE = {"adapter": "midblock", "midblock_segments": "01110"}


# --------------------------------------------------------------------------- Axolotl keys


def test_lora_mode_accepts_the_quantization_keys():
    assert not set(QUANTIZATION_KEYS) & set(CONFLICTING_KEYS)
    for key in QUANTIZATION_KEYS:
        validate_midblock_keys({**BASE, key: True})  # no error


@pytest.mark.parametrize("key", QUANTIZATION_KEYS)
def test_full_mode_on_a_quantized_base_is_refused_with_the_fix(key):
    with pytest.raises(ValueError) as info:
        validate_midblock_keys({**BASE, "midblock_mode": "full", key: True})
    text = str(info.value)
    assert "midblock_mode: 'full' trains the base weights" in text and f"quantized ({key}: true)" in text
    assert f"Remove {key}" in text and "LoRA mode (QLoRA" in text


def test_both_bit_widths_and_gptq_are_refused():
    with pytest.raises(ValueError, match="load_in_4bit and load_in_8bit are both true; keep one of them"):
        validate_midblock_keys({**BASE, "load_in_4bit": True, "load_in_8bit": True})
    with pytest.raises(ValueError, match="cannot be combined with gptq.*for QLoRA use load_in_4bit: true"):
        validate_midblock_keys({**BASE, "gptq": True})


def test_full_mode_on_a_prequantized_checkpoint_is_refused_at_config_load(tmp_path):
    config = _quantized_config(load_in_4bit=True)
    config.save_pretrained(tmp_path)
    validate_midblock_keys({**BASE, "base_model": str(tmp_path)})  # LoRA mode: QLoRA on it
    with pytest.raises(
        ValueError,
        match=r"quantized \(a quantization_config in its config.json\).*Use midblock_mode: 'lora' \(QLoRA\)",
    ):
        validate_midblock_keys({**BASE, "base_model": str(tmp_path), "midblock_mode": "full"})


def test_the_4bit_config_is_axolotls_qlora_config_with_bnb_config_kwargs_on_top():
    assert bnb_quantization_config({**BASE, "load_in_4bit": True, "bf16": True}) == {
        "load_in_4bit": True,
        "llm_int8_threshold": 6.0,
        "llm_int8_has_fp16_weight": False,
        "bnb_4bit_compute_dtype": "bfloat16",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_quant_storage": "bfloat16",
    }
    custom = bnb_quantization_config(
        {**BASE, "load_in_4bit": True, "bnb_config_kwargs": {"bnb_4bit_quant_type": "fp4"}}
    )
    assert custom["bnb_4bit_quant_type"] == "fp4" and custom["bnb_4bit_compute_dtype"] == "float32"
    assert bnb_quantization_config({**BASE, "load_in_8bit": True}) == {"load_in_8bit": True}
    assert bnb_quantization_config(BASE) is None
    assert bnb_quantization_config({**BASE, "load_in_4bit": True, "midblock_mode": "full"}) is None  # refused instead
    assert bnb_quantization_config({"adapter": "qlora", "load_in_4bit": True}) is None  # Axolotl's own adapter


@pytest.mark.parametrize(
    ("flags", "bf16_gpu", "expected"),
    [
        ({}, False, "float32"),
        ({"bf16": True}, False, "bfloat16"),
        ({"bf16": "auto"}, True, "bfloat16"),
        ({"bf16": "auto"}, False, "float16"),  # Axolotl turns fp16 on when bf16: auto finds no bf16
        ({"bf16": "auto", "fp16": False}, False, "float32"),
        ({"bf16": "auto", "fp16": True}, True, "float16"),
        ({"fp16": True}, False, "float16"),
        ({"bf16": True, "fp16": True}, False, "bfloat16"),  # bf16 wins, as in Axolotl's normalize_config
        ({"load_in_8bit": True}, False, "float16"),
    ],
)
def test_compute_dtype_follows_axolotls_training_dtype(flags, bf16_gpu, expected):
    assert training_dtype(flags, bf16_gpu) == expected


def test_the_docs_list_the_qlora_keys():
    text = DOC.read_text(encoding="utf-8")
    section = re.search(r"^### QLoRA.*?(?=^#{1,3} )", text, flags=re.S | re.M)
    assert section, "docs/axolotl.md has no '### QLoRA' section"
    keys = re.findall(r"^\| `([a-z_0-9]+)` \|", section.group(0), flags=re.M)
    assert keys == [*QUANTIZATION_KEYS, "bnb_config_kwargs"]


# --------------------------------------------------------------------------- counting


def _quantized_config(**quantization):
    config = tiny_config("llama", num_layers=5)
    config.quantization_config = {"quant_method": "bitsandbytes", **quantization}
    return config


def _decoder_linear_weights(layout: ModelLayout) -> int:
    return sum(m.in_features * m.out_features for layer in layout.linears for m in layer.values())


def test_a_prequantized_config_gives_the_quantized_counts():
    plain = ModelLayout.from_config(tiny_config("llama", num_layers=5))
    four = ModelLayout.from_config(_quantized_config(load_in_4bit=True))
    assert (plain.quantization, plain.quantized_params) == (None, 0)
    assert (four.quantization, four.quantized_params) == ("bnb-4bit", _decoder_linear_weights(plain))
    assert (four.full_params, four.layer_params, four.linears) == (
        plain.full_params,
        plain.layer_params,
        plain.linears,
    )
    eight = ModelLayout.from_config(_quantized_config(load_in_8bit=True, llm_int8_skip_modules=["lm_head", "mlp"]))
    attention = sum(
        m.in_features * m.out_features for layer in plain.linears for n, m in layer.items() if "mlp" not in n
    )
    assert (eight.quantization, eight.quantized_params) == ("bnb-8bit", attention)
    assert config_quantization({"quantization_config": {"quant_method": "gptq", "bits": 4}}) == (None, ())


def test_memory_table_counts_a_4bit_base_at_its_stored_size():
    config = MidBlockConfig(segments="01110", rank=4)
    plain = build_plan(tiny_config("llama", num_layers=5), config)
    qlora = build_plan(_quantized_config(load_in_4bit=True), config)
    assert qlora.trainable_params == plain.trainable_params and qlora.full_params == plain.full_params
    (mid_p, uni_p, full_p), (mid_q, uni_q, full_q) = zero3_estimates(plain, 2), zero3_estimates(qlora, 2)
    saved = (WEIGHT_BYTES - QUANTIZED_WEIGHT_BYTES["bnb-4bit"]) * qlora.layout.quantized_params / 2 / 1024**3
    for p, q in ((mid_p, mid_q), (uni_p, uni_q)):
        assert q.params_gb == pytest.approx(p.params_gb - saved)
        assert (q.grads_gb, q.optimizer_gb, q.trainable_params) == (p.grads_gb, p.optimizer_gb, p.trainable_params)
    assert mid_q.method == "mid-block LoRA (1-3, 4-bit)" and uni_q.method == "uniform LoRA r=4, 4-bit"
    assert full_q.params_gb == full_p.params_gb and full_q.method == "full fine-tuning (bf16 base)"


def test_the_plan_refuses_full_mode_on_a_quantized_base_and_records_the_quantization():
    """The TRL path's refusal: ``build_plan`` (before training), with the fix in the message."""
    from midblock_plugin import MidBlockConfig
    from midblock_plugin.plan import build_plan
    from midblock_plugin.window import WindowError

    with pytest.raises(WindowError, match=r"mode='full'.*quantized \(bnb-4bit\).*Use mode='lora' \(QLoRA\)"):
        build_plan(_quantized_config(load_in_4bit=True), MidBlockConfig(mode="full"))
    plan = build_plan(_quantized_config(load_in_4bit=True), MidBlockConfig())
    assert plan.to_json_dict()["quantization"] == "bnb-4bit" and "quantized (bnb-4bit)" in plan.summary()
    assert build_plan(tiny_config("llama", num_layers=5), MidBlockConfig()).to_json_dict()["quantization"] is None
