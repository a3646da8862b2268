"""``adapter: midblock`` with ``deepspeed: midblock:zero3`` under Axolotl, 2 CPU processes.

Both modes train through ``python -m torch.distributed.run --nproc_per_node 2 -m
axolotl.cli.train``. The saved adapter / model holds full-size tensors in which only the
window changed, and it matches a plain single-process Axolotl run of the same config.

CPU-only test scaffolding (``tests/axolotl/zero3_shim/sitecustomize.py``, put on
``PYTHONPATH`` here, never shipped): gloo instead of Axolotl's hard-coded NCCL, and a gloo
backend for accelerate's first ``PartialState``. ``DS_ACCELERATOR=cpu`` selects DeepSpeed's
CPU accelerator. On GPUs none of this is needed.

Comparable runs: both start from the same saved base model (``workspace.model_dir``) and
the same seed. The plugin seeds the LoRA initialisation with ``seed``, so the initial
adapter does not depend on how the model was loaded (zero.Init or not). Both use plain
SGD with weight decay, ``lora_dropout: 0``, sequential batches (``curriculum_sampling: true``) and the same
global batch (micro batch 1 x 2 processes vs 2 x 1 process).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch

from tests.axolotl.helpers import ENV, NUM_LAYERS, ROOT, WINDOW, Run, changed_tensors, layer_of, load_state


pytestmark = [pytest.mark.axolotl, pytest.mark.slow]

SHIM = ROOT / "tests" / "axolotl" / "zero3_shim"
#: |ZeRO-3 (2 processes) - single process| bound on every saved tensor. float32 on CPU, plain SGD
#: (the update is linear in the gradient, so unlike Adam's first, sign-like steps it does not
#: amplify rounding); the runs differ only in summation order (gradient averaging over 2 ranks
#: vs a batch of 2, partitioned vs whole tensors). Measured: max 2e-8 (LoRA), 6e-8 (full mode);
#: the training updates themselves are 1e-4 to 3e-2.
ATOL = 1e-5
#: Both runs: SGD, lr 0.5 (2 steps move LoRA B and the window's v/o/down projections by 1e-4 to 3e-2;
#: q/k of a random tiny model get small gradients: 7e-5).
#: weight_decay: DeepSpeed keeps every parameter that is trainable when the engine is built in its
#: optimizer and decays it even with a zero gradient, so frozen layers stay unchanged in the saved
#: model only if the plugin froze them before deepspeed.initialize.
COMMON = {"optimizer": "sgd", "learning_rate": 0.5, "weight_decay": 0.1, "lora_dropout": 0,
          "curriculum_sampling": True, "seed": 42}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(workspace, name: str, **overrides) -> Run:
    """``python -m torch.distributed.run --nproc_per_node 2 -m axolotl.cli.train`` with ZeRO-3."""
    cfg = workspace.config(name, deepspeed="midblock:zero3", micro_batch_size=1, **COMMON, **overrides)
    path = workspace.write(cfg, name)
    env = {**os.environ, **ENV, "DS_ACCELERATOR": "cpu", "MIDBLOCK_CPU_GLOO_SHIM": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(SHIM), str(ROOT)])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "axolotl.cli.train", str(path)]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=workspace.root, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    return Run(proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start, workspace.root / name).check()


@pytest.fixture(scope="module")
def zero3_runs(workspace):
    """{mode: (2-process ZeRO-3 run, single-process run)}; the LoRA pair also evaluates GSM8K."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed in this environment: "
                        "pip install --no-build-isolation 'deepspeed>=0.18.6,<0.19' (Axolotl 0.19's deepspeed extra)")
    from midblock_plugin.testing import GSM8K_DIR

    evaluation = {"limit": 2, "num_fewshot": 1, "max_gen_toks": 8, "data_dir": str(GSM8K_DIR), "save_samples": True}
    runs = {}
    for mode in ("lora", "full"):
        extra = {"midblock_mode": mode, **({"midblock_eval": evaluation} if mode == "lora" else {})}
        ds = _torchrun(workspace, f"z3-{mode}", **extra)
        single = workspace.train(f"z3-{mode}-single", micro_batch_size=2, **COMMON, **extra).check()
        runs[mode] = (ds, single)
    return runs


