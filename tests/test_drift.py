"""Drift monitor: values equal the direct computation; logs reach every reporter; no model copy in LoRA mode."""

import math

import torch
from transformers import TrainerCallback

from midblock_plugin import MidBlockConfig
from tests.test_trl import L, train


class Recorder(TrainerCallback):
    """Stands where a reporter (wandb, tensorboard) stands: before our callback in the list."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


def test_lora_drift_equals_direct_computation_and_reaches_reporters(tmp_path):
    rec = Recorder()
    trainer, cb, before = train("llama", "lora", tmp_path, steps=3, extra_callbacks=[rec])
    # a callback listed before ours still received the metrics (bind() moves ours to the front)
    step_logs = [l for l in rec.logs if "loss" in l]
    assert len(step_logs) == 3
    assert all("midblock/weight_change/layer_02" in l and "midblock/grad_norm/layer_02" in l for l in step_logs)
    assert all("midblock/weight_change/layer_02" in e for e in trainer.state.log_history if "loss" in e)
    # LoRA mode keeps no copy of any weight: W_0 is the frozen base
    assert cb.monitor._initial == {}
    merged = trainer.model.merge_and_unload()
    for i in cb.plan.layers:
        num = den = 0.0
        for t in ("q_proj", "k_proj", "v_proj", "o_proj"):
            name = f"model.layers.{i}.self_attn.{t}.weight"
            w = dict(merged.named_parameters())[name].detach()
            num += float((w - before[name]).pow(2).sum())
            den += float(before[name].pow(2).sum())
        assert math.isclose(step_logs[-1][f"midblock/weight_change/layer_{i:02d}"], math.sqrt(num / den), rel_tol=1e-4)
    # nothing outside the window is reported
    assert not any(k.endswith(("layer_00", "layer_04", "layer_05")) for k in step_logs[-1])


def test_full_drift_equals_direct_computation(tmp_path):
    trainer, cb, before = train("qwen2", "full", tmp_path, steps=2)
    last = [e for e in trainer.state.log_history if "loss" in e][-1]
    params = dict(trainer.model.named_parameters())
    for i in cb.plan.layers:
        names = [n for n in params if n.startswith(f"model.layers.{i}.")]
        num = sum(float((params[n].detach() - before[n]).pow(2).sum()) for n in names)
        den = sum(float(before[n].pow(2).sum()) for n in names)
        assert math.isclose(last[f"midblock/weight_change/layer_{i:02d}"], math.sqrt(num / den), rel_tol=1e-4)
    # the snapshot holds the window's parameters only
    kept = sum(t.numel() for layer in cb.monitor._initial.values() for _, t in layer)
    assert kept == cb.plan.trainable_params < cb.plan.full_params


def test_grad_norms_match_autograd():
    from peft import get_peft_model

    from midblock_plugin.adapters import lora_config
    from midblock_plugin.plan import build_plan
    from midblock_plugin.testing import tiny_model
    from midblock_plugin.training import DriftMonitor

    model = tiny_model("mistral", num_layers=L)
    plan = build_plan(model, MidBlockConfig(rank=4))
    model = get_peft_model(model, lora_config(plan, init_lora_weights=False))
    mon = DriftMonitor(model, plan.layers, "lora")
    mon.snapshot()
    ids = torch.arange(4, 20).unsqueeze(0)
    model(input_ids=ids, labels=ids).loss.backward()
    norms = mon.grad_norms()
    assert set(norms) == set(plan.layers)
    for i in plan.layers:
        grads = [p.grad for n, p in model.named_parameters() if p.requires_grad and f".layers.{i}." in n]
        assert math.isclose(norms[i], math.sqrt(sum(float(g.pow(2).sum()) for g in grads)), rel_tol=1e-6)
    # init_lora_weights=False: the adapter starts non-zero, so the change is already positive
    assert all(v > 0 for v in mon.weight_change().values())


def test_unbound_callback_says_once_that_reporters_miss_the_metrics(tmp_path, caplog):
    import logging
    from types import SimpleNamespace

    rec = Recorder()
    trainer, cb, _ = train("llama", "lora", tmp_path, steps=1, extra_callbacks=[rec], bind=False)
    # not bound: the recorder (standing for a reporter) ran before us and missed the metrics ...
    assert not any("midblock/weight_change/layer_02" in l for l in rec.logs)
    # ... while the log history has them
    assert any("midblock/weight_change/layer_02" in e for e in trainer.state.log_history)
    with caplog.at_level(logging.WARNING, logger="midblock_plugin"):
        cb._check_reporters(SimpleNamespace(report_to=["wandb"]))
        cb._check_reporters(SimpleNamespace(report_to=["wandb"]))
    warnings = [r for r in caplog.records if "callback.bind(trainer)" in r.getMessage()]
    assert len(warnings) == 1 and "wandb" in warnings[0].getMessage()
