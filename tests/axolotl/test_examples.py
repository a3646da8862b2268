"""examples/axolotl: the tiny CPU config trains as written; the paper configs pass Axolotl's
own validation and resolve to the paper's layers, ranks and learning rates."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.axolotl.helpers import ROOT, WINDOW


pytestmark = pytest.mark.axolotl

EXAMPLES = ROOT / "examples" / "axolotl"


def test_tiny_cpu_example_trains_as_written(workspace):
    """Only the locations change: the model, data and outputs live in the test's tmp dir."""
    from midblock_plugin.testing import GSM8K_DIR

    cfg = yaml.safe_load((EXAMPLES / "tiny-cpu.yml").read_text())
    assert cfg["base_model"] == "runs/tiny-llama" and cfg["datasets"][0]["path"] == "../shared/data/gsm8k/train.jsonl"
    cfg["base_model"] = str(workspace.model_dir)
    cfg["datasets"][0]["path"] = str(GSM8K_DIR / "train.jsonl")
    cfg["dataset_prepared_path"] = str(workspace.root / "example-prepared")
    cfg["output_dir"] = str(workspace.root / "example")
    run = workspace.axolotl("train", workspace.write(cfg, "example")).check()
    adapter = json.loads((run.output_dir / "adapter_config.json").read_text())
    assert adapter["layers_to_transform"] == WINDOW and adapter["r"] == 6
    assert sorted(adapter["target_modules"]) == [f"self_attn.{p}_proj" for p in "koqv"]
    assert (run.output_dir / "adapter_model.safetensors").exists()
    assert json.loads((run.output_dir / "midblock" / "drift.json").read_text())["history"][-1]["step"] == 3


# name -> (layers of the real model, expected window, rank per window layer, lora_alpha, learning rate)
PAPER = {
    "olmo2-1b-gsm8k": ("olmo2", 16, range(3, 12), 113, 128.0, 1e-4),
    "olmo2-7b-gsm8k": ("olmo2", 32, range(6, 25), 107, 128.0, 1e-4),
    "olmo2-32b-zero3": ("olmo2", 64, range(12, 51), 13, 128.0, 5e-5),
    "qwen2.5-1.5b-gsm8k": ("qwen2", 28, range(5, 22), 26, 52.0, 2e-4),
}


@pytest.fixture(scope="module")
def validated():
    """Every example through Axolotl's full config schema, with our plugin registered."""
    from axolotl.utils.config import prepare_plugins, validate_config
    from axolotl.utils.dict import DictDefault

    out = {}
    for path in sorted(EXAMPLES.glob("*.yml")):
        cfg = DictDefault(yaml.safe_load(path.read_text()))
        prepare_plugins(cfg)
        out[path.stem] = validate_config(cfg)
    return out


def test_every_example_passes_axolotl_validation(validated):
    assert set(PAPER) | {"tiny-cpu"} == set(validated)
    for name, cfg in validated.items():
        assert cfg.adapter == "midblock" and "midblock_plugin.integrations.axolotl.MidBlockPlugin" in cfg.plugins, name


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_configs_resolve_to_the_paper_window_rank_and_lr(validated, name):
    from midblock_plugin.integrations.axolotl.keys import midblock_config_from_cfg
    from midblock_plugin.plan import build_plan
    from midblock_plugin.testing import tiny_config

    arch, num_layers, window, rank, alpha, lr = PAPER[name]
    cfg = validated[name]
    plan = build_plan(tiny_config(arch, num_layers=num_layers), midblock_config_from_cfg(cfg))
    assert plan.layers == list(window)
    assert set(plan.ranks.values()) == {rank}
    assert plan.lora_alpha == alpha
    assert cfg.learning_rate == lr
    if name.startswith("olmo2"):  # the paper's MBET recipe
        assert sorted(plan.target_modules) == [f"self_attn.{p}_proj" for p in "koqv"]
        assert cfg.lora_dropout == 0.05 and cfg.sequence_len == 128 and cfg.train_on_inputs is True
        assert cfg.micro_batch_size * cfg.gradient_accumulation_steps in (32, 2)  # 4 x 8; 32B: 1 x 2 per GPU x 16 GPUs
        assert cfg.datasets[0]["split"] == "train[:2000]" and cfg.lr_scheduler == "linear"


def test_32b_config_uses_the_zero3_json_shipped_in_the_package(validated):
    path = validated["olmo2-32b-zero3"].deepspeed
    assert path.startswith(str(ROOT / "midblock_plugin")) and path.endswith("zero3.json")
    ds = json.loads(open(path).read())
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
