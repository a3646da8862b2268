"""``adapter: midblock`` with ``deepspeed: midblock:zero3`` under Axolotl, 2 CPU processes.

Both modes train through ``python -m torch.distributed.run --nproc_per_node 2 -m
axolotl.cli.train``. The saved adapter / model holds full-size tensors in which only the
window changed, and it matches a plain single-process Axolotl run of the same config; without
gradient checkpointing (with a GSM8K evaluation) and with it, in the checkpointing mode the plugin
chooses for this DeepSpeed (reentrant on 0.18.x under ZeRO-3).

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

import pytest
import torch

from tests.axolotl.helpers import NUM_LAYERS, PLUGIN, RECORDER, WINDOW, Run, changed_tensors, layer_of, load_state


pytestmark = [pytest.mark.axolotl, pytest.mark.slow]

#: |ZeRO-3 (2 processes) - single process| bound on every saved tensor. float32 on CPU, plain SGD
#: (the update is linear in the gradient, so unlike Adam's first, sign-like steps it does not
#: amplify rounding); the runs differ only in summation order (gradient averaging over 2 ranks
#: vs a batch of 2, partitioned vs whole tensors). Measured: max 2e-8 (LoRA), 6e-8 (full mode); with
#: gradient checkpointing (reentrant under ZeRO-3 on DeepSpeed 0.18.9, non-reentrant alone) 1.1e-8 (LoRA),
#: 1.7e-8 (full mode); the training updates themselves are 1e-4 to 3e-2.
ATOL = 1e-5
#: Both runs: SGD, lr 0.5 (2 steps move LoRA B and the window's v/o/down projections by 1e-4 to 3e-2;
#: q/k of a random tiny model get small gradients: 7e-5).
#: weight_decay: DeepSpeed keeps every parameter that is trainable when the engine is built in its
#: optimizer and decays it even with a zero gradient, so frozen layers stay unchanged in the saved
#: model only if the plugin froze them before deepspeed.initialize.
COMMON = {
    "optimizer": "sgd",
    "learning_rate": 0.5,
    "weight_decay": 0.1,
    "lora_dropout": 0,
    "curriculum_sampling": True,
    "seed": 42,
}


def _torchrun(workspace, name: str, env: dict | None = None, **overrides) -> Run:
    """The workspace config with ZeRO-3 (``deepspeed: midblock:zero3``) on 2 processes."""
    cfg = workspace.config(name, deepspeed="midblock:zero3", micro_batch_size=1, **COMMON, **overrides)
    return workspace.torchrun(workspace.write(cfg, name), env=env).check()


@pytest.fixture(scope="module")
def zero3_runs(workspace):
    """{mode: (2-process ZeRO-3 run, single-process run)}; the LoRA pair also evaluates GSM8K."""
    pytest.importorskip(
        "deepspeed",
        reason="DeepSpeed is not installed in this environment: "
        "pip install --no-build-isolation 'deepspeed>=0.18.6,<0.19' (Axolotl 0.19's deepspeed extra)",
    )
    from midblock_plugin.testing import GSM8K_DIR

    evaluation = {
        "limit": 2,
        "num_fewshot": 1,
        "max_gen_toks": 8,
        "data_dir": str(GSM8K_DIR),
        "save_samples": True,
        "batch_size": 1,
    }
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
    a, b = (
        load_state(ds.output_dir / "adapter_model.safetensors"),
        load_state(single.output_dir / "adapter_model.safetensors"),
    )
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


def test_zero3_evaluation_is_sharded_and_matches_single_process(zero3_runs):
    """midblock_eval under 2-process ZeRO-3: the ranks split the questions, in step, on the partitioned model
    before the save (Axolotl destroys the process group before its last post_train call);
    rank 0 writes the same report and generations as the single-process run."""
    ds, single = zero3_runs["lora"]
    report = json.loads((ds.output_dir / "eval" / "gsm8k.json").read_text())
    reference = json.loads((single.output_dir / "eval" / "gsm8k.json").read_text())
    assert report["distributed"] == {
        "mode": "sharded",
        "world_size": 2,
        "partitioner": "deepspeed-zero3",
        "rows_per_rank": [1, 1],
        "generate_calls_per_rank": [1, 1],
    }
    assert reference["distributed"]["mode"] == "single"
    assert report["metrics"] == reference["metrics"] and report["n_samples"] == reference["n_samples"] == 2
    assert "(after training, before the save: multi-process run)" in ds.output
    assert not (ds.output_dir / "eval" / "error.json").exists()

    def rows(run):
        lines = (run.output_dir / "eval" / "gsm8k.samples.jsonl").read_text().splitlines()
        return [(r["doc_id"], r["prompt"], r["response"]) for r in map(json.loads, lines)]

    assert rows(ds) == rows(single)


# --------------------------------------------------------------------------- with gradient checkpointing
# PEFT / frozen layers + ZeRO-3 + non-reentrant checkpointing fail on the first backward before
# DeepSpeed 0.19.3 ("CheckpointError: Recomputed values ... different metadata", saved shape [64],
# recomputed [0]); the plugin then chooses reentrant checkpointing (tests/axolotl/test_checkpointing.py).
# Each pair: 2 processes with ZeRO-3 and a single process, both with gradient checkpointing and the
# mode the plugin chooses for each (on DeepSpeed 0.18.9: reentrant under ZeRO-3, non-reentrant alone),
# which compute the same gradients. The hook recorder reports the truncation each rank installed.


@pytest.fixture(scope="module")
def zero3_gc_runs(workspace):
    """{mode: (2-process ZeRO-3 run, single-process run)}, gradient checkpointing on, no use_reentrant set."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed in this environment")
    runs = {}
    for mode in ("lora", "full"):
        extra = {"midblock_mode": mode, "gradient_checkpointing": True, "plugins": [PLUGIN, RECORDER]}
        pair = []
        for name, launch in ((f"z3gc-{mode}", "torchrun"), (f"z3gc-{mode}-single", "single")):
            log = workspace.root / f"{name}-hooks.jsonl"
            env = {"MIDBLOCK_HOOK_LOG": str(log)}
            if launch == "torchrun":
                run = _torchrun(workspace, name, env=env, **extra)
            else:
                run = workspace.train(name, env=env, micro_batch_size=2, **COMMON, **extra).check()
            run.hooks = [json.loads(line) for line in log.read_text().splitlines()]
            pair.append(run)
        runs[mode] = tuple(pair)
    return runs


