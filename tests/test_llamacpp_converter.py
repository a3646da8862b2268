"""llama.cpp's own converter (``convert_lora_to_gguf.py``, vendored by the pinned
``llama-cpp-python`` sdist) on our ``midblock export --target llama.cpp`` output.

The GGUF it writes for a tiny Llama's rsLoRA ``01110`` adapter holds LoRA tensors for the window's
layers only, ``adapter.lora.alpha`` = alpha * sqrt(r) (llama.cpp scales by alpha / r, so this is
the rsLoRA scale alpha / sqrt(r) folded in), and the adapter's own values (A as saved; B as saved,
row-permuted for q / k as the converter permutes Llama's q / k weights for its RoPE layout).

Converting the *original* rsLoRA adapter instead, as a user who never ran ``midblock export``
would, is accepted without a word and keeps alpha unfolded: llama.cpp then applies the update
sqrt(r) times too weakly (the trap documented in docs/serving.md).

The sdist is downloaded once into a cache by ``scripts/llamacpp-converter.sh`` (network needed the
first time only; ``MIDBLOCK_LLAMACPP_SDIST`` / ``MIDBLOCK_LLAMACPP_CACHE`` point at a copy). The
test is skipped, saying so, only when the sdist can be neither found nor downloaded.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from midblock_plugin.config import MidBlockConfig
from midblock_plugin.plan import build_plan
from midblock_plugin.testing import save_tiny


gguf = pytest.importorskip("gguf", reason="the gguf package (pip install gguf) reads the converter's output")

ROOT = Path(__file__).resolve().parents[1]
NUM_LAYERS = 5
WINDOW = [1, 2, 3]  # '01110' on 5 layers
RANK = 13  # floor(8 * 5 / 3), the budget-matched rank
ALPHA = 16.0 * math.sqrt(RANK / 8)  # the 'ratio' alpha policy under rsLoRA: alpha / sqrt(r) of the baseline kept
# PEFT module -> llama.cpp tensor (conversion/llama.py, gguf TensorNameMap)
GGUF_NAMES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output"}


@pytest.fixture(scope="module")
def converter() -> Path:
    """The cached converter directory (downloads the sdist the first time)."""
    run = subprocess.run(
        ["bash", str(ROOT / "scripts" / "llamacpp-converter.sh")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    if run.returncode == 3:
        pytest.skip(f"llama-cpp-python sdist unavailable: {run.stderr.strip()[-400:]}")
    assert run.returncode == 0, run.stderr
    path = Path(run.stdout.strip().splitlines()[-1])
    assert (path / "convert_lora_to_gguf.py").is_file()
    return path


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """A tiny Llama, its rsLoRA '01110' adapter (random non-zero B) and the llama.cpp export."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("llamacpp")
    base = save_tiny(root / "base", "llama", num_layers=NUM_LAYERS)
    model = AutoModelForCausalLM.from_pretrained(base)
    plan = build_plan(model, MidBlockConfig(segments="01110", rank=8, use_rslora=True, lora_dropout=0.0))
    assert plan.layers == WINDOW and plan.layer_rank == RANK and plan.lora_alpha == pytest.approx(ALPHA)
    peft_model = get_peft_model(model, plan.lora_config())
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    peft_model.save_pretrained(root / "adapter")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "midblock_plugin.cli",
            "export",
            str(root / "adapter"),
            "--target",
            "llama.cpp",
            "--base",
            str(base),
            "--output",
            str(root / "export"),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return base, root / "adapter", root / "export"


