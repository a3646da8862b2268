"""DeepSpeed ZeRO-3 with 2 CPU processes (gloo) through the TRL example: both modes.

Training completes; after gathering, only the window's layers changed; the saved
adapter / model matches a single-process run with the same seed, data and global batch.
The ZeRO-3 runs use gradient checkpointing, as the shipped 32B recipe does, in both modes
(``--reentrant`` and ``--no-reentrant``). One single-process reference per mode serves them:
in one process, checkpointing (either mode) leaves every gradient bit for bit what it is
without (``test_single_process_checkpointing_modes_give_identical_gradients``). The other
launchers (``accelerate launch``, ``deepspeed``, SLURM) run as two simulated nodes in
``tests/test_multinode.py``.
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
COMMON = [
    "--data",
    str(GSM8K_DIR / "train.jsonl"),
    "--num-examples",
    "16",
    "--max-steps",
    "2",
    "--optim",
    "sgd",
    "--lr",
    "0.5",
    "--seed",
    "7",
    "--lora-dropout",
    "0",
    "--sequential",
]
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
    # PYTHONFAULTHANDLER: a rank that dies on a signal (abort, segfault) prints its Python stacks
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1", **(env_extra or {}))
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def _torchrun(port, *args):
    return _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(port),
            str(SCRIPT),
            *args,
        ]
    )


def _single(*args):
    return _run([sys.executable, str(SCRIPT), *args])


#: The ZeRO-3 runs: (mode, use_reentrant); all with --gradient-checkpointing.
ZERO3_RUNS = [(mode, reentrant) for mode in ("lora", "full") for reentrant in (True, False)]


def _flag(reentrant):
    return "--reentrant" if reentrant else "--no-reentrant"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("zero3")
    # a saved model, so both runs start from the same weights (ZeRO-3 initialises from_config
    # models in its own order)
    model_dir = save_tiny(root / "model", "llama", num_layers=8, seed=7)
    out = {"model_dir": model_dir, "logs": {}}
    for mode in ("lora", "full"):
        # the reference: one process, no DeepSpeed, checkpointing as midblock chooses (non-reentrant)
        single_dir = root / f"{mode}-single"
        extra = EVAL if mode == "lora" else []
        _single(
            *COMMON,
            *extra,
            "--model",
            str(model_dir),
            "--mode",
            mode,
            "--batch-size",
            "4",
            "--gradient-checkpointing",
            "--output-dir",
            str(single_dir),
        )
        out[mode] = single_dir
    for mode, reentrant in ZERO3_RUNS:
        ds_dir = root / f"{mode}-ds-{'reentrant' if reentrant else 'nonreentrant'}"
        extra = EVAL if mode == "lora" and not reentrant else []  # the evaluation once, in the default mode
        r = _torchrun(
            free_port(),
            *COMMON,
            *extra,
            "--model",
            str(model_dir),
            "--mode",
            mode,
            "--batch-size",
            "2",
            "--deepspeed",
            "zero3",
            "--gradient-checkpointing",
            _flag(reentrant),
            "--output-dir",
            str(ds_dir),
        )
        out[mode, reentrant] = ds_dir
        out["logs"][mode, reentrant] = r.stderr + r.stdout
    return out


def _layer(name):
    parts = name.split(".")
    return int(parts[parts.index("layers") + 1]) if "layers" in parts else None


def _max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_single_process_checkpointing_modes_give_identical_gradients():
    """Why one single-process reference serves runs with any checkpointing: in one process,
    no checkpointing, reentrant and non-reentrant (each with the backward truncation the
    callback installs) give bit-identical losses and gradients, LoRA and full mode."""
    from midblock_plugin import MidBlockConfig
    from midblock_plugin.adapters import apply_full_mode, lora_config
    from midblock_plugin.plan import build_plan
    from midblock_plugin.testing import tiny_model
    from midblock_plugin.training import BackwardTruncation

    def grads(mode, reentrant):
        from peft import get_peft_model

        model = tiny_model("llama", num_layers=8, seed=1)
        plan = build_plan(model, MidBlockConfig(rank=4, lora_dropout=0.0, mode=mode))
        if mode == "lora":
            model = get_peft_model(model, lora_config(plan, init_lora_weights=False))
        else:
            apply_full_mode(model, plan)
        model.train()
        if reentrant is not None:  # what the Trainer and the callback do with checkpointing on
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
            model.enable_input_require_grads()
            assert BackwardTruncation(plan.layers[0], reentrant=reentrant).install(model)
        ids = torch.arange(5, 37).view(2, 16)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    for mode in ("lora", "full"):
        loss, ref = grads(mode, None)
        assert ref and any(g.abs().sum() > 0 for g in ref.values())
        for reentrant in (True, False):
            loss_c, got = grads(mode, reentrant)
            assert torch.equal(loss_c, loss) and got.keys() == ref.keys()
            for n in ref:
                assert torch.equal(got[n], ref[n]), (mode, reentrant, n)


@pytest.mark.parametrize("reentrant", [True, False], ids=["reentrant", "nonreentrant"])
def test_zero3_lora_with_checkpointing_matches_single_process(runs, reentrant):
    ds_dir, single_dir = runs["lora", reentrant], runs["lora"]
    log = runs["logs"]["lora", reentrant]
    # the mode asked for is the mode that ran: TRL's switch of PEFT + ZeRO-3 to reentrant is undone
    assert f"gradient checkpointing: {'reentrant' if reentrant else 'non-reentrant'} (as configured)" in log
    assert ("kept non-reentrant" in log) is (not reentrant)
    a, b = load_file(ds_dir / "adapter_model.safetensors"), load_file(single_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    assert {_layer(k) for k in a} == {1, 2, 3, 4, 5}  # L=8, window 0.2:0.8
    for k in a:
        assert a[k].shape == b[k].shape and a[k].numel() > 0  # full shapes, not partitions
    assert _max_diff(a, b) <= ATOL, _max_diff(a, b)
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)  # B moved from zero
    drift = json.loads((ds_dir / "midblock" / "drift.json").read_text())
    single = json.loads((single_dir / "midblock" / "drift.json").read_text())
    for layer, v in single["history"][-1]["weight_change"].items():
        assert drift["history"][-1]["weight_change"][layer] == pytest.approx(v, rel=1e-3)


def test_zero3_evaluation_equals_single_process(runs):
    ds_dir, single_dir = runs["lora", False], runs["lora"]
    a = json.loads((ds_dir / "eval" / "gsm8k.json").read_text())
    b = json.loads((single_dir / "eval" / "gsm8k.json").read_text())
    assert a["distributed"]["world_size"] == 2 and a["n_samples"] == b["n_samples"] == 3
    assert a["metrics"] == b["metrics"]

    def responses(d):
        return [json.loads(l)["response"] for l in (d / "eval" / "gsm8k.samples.jsonl").read_text().splitlines()]

    assert responses(ds_dir) == responses(single_dir)  # generation for generation


@pytest.mark.parametrize("reentrant", [True, False], ids=["reentrant", "nonreentrant"])
def test_zero3_full_with_checkpointing_only_window_changed_and_matches(runs, reentrant):
    ds_dir, single_dir = runs["full", reentrant], runs["full"]
    log = runs["logs"]["full", reentrant]
    assert f"gradient checkpointing: {'reentrant' if reentrant else 'non-reentrant'} (as configured)" in log
    assert "kept non-reentrant" not in log  # no PEFT: TRL leaves the mode alone
    a, b = load_file(ds_dir / "model.safetensors"), load_file(single_dir / "model.safetensors")
    init = load_file(runs["model_dir"] / "model.safetensors")
    changed = {k for k in a if not torch.equal(a[k], init[k])}
    assert changed and {_layer(k) for k in changed} == {1, 2, 3, 4, 5}
    assert a.keys() == init.keys() == b.keys()
    for k in a:
        assert a[k].shape == init[k].shape  # full shapes, not partitions
    assert _max_diff(a, b) <= ATOL, _max_diff(a, b)
    plan = json.loads((ds_dir / "midblock" / "plan.json").read_text())
    # trainable count read from ds_numel on partitioned parameters equals the plan's exact count
    assert plan["trainable_params_on_model"] == plan["trainable_params"]
