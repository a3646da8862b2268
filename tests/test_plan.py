"""Plans: exact parameter counts against real PEFT models, alpha policies, targets, the CLI."""

import json
import subprocess
import sys

import pytest

from midblock_plugin.adapters import lora_config
from midblock_plugin.config import MidBlockConfig
from midblock_plugin.plan import build_plan
from midblock_plugin.testing import ARCHITECTURES, save_tiny, tiny_config, tiny_model
from midblock_plugin.window import WindowError


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_plan_counts_are_exact(arch):
    from peft import get_peft_model

    model = tiny_model(arch, num_layers=10)
    cfg = MidBlockConfig(rank=8)
    plan = build_plan(tiny_config(arch, num_layers=10), cfg)  # from the config alone (meta device)
    assert plan.layers == list(range(2, 8))
    assert plan.ranks == dict.fromkeys(range(2, 8), 13)  # floor(8 * 10 / 6)
    assert plan.full_params == sum(p.numel() for p in model.parameters())
    peft_model = get_peft_model(model, lora_config(plan))
    assert plan.trainable_params == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    # every LoRA module sits in a window layer, on an attention projection
    lora_names = [n for n, _ in peft_model.named_parameters() if "lora_A" in n]
    assert lora_names
    for name in lora_names:
        idx = int(name.split(f".{plan.layers_pattern}.")[1].split(".")[0])
        assert idx in plan.layers
        assert any(t in name for t in ("attn", "attention"))
    # uniform LoRA at rank r, counted by PEFT itself
    uniform = get_peft_model(
        tiny_model(arch, num_layers=10), lora_config(plan, r=8, layers_to_transform=None, layers_pattern=None)
    )
    assert plan.uniform_lora_params == sum(p.numel() for p in uniform.parameters() if p.requires_grad)


def test_alpha_policies_and_rslora():
    cfg = tiny_config("llama", num_layers=16)
    ratio = build_plan(cfg, MidBlockConfig(rank=64, lora_alpha=128))
    fixed = build_plan(cfg, MidBlockConfig(rank=64, lora_alpha=128, alpha_policy="fixed"))
    rs = build_plan(cfg, MidBlockConfig(rank=64, lora_alpha=128, use_rslora=True))
    assert ratio.ranks[3] == fixed.ranks[3] == 113
    assert ratio.lora_alpha / 113 == pytest.approx(128 / 64, rel=1e-6)  # alpha/r kept
    assert fixed.lora_alpha == 128  # the paper's constant alpha
    assert rs.lora_alpha / 113**0.5 == pytest.approx(128 / 64**0.5, rel=1e-6)  # alpha/sqrt(r) kept
    assert lora_config(rs).use_rslora is True
    none = build_plan(cfg, MidBlockConfig(rank=64, budget="none"))
    assert set(none.ranks.values()) == {64}


