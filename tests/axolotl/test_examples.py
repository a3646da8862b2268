"""examples/axolotl: every shipped config trains as shipped, with only the model made tiny, the data
local, the precision CPU-safe and the run 2 steps long (the 32B one on 2 processes with its ZeRO-3
config and gradient checkpointing); the paper configs pass Axolotl's own validation and resolve to
the paper's layers, ranks and learning rates."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.axolotl.helpers import PLUGIN, ROOT, SHORT_PLUGIN, WINDOW, load_state


pytestmark = pytest.mark.axolotl

EXAMPLES = ROOT / "examples" / "axolotl"


def test_tiny_cpu_example_runs_as_its_header_says(tmp_path):
    """The commands of tiny-cpu.yml's header, as printed, in a scratch checkout with
    ../shared/data/gsm8k beside it: the one command that makes the tiny model, then ``axolotl train``
    and ``axolotl merge-lora`` from this environment (as after its ``activate``; the header's set-up
    line is what built this environment)."""
    import os
    import subprocess
    import sys

    from midblock_plugin.testing import GSM8K_DIR
    from tests.axolotl.helpers import ENV, SHORT_PLUGIN

    text = (EXAMPLES / "tiny-cpu.yml").read_text()
    cfg = yaml.safe_load(text)
    assert cfg["base_model"] == "runs/tiny-llama" and cfg["datasets"][0]["path"] == "../shared/data/gsm8k/train.jsonl"
    assert cfg["plugins"] == [SHORT_PLUGIN]  # the path the README shows
    header = [line[1:].strip() for line in text.splitlines() if line.startswith("#")]
    first = header.index("")
    commands = [line.split("  #")[0].strip() for line in header[first + 1 : header.index("", first + 1)]]
    assert commands[0] == "bash scripts/setup-axolotl.sh && . .venv-axolotl/bin/activate"
    assert commands[1:] == [
        "python -m midblock_plugin.testing runs/tiny-llama",
        "AXOLOTL_DO_NOT_TRACK=1 axolotl train examples/axolotl/tiny-cpu.yml",
        "AXOLOTL_DO_NOT_TRACK=1 axolotl merge-lora examples/axolotl/tiny-cpu.yml",
    ]
    work = tmp_path / "midblock"
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples")
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "shared" / "data" / "gsm8k").symlink_to(GSM8K_DIR.resolve())
    bindir = os.path.dirname(sys.executable)
    env = {
        **os.environ,
        **ENV,
        "PATH": bindir + os.pathsep + os.environ["PATH"],
        "VIRTUAL_ENV": os.path.dirname(bindir),
    }
    for command in commands[1:]:
        r = subprocess.run(
            ["bash", "-e", "-c", command],
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert r.returncode == 0, f"{command}\n{(r.stdout + r.stderr)[-6000:]}"
    out = work / "runs" / "axolotl-tiny"
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["layers_to_transform"] == WINDOW and adapter["r"] == 6
    assert sorted(adapter["target_modules"]) == [f"self_attn.{p}_proj" for p in "koqv"]
    assert (out / "adapter_model.safetensors").exists()
    assert json.loads((out / "midblock" / "drift.json").read_text())["history"][-1]["step"] == 3
    assert json.loads((out / "merged" / "config.json").read_text())["num_hidden_layers"] == 5  # merge-lora's model


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
        assert cfg.adapter == "midblock" and {PLUGIN, SHORT_PLUGIN} & set(cfg.plugins), name


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


# --------------------------------------------------------------------------- the paper configs, trained
#: Layers of the tiny stand-ins: 01110 and 0.2:0.8 of 10 layers are layers 2-7, neither the first
#: nor the last layer, and the matched rank differs from lora_r.
TINY_LAYERS = 10
#: name -> (architecture, window on 10 layers, rank per window layer, lora_alpha, processes)
TINY = {
    "olmo2-1b-gsm8k": ("olmo2", range(2, 8), 106, 128.0, 1),  # floor(64 * 10 / 6), alpha fixed
    "olmo2-7b-gsm8k": ("olmo2", range(2, 8), 106, 128.0, 1),
    "qwen2.5-1.5b-gsm8k": ("qwen2", range(2, 8), 26, 52.0, 1),  # floor(16 * 10 / 6), alpha 32 * 26 / 16
    "olmo2-32b-zero3": ("olmo2", range(2, 8), 13, 128.0, 2),  # floor(8 * 10 / 6), alpha fixed
}


@pytest.fixture(scope="module")
def tiny_models(workspace):
    from midblock_plugin.testing import save_tiny

    return {
        arch: save_tiny(workspace.root / f"tiny-{arch}-{TINY_LAYERS}", arch=arch, num_layers=TINY_LAYERS)
        for arch in ("olmo2", "qwen2")
    }


def as_tested(name: str, shipped: dict, model_dir, root) -> dict:
    """The shipped config with only what a CPU test must change: the model (a tiny one of the same
    architecture), the data (the local GSM8K file, as the example's "offline:" comment says: path +
    ds_type: json instead of the hub id and its config name; the prompt ``type:`` block and the split
    are kept), the precision (no bf16 / tf32 on CPU), the length (2 steps) and the locations."""
    from midblock_plugin.testing import GSM8K_DIR

    cfg = yaml.safe_load(yaml.safe_dump(shipped))
    cfg["base_model"] = str(model_dir)
    dataset = cfg["datasets"][0]
    assert dataset["path"] == "openai/gsm8k" and dataset.get("name") in (None, "main"), dataset
    dataset.pop("name", None)
    dataset.update(path=str(GSM8K_DIR / "train.jsonl"), ds_type="json")
    assert cfg["bf16"] in ("auto", True) and cfg["tf32"] is True  # what the paper's GPUs use
    cfg.update(
        bf16=False,
        tf32=False,
        max_steps=2,
        output_dir=str(root / name),
        dataset_prepared_path=str(root / f"{name}-prepared"),
    )
    return cfg


@pytest.mark.parametrize("name", sorted(TINY))
def test_example_trains_as_shipped_with_a_tiny_model(workspace, tiny_models, name):
    from midblock_plugin.compat import zero3_nonreentrant_ok
    from midblock_plugin.integrations.axolotl.keys import midblock_config_from_cfg
    from midblock_plugin.plan import build_plan

    arch, window, rank, alpha, processes = TINY[name]
    shipped = yaml.safe_load((EXAMPLES / f"{name}.yml").read_text())
    cfg = as_tested(name, shipped, tiny_models[arch], workspace.root)
    changed = {k for k in set(cfg) | set(shipped) if cfg.get(k) != shipped.get(k)}
    assert changed <= {"base_model", "datasets", "bf16", "tf32", "max_steps", "output_dir", "dataset_prepared_path"}
    path = workspace.write(cfg, f"example-{name}")
    if processes == 2:
        pytest.importorskip("deepspeed", reason="DeepSpeed is not installed in this environment")
        assert cfg["deepspeed"] == "midblock:zero3" and cfg["gradient_checkpointing"] is True
        run = workspace.torchrun(path).check()
        assert '"world_size": 2' in run.output and "deepspeed      ZeRO-3, parameters partitioned" in run.output
        mode = "true" if not zero3_nonreentrant_ok() else "false"
        assert f"midblock: gradient checkpointing use_reentrant: {mode}; DeepSpeed ZeRO-3" in run.output
        assert "CheckpointError" not in run.output
    else:
        run = workspace.axolotl("train", path).check()

    plan = build_plan(str(tiny_models[arch]), midblock_config_from_cfg(yaml.safe_load(path.read_text())))
    assert plan.layers == list(window) and set(plan.ranks.values()) == {rank} and plan.lora_alpha == alpha
    adapter = json.loads((run.output_dir / "adapter_config.json").read_text())
    assert adapter["layers_to_transform"] == plan.layers
    assert adapter["r"] == rank and adapter["lora_alpha"] == alpha
    assert adapter["lora_dropout"] == shipped["lora_dropout"]
    assert sorted(adapter["target_modules"]) == sorted(plan.target_modules)
    saved = json.loads((run.output_dir / "midblock" / "plan.json").read_text())
    assert saved["layers"] == plan.layers and saved["num_layers"] == TINY_LAYERS
    state = load_state(run.output_dir / "adapter_model.safetensors")
    assert sum(t.numel() for t in state.values()) == plan.trainable_params  # full size (gathered under ZeRO-3)
    assert json.loads((run.output_dir / "midblock" / "drift.json").read_text())["history"][-1]["step"] == 2
