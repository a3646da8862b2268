"""DeepSpeed ZeRO-3 with 2 CPU processes (gloo) through the TRL example: both modes.

Training completes; after gathering, only the window's layers changed; the saved
adapter / model matches a single-process run with the same seed, data and global batch.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from midblock_plugin.testing import GSM8K_DIR, save_tiny


ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "trl" / "sft_midblock.py"
COMMON = ["--data", str(GSM8K_DIR / "train.jsonl"), "--num-examples", "16", "--max-steps", "2", "--optim", "sgd", "--lr", "0.5", "--seed", "7", "--lora-dropout", "0", "--sequential"]
#: Tolerance between the 2-process ZeRO-3 run and the single-process run: float32 on CPU,
#: SGD (updates linear in the gradient, so the comparison is not blurred by Adam's
#: sign-like first steps); the runs differ only in reduction order.
ATOL = 1e-5
#: End-of-training GSM8K evaluation (lm-eval) in the LoRA runs: the same score under ZeRO-3.
EVAL = ["--eval-limit", "3", "--eval-fewshot", "1", "--eval-max-gen-toks", "8"]

pytestmark = pytest.mark.slow


def free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(cmd, env_extra=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def _torchrun(port, *args):
    return _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port), str(SCRIPT), *args])


def _single(*args):
    return _run([sys.executable, str(SCRIPT), *args])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("zero3")
    # a saved model, so both runs start from the same weights (ZeRO-3 initialises from_config
    # models in its own order)
    model_dir = save_tiny(root / "model", "llama", num_layers=8, seed=7)
    out = {"model_dir": model_dir}
    for mode in ("lora", "full"):
        port = free_port()
        ds_dir, single_dir = root / f"{mode}-ds", root / f"{mode}-single"
        extra = EVAL if mode == "lora" else []
        _torchrun(port, *COMMON, *extra, "--model", str(model_dir), "--mode", mode, "--batch-size", "2", "--deepspeed", "zero3", "--output-dir", str(ds_dir))
        _single(*COMMON, *extra, "--model", str(model_dir), "--mode", mode, "--batch-size", "4", "--output-dir", str(single_dir))
        out[mode] = (ds_dir, single_dir)
    return out


def _layer(name):
    parts = name.split(".")
    return int(parts[parts.index("layers") + 1]) if "layers" in parts else None


def test_zero3_lora_matches_single_process(runs):
    ds_dir, single_dir = runs["lora"]
    a, b = load_file(ds_dir / "adapter_model.safetensors"), load_file(single_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    assert {_layer(k) for k in a} == {1, 2, 3, 4, 5}  # L=8, window 0.2:0.8
    for k in a:
        assert a[k].shape == b[k].shape and a[k].numel() > 0  # full shapes, not partitions
        assert torch.allclose(a[k], b[k], atol=ATOL), (k, (a[k] - b[k]).abs().max())
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)  # B moved from zero
    drift = json.loads((ds_dir / "midblock" / "drift.json").read_text())
    single = json.loads((single_dir / "midblock" / "drift.json").read_text())
    for layer, v in single["history"][-1]["weight_change"].items():
        assert drift["history"][-1]["weight_change"][layer] == pytest.approx(v, rel=1e-3)


def test_zero3_evaluation_equals_single_process(runs):
    ds_dir, single_dir = runs["lora"]
    a = json.loads((ds_dir / "eval" / "gsm8k.json").read_text())
    b = json.loads((single_dir / "eval" / "gsm8k.json").read_text())
    assert a["distributed"]["world_size"] == 2 and a["n_samples"] == b["n_samples"] == 3
    assert a["metrics"] == b["metrics"]
    def responses(d):
        return [json.loads(l)["response"] for l in (d / "eval" / "gsm8k.samples.jsonl").read_text().splitlines()]
    assert responses(ds_dir) == responses(single_dir)  # generation for generation


def test_zero3_full_only_window_changed_and_matches(runs):
    ds_dir, single_dir = runs["full"]
    a, b = load_file(ds_dir / "model.safetensors"), load_file(single_dir / "model.safetensors")
    init = load_file(runs["model_dir"] / "model.safetensors")
    changed = {k for k in a if not torch.equal(a[k], init[k])}
    assert changed and {_layer(k) for k in changed} == {1, 2, 3, 4, 5}
    assert a.keys() == init.keys()
    for k in a:
        assert a[k].shape == init[k].shape
        assert torch.allclose(a[k], b[k], atol=ATOL), (k, (a[k] - b[k]).abs().max())
    plan = json.loads((ds_dir / "midblock" / "plan.json").read_text())
    # trainable count read from ds_numel on partitioned parameters equals the plan's exact count
    assert plan["trainable_params_on_model"] == plan["trainable_params"]


@pytest.mark.parametrize("launcher", ["accelerate", "deepspeed"])
def test_other_launchers_give_the_same_adapter(runs, launcher, tmp_path):
    """`accelerate launch` with the shipped multi-node config, and the `deepspeed` launcher."""
    out = tmp_path / launcher
    args = [*COMMON, "--model", str(runs["model_dir"]), "--batch-size", "2", "--output-dir", str(out)]
    if launcher == "accelerate":
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "examples/multinode/accelerate_zero3.yaml"),
               "--num_machines", "1", "--num_processes", "2", "--main_process_port", str(free_port()), str(SCRIPT), *args]
    else:
        ds = Path(sys.executable).parent / "deepspeed"
        cmd = [str(ds), "--num_gpus", "2", "--master_port", str(free_port()), str(SCRIPT), *args, "--deepspeed", "zero3"]
    r = _run(cmd)
    assert "ZeRO-3, parameters partitioned" in r.stderr + r.stdout
    a = load_file(out / "adapter_model.safetensors")
    b = load_file(runs["lora"][1] / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=ATOL), (k, (a[k] - b[k]).abs().max())