def test_target_module_presets():
    cfg = tiny_config("llama", num_layers=5)
    assert build_plan(cfg, MidBlockConfig(target_modules="mlp")).target_modules == [
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ]
    assert len(build_plan(cfg, MidBlockConfig(target_modules="all-linear")).target_modules) == 7
    assert build_plan(cfg, MidBlockConfig(target_modules=["q_proj", "v_proj"])).target_modules == [
        "self_attn.q_proj",
        "self_attn.v_proj",
    ]
    # GPT-2: the attention and the MLP both have a c_proj; the preset keeps them apart
    gpt2 = build_plan(tiny_config("gpt2", num_layers=5), MidBlockConfig())
    assert gpt2.target_modules == ["attn.c_attn", "attn.c_proj"] and gpt2.fan_in_fan_out
    with pytest.raises(WindowError, match="'nope' matches no linear module.*available: self_attn.q_proj"):
        build_plan(cfg, MidBlockConfig(target_modules=["nope"]))


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"mode": "qlora"}, r"mode='qlora' is not allowed; choose one of 'lora', 'full'"),
        ({"rank": 0}, r"rank=0 must be a positive integer"),
        ({"budget": "double"}, r"budget='double'.*'match', 'none'"),
        ({"alpha_policy": "auto"}, r"alpha_policy='auto'.*'ratio', 'fixed'"),
        ({"target_modules": "everything"}, r"target_modules='everything' is not a preset"),
        ({"segments": "0120"}, r"segments='0120' is not a mask.*stray '2'"),
        ({"window": "0.9:0.1"}, r"window='0.9:0.1'"),
        ({"train_final_norm": True}, r"mode='full' only"),
        ({"lora_dropout": 1.5}, r"lora_dropout=1.5"),
    ],
)
def test_config_errors(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        MidBlockConfig(**kwargs)


def test_full_mode_plan_counts():
    model = tiny_model("llama", num_layers=10)
    plan = build_plan(model, MidBlockConfig(mode="full", train_final_norm=True))
    window = sum(
        p.numel() for n, p in model.named_parameters() if any(n.startswith(f"model.layers.{i}.") for i in plan.layers)
    )
    assert plan.trainable_params == window + model.model.norm.weight.numel()
    assert plan.ranks == {}


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "midblock_plugin.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_plan_json_without_weights(tmp_path):
    # a directory with only config.json: nothing but the config is read
    tiny_config("olmo2", num_layers=16).save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.safetensors"))
    r = _cli(
        "plan",
        str(tmp_path),
        "--segments",
        "01110",
        "--rank",
        "64",
        "--lora-alpha",
        "128",
        "--alpha-policy",
        "fixed",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for key in (
        "num_layers",
        "layers",
        "ranks",
        "lora_alpha",
        "trainable_params",
        "uniform_lora_params",
        "full_params",
    ):
        assert key in out
    assert out["num_layers"] == 16 and out["layers"] == list(range(3, 12))
    assert set(out["ranks"].values()) == {113} and out["lora_alpha"] == 128
    assert out["architecture"] == "Olmo2ForCausalLM"
    expected = build_plan(tiny_config("olmo2", num_layers=16), MidBlockConfig(segments="01110", rank=64))
    assert out["trainable_params"] == expected.trainable_params


def test_cli_plan_num_layers_and_summary(tmp_path):
    r = _cli("plan", "--num-layers", "32", "--rank", "64")
    assert r.returncode == 0, r.stderr
    assert "layers 6-24 (19 of 32" in r.stdout and "107 per active layer" in r.stdout
    save_tiny(tmp_path / "m", "phi3", num_layers=5)
    r = _cli("plan", str(tmp_path / "m"), "--mode", "full")
    assert r.returncode == 0 and "trainable" in r.stdout and "Phi3ForCausalLM" in r.stdout


@pytest.mark.parametrize(
    "args, pattern",
    [
        (
            ["--num-layers", "16", "--window", "0.8:0.2"],
            "--window '0.8:0.2': need 0 <= a < b <= 1",
        ),  # the flag, as typed
        (["--num-layers", "16", "--segments", "0000"], "activates no segment"),
        (["--num-layers", "4", "--layers", "7"], "layer 7 is out of range"),
        ([], "give a MODEL"),
        (["/nonexistent/dir"], None),
    ],
)
def test_cli_plan_errors(args, pattern):
    r = _cli("plan", *args)
    assert r.returncode != 0
    if pattern:
        assert pattern in r.stderr and "Traceback" not in r.stderr


def test_the_plan_of_an_rslora_adapter_says_how_to_serve_it_to_llamacpp_and_sglang():
    rs = build_plan(None, MidBlockConfig(use_rslora=True), num_layers=16).summary()
    plain = build_plan(None, MidBlockConfig(), num_layers=16).summary()
    assert "midblock export --target llama.cpp" in rs and "--target sglang" in rs
    assert "midblock export --target llama.cpp" not in plain
