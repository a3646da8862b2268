"""Backward truncation: identical gradients, and no backward below the window."""

import pytest
import torch

from midblock_plugin import MidBlockConfig
from midblock_plugin.adapters import lora_config
from midblock_plugin.architecture import find_decoder_layers
from midblock_plugin.plan import build_plan
from midblock_plugin.testing import tiny_model
from midblock_plugin.training import BackwardTruncation


def _peft_model(window_first_layer_check=True, mode="lora"):
    from peft import get_peft_model

    torch.manual_seed(0)
    model = tiny_model("llama", num_layers=8, seed=1)
    plan = build_plan(model, MidBlockConfig(rank=4, lora_dropout=0.0, mode=mode))
    assert plan.layers[0] == 1 and plan.layers == list(range(1, 6))
    if mode == "lora":
        model = get_peft_model(model, lora_config(plan, init_lora_weights=False))
    else:
        from midblock_plugin.adapters import apply_full_mode

        apply_full_mode(model, plan)
    return model, plan


def _grads_and_probe(reentrant, truncate, mode="lora"):
    model, plan = _peft_model(mode=mode)
    model.train()
    # what transformers' Trainer does when gradient checkpointing is on (hooks included)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
    model.enable_input_require_grads()
    trunc = None
    if truncate:
        trunc = BackwardTruncation(plan.layers[0], reentrant=reentrant)
        assert trunc.install(model)
        assert trunc.removed_input_hooks >= 1
    seen = {}
    below = find_decoder_layers(model)[1][plan.layers[0] - 1]
    h = below.register_forward_hook(
        lambda m, a, out: seen.__setitem__("requires_grad", (out[0] if isinstance(out, tuple) else out).requires_grad)
    )
    ids = torch.arange(5, 37).view(2, 16)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    h.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads, seen["requires_grad"]


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_gradients_identical_with_and_without_truncation(reentrant, mode):
    loss_a, grads_a, below_a = _grads_and_probe(reentrant, truncate=False, mode=mode)
    loss_b, grads_b, below_b = _grads_and_probe(reentrant, truncate=True, mode=mode)
    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for n in grads_a:
        assert torch.equal(grads_a[n], grads_b[n]), n
    assert any(g.abs().sum() > 0 for g in grads_b.values())
    # untruncated, the layer below the window is part of the backward graph; truncated, it is not
    assert below_a is True
    assert below_b is False


def test_truncation_not_applied_when_something_below_trains():
    model, plan = _peft_model(mode="full")
    model.model.embed_tokens.weight.requires_grad_(True)
    assert not BackwardTruncation(plan.layers[0], reentrant=False).applicable(model)
    assert not BackwardTruncation(0, reentrant=False).applicable(model)


@pytest.mark.parametrize("reentrant", [False, True])
def test_sfttrainer_with_checkpointing_same_losses(tmp_path, reentrant):
    from tests.test_trl import train

    kwargs = dict(gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": reentrant}, steps=3)
    base_mb = dict(rank=4, lora_dropout=0.0)
    t1, cb1, _ = train(
        "llama", "lora", tmp_path / "a", mb=MidBlockConfig(truncate_backward=False, **base_mb), **kwargs
    )
    t2, cb2, _ = train("llama", "lora", tmp_path / "b", mb=MidBlockConfig(**base_mb), **kwargs)
    assert cb1.truncation is None
    assert cb2.truncation is not None and cb2.truncation.removed_input_hooks >= 1
    losses1 = [e["loss"] for e in t1.state.log_history if "loss" in e]
    losses2 = [e["loss"] for e in t2.state.log_history if "loss" in e]
    assert len(losses1) == 3 and losses1 == losses2