def _saved(run, mode):
    return load_state(run.output_dir / ("adapter_model.safetensors" if mode == "lora" else "model.safetensors"))


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_zero3_gradient_checkpointing_uses_the_chosen_mode_and_matches_single_process(workspace, zero3_gc_runs, mode):
    from midblock_plugin.compat import deepspeed_version, zero3_nonreentrant_ok

    ds, single = zero3_gc_runs[mode]
    plan = _assert_zero3_ran(ds)
    assert plan["mode"] == mode and plan["layers"] == WINDOW
    reentrant = not zero3_nonreentrant_ok()  # DeepSpeed 0.18.9 (Axolotl 0.19's extra): True
    shown = ".".join(map(str, deepspeed_version()))
    if reentrant:
        assert (
            f"midblock: gradient checkpointing use_reentrant: true; DeepSpeed ZeRO-3, reentrant: "
            f"DeepSpeed {shown} < 0.19.3"
        ) in ds.output
    else:
        assert "midblock: gradient checkpointing use_reentrant: false; DeepSpeed ZeRO-3, non-reentrant" in ds.output
    assert "midblock: gradient checkpointing use_reentrant: false; non-reentrant (the default)" in single.output
    assert "CheckpointError" not in ds.output
    # both ranks checkpointed in that mode, with the backward truncated below the window
    for run, expected in ((ds, reentrant), (single, False)):
        post_train = [h for h in run.hooks if h["hook"] == "post_train"]  # Axolotl calls it twice per process
        assert {h["rank"] for h in post_train} == ({0, 1} if run is ds else {0}), post_train
        assert all(h["truncated"] is True and h["truncation_reentrant"] is expected for h in post_train), post_train
    # 2 steps trained on both ranks
    assert json.loads((ds.output_dir / "midblock" / "drift.json").read_text())["history"][-1]["step"] == 2

    a, b = _saved(ds, mode), _saved(single, mode)
    assert a.keys() == b.keys()
    if mode == "lora":
        assert {layer_of(k) for k in a} == set(WINDOW)
        assert sum(t.numel() for t in a.values()) == plan["trainable_params"]  # gathered, full size
        assert all(t.abs().max() > 10 * ATOL for k, t in a.items() if "lora_B" in k)  # B trained off zero
    else:
        base = load_state(workspace.model_dir / "model.safetensors")
        assert a.keys() == base.keys()
        assert all(a[k].shape == base[k].shape for k in a)  # full size, not partitions
        changed = changed_tensors(base, a)
        assert {layer_of(k) for k in changed} == set(WINDOW), sorted(changed)
        assert changed_tensors(base, b) == changed
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    print(f"zero3 + gradient checkpointing ({mode}): max |2 processes - 1 process| = {diff:.3g}")
    for key in a:
        assert a[key].shape == b[key].shape and a[key].numel() > 0, key
        assert torch.allclose(a[key], b[key], rtol=0, atol=ATOL), (key, (a[key] - b[key]).abs().max())