def _convert(converter: Path, base: Path, adapter: Path, out: Path) -> Path:
    run = subprocess.run(
        [
            sys.executable,
            str(converter / "convert_lora_to_gguf.py"),
            "--base",
            str(base),
            "--outtype",
            "f32",
            "--outfile",
            str(out),
            str(adapter),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert out.is_file()
    return out


def _alpha(reader) -> float:
    field = reader.get_field("adapter.lora.alpha")
    assert field is not None, "no adapter.lora.alpha in the GGUF"
    return float(field.contents())


def _tensors(reader) -> dict[str, torch.Tensor]:
    # GGUFReader gives numpy arrays in the original (PyTorch) row-major shape
    return {t.name: torch.from_numpy(t.data.copy()) for t in reader.tensors}


def _permute(weights: torch.Tensor, n_head: int) -> torch.Tensor:
    """convert_hf_to_gguf's LlamaModel.permute (q / k rows reordered for llama.cpp's RoPE)."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def test_converter_reads_the_llamacpp_export(converter, adapters, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoConfig

    base, _, export = adapters
    exported = json.loads((export / "adapter_config.json").read_text())
    assert exported["use_rslora"] is False and exported["lora_alpha"] == pytest.approx(ALPHA * math.sqrt(RANK))
    reader = gguf.GGUFReader(_convert(converter, base, export, tmp_path / "export.gguf"))
    assert reader.get_field("general.type").contents() == "adapter"
    assert reader.get_field("adapter.type").contents() == "lora"
    # llama.cpp scales by alpha / r: the folded alpha gives rsLoRA's alpha / sqrt(r)
    assert _alpha(reader) == pytest.approx(ALPHA * math.sqrt(RANK), rel=1e-6)
    assert _alpha(reader) / RANK == pytest.approx(ALPHA / math.sqrt(RANK), rel=1e-6)

    got = _tensors(reader)
    blocks = {int(name.split(".")[1]) for name in got}
    assert blocks == set(WINDOW), f"GGUF LoRA tensors for blocks {sorted(blocks)}, the window is {WINDOW}"
    expected_names = {f"blk.{i}.{g}.weight.lora_{ab}" for i in WINDOW for g in GGUF_NAMES.values() for ab in "ab"}
    assert set(got) == expected_names

    cfg = AutoConfig.from_pretrained(base)
    heads = {"q_proj": cfg.num_attention_heads, "k_proj": cfg.num_key_value_heads}
    saved = load_file(str(export / "adapter_model.safetensors"))
    for i in WINDOW:
        for module, gname in GGUF_NAMES.items():
            a = saved[f"base_model.model.model.layers.{i}.self_attn.{module}.lora_A.weight"]
            b = saved[f"base_model.model.model.layers.{i}.self_attn.{module}.lora_B.weight"]
            assert a.shape == (RANK, cfg.hidden_size)
            if module in heads:
                b = _permute(b, heads[module])
            torch.testing.assert_close(got[f"blk.{i}.{gname}.weight.lora_a"], a, rtol=0, atol=0)
            torch.testing.assert_close(got[f"blk.{i}.{gname}.weight.lora_b"], b, rtol=0, atol=0)
    # the update llama.cpp applies, scale * B @ A, equals PEFT's rsLoRA update of the ORIGINAL adapter
    original = load_file(str(adapters[1] / "adapter_model.safetensors"))
    a = original["base_model.model.model.layers.2.self_attn.v_proj.lora_A.weight"]
    b = original["base_model.model.model.layers.2.self_attn.v_proj.lora_B.weight"]
    delta_gguf = _alpha(reader) / RANK * got["blk.2.attn_v.weight.lora_b"] @ got["blk.2.attn_v.weight.lora_a"]
    torch.testing.assert_close(delta_gguf, ALPHA / math.sqrt(RANK) * b @ a, rtol=1e-5, atol=1e-7)


def test_converter_keeps_the_original_rslora_alpha_unfolded(converter, adapters, tmp_path):
    """The trap: the original rsLoRA adapter converts without an error, alpha unfolded, so
    llama.cpp's alpha / r is sqrt(r) times smaller than the adapter's alpha / sqrt(r)."""
    base, adapter, _ = adapters
    assert json.loads((adapter / "adapter_config.json").read_text())["use_rslora"] is True
    reader = gguf.GGUFReader(_convert(converter, base, adapter, tmp_path / "original.gguf"))
    assert _alpha(reader) == pytest.approx(ALPHA, rel=1e-6)
    wrong, right = _alpha(reader) / RANK, ALPHA / math.sqrt(RANK)
    assert right / wrong == pytest.approx(math.sqrt(RANK), rel=1e-6)  # 3.6x too weak at r=13
    assert {int(t.name.split(".")[1]) for t in reader.tensors} == set(WINDOW)