def _assert_zero3_ran(run):
    assert "deepspeed      ZeRO-3, parameters partitioned" in run.output  # MidBlockCallback's plan summary
    assert '"world_size": 2' in run.output  # Axolotl's resolved config
    plan = json.loads((run.output_dir / "midblock" / "plan.json").read_text())
    # counted from ds_numel on the partitioned model: the full count, not a rank's share
    assert plan["trainable_params_on_model"] == plan["trainable_params"] > 0
    return plan


def test_zero3_lora_adapter_is_full_size_window_only_and_matches_single_process(zero3_runs):
    ds, single = zero3_runs["lora"]
    plan = _assert_zero3_ran(ds)
    assert plan["layers"] == WINDOW and plan["num_layers"] == NUM_LAYERS
    a, b = load_state(ds.output_dir / "adapter_model.safetensors"), load_state(single.output_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys() and {layer_of(k) for k in a} == set(WINDOW)
    assert sum(t.numel() for t in a.values()) == plan["trainable_params"]  # gathered: full shapes, not partitions
    for key in a:
        assert a[key].shape == b[key].shape and a[key].numel() > 0, key
        assert torch.allclose(a[key], b[key], rtol=0, atol=ATOL), (key, (a[key] - b[key]).abs().max())
    assert all(t.abs().max() > 10 * ATOL for k, t in a.items() if "lora_B" in k)  # B trained off zero, well above ATOL
    assert json.loads((ds.output_dir / "adapter_config.json").read_text())["layers_to_transform"] == WINDOW


def test_zero3_full_mode_changes_only_the_window_and_matches_single_process(workspace, zero3_runs):
    ds, single = zero3_runs["full"]
    plan = _assert_zero3_ran(ds)
    assert plan["mode"] == "full" and plan["layers"] == WINDOW
    assert not (ds.output_dir / "model.safetensors.index.json").exists()
    base = load_state(workspace.model_dir / "model.safetensors")
    a, b = load_state(ds.output_dir / "model.safetensors"), load_state(single.output_dir / "model.safetensors")
    assert a.keys() == base.keys() == b.keys()
    for key in a:
        assert a[key].shape == base[key].shape and a[key].dtype == base[key].dtype, key
        assert torch.allclose(a[key], b[key], rtol=0, atol=ATOL), (key, (a[key] - b[key]).abs().max())
    changed = changed_tensors(base, a)
    assert {layer_of(k) for k in changed} == set(WINDOW), sorted(changed)
    projections = [f"{m}.{p}_proj" for m, ps in (("self_attn", "qkvo"), ("mlp", ("gate", "up", "down"))) for p in ps]
    for i in WINDOW:  # every weight matrix of every window layer moved
        assert {f"model.layers.{i}.{proj}.weight" for proj in projections} <= changed
        for proj in ("self_attn.v_proj", "self_attn.o_proj", "mlp.down_proj"):  # these by 2e-3 or more: far above ATOL
            key = f"model.layers.{i}.{proj}.weight"
            assert (a[key] - base[key]).abs().max() > 100 * ATOL, key
    assert changed_tensors(base, b) == changed


def test_zero3_evaluation_runs_in_lockstep_and_matches_single_process(zero3_runs):
    """midblock_eval under 2-process ZeRO-3: both ranks evaluate the partitioned model together,
    before the save (Axolotl destroys the process group before its last post_train call);
    rank 0 writes the same report and generations as the single-process run."""
    ds, single = zero3_runs["lora"]
    report = json.loads((ds.output_dir / "eval" / "gsm8k.json").read_text())
    reference = json.loads((single.output_dir / "eval" / "gsm8k.json").read_text())
    assert report["distributed"] == {"mode": "lockstep", "world_size": 2}
    assert reference["distributed"]["mode"] == "single"
    assert report["metrics"] == reference["metrics"] and report["n_samples"] == reference["n_samples"] == 2
    assert "(after training, before the save: multi-process run)" in ds.output
    assert not (ds.output_dir / "eval" / "error.json").exists()

    def rows(run):
        lines = (run.output_dir / "eval" / "gsm8k.samples.jsonl").read_text().splitlines()
        return [(r["doc_id"], r["prompt"], r["response"]) for r in map(json.loads, lines)]

    assert rows(ds) == rows(single)
