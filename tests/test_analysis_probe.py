"""The pre-training gradient probe on real tiny models: one finite score per layer, nothing trained,
the same window search, and ``midblock analyze --probe``."""

from __future__ import annotations

import json
import math

import pytest
import torch

from midblock_plugin.analysis import gradient_probe, layer_projection_weights
from midblock_plugin.analysis.prompts import BUILTIN_PROMPTS
from midblock_plugin.architecture import find_decoder_layers
from midblock_plugin.cli import main
from midblock_plugin.testing import save_tiny, tiny_model, tiny_tokenizer
from midblock_plugin.window import resolve_layers


L = 8


def test_probe_scores_every_layer_and_trains_nothing():
    model, tok = tiny_model("llama", num_layers=L), tiny_tokenizer()
    _, stack = find_decoder_layers(model)
    stack[0].self_attn.q_proj.weight.requires_grad_(False)  # flags must come back as they were
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    probe = gradient_probe(model, tok, BUILTIN_PROMPTS, num_batches=2, batch_size=4, max_length=24)
    assert len(probe.signal) == L and all(math.isfinite(v) and v > 0 for v in probe.signal)
    assert probe.num_batches == 2 and probe.sequences == 8 and probe.tokens > 0
    for g, w, s in zip(probe.grad_norm, probe.weight_norm, probe.signal):
        assert s == pytest.approx(g / w)
    rec = probe.recommendation
    assert rec.signal_name == "gradient_probe" and rec.layers and rec.num_layers == L
    assert rec.signal == probe.signal
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert stack[0].self_attn.q_proj.weight.requires_grad is False and model.training
    doc = probe.to_dict()
    assert doc["layers"] == rec.layers and doc["window"] == rec.window and len(doc["signal"]) == L


def test_probe_through_a_disabled_adapter_equals_the_plain_base():
    from peft import LoraConfig, get_peft_model

    tok = tiny_tokenizer()
    plain = gradient_probe(
        tiny_model("llama", num_layers=L), tok, BUILTIN_PROMPTS, num_batches=1, batch_size=4, max_length=24
    )
    peft_model = get_peft_model(
        tiny_model("llama", num_layers=L),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    _, stack = find_decoder_layers(peft_model)
    assert len(layer_projection_weights(stack[0])) == 7  # q k v o gate up down, no LoRA matrices
    with peft_model.disable_adapter():
        wrapped = gradient_probe(peft_model, tok, BUILTIN_PROMPTS, num_batches=1, batch_size=4, max_length=24)
    assert wrapped.signal == pytest.approx(plain.signal, rel=1e-4)
    assert all(not p.requires_grad for n, p in peft_model.named_parameters() if "lora_" not in n)


def test_bad_probe_input_is_rejected():
    model, tok = tiny_model("llama", num_layers=2), tiny_tokenizer()
    with pytest.raises(ValueError, match="num_batches=0"):
        gradient_probe(model, tok, BUILTIN_PROMPTS, num_batches=0)
    with pytest.raises(ValueError, match="2 or more tokens"):
        gradient_probe(model, tok, ["a"], num_batches=1)


def test_cli_single_model_with_and_without_probe(tmp_path, capsys):
    base = save_tiny(tmp_path / "base", arch="llama", num_layers=L)
    fast = [
        "--num-prompts",
        "8",
        "--max-length",
        "24",
        "--batch-size",
        "4",
        "--quiet",
        "--no-figure",
        "--no-early-exit",
        "--no-weight-stats",
    ]
    assert main(["analyze", str(base), "--output-dir", str(tmp_path / "plain"), *fast]) == 0
    plain = json.loads((tmp_path / "plain" / "analysis.json").read_text())
    assert plain["probe"] is None and plain["tuned_variant"] is None
    assert plain["recommendation"]["signal_name"] == "none" and "--probe" in plain["recommendation"]["fallback"]
    assert plain["recommendation"]["layers"] == resolve_layers(L)
    capsys.readouterr()
    out = tmp_path / "probe"
    assert main(["analyze", str(base), "--output-dir", str(out), "--probe", "--probe-batches", "2", *fast]) == 0
    assert "probe (before training, gradient_probe): window" in capsys.readouterr().out
    doc = json.loads((out / "analysis.json").read_text())
    probe = doc["probe"]
    assert len(probe["signal"]) == L and all(v > 0 for v in probe["signal"]) and probe["num_batches"] == 2
    assert doc["recommendation"]["signal_name"] == "gradient_probe"
    assert doc["recommendation"]["layers"] == probe["layers"] == doc["recommended_layers"]
    assert resolve_layers(L, window_from=str(out / "analysis.json")) == probe["layers"]
