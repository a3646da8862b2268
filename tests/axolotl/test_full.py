"""``midblock_mode: full`` through ``python -m axolotl.cli.train``: a full model is saved,
and only the window's layers differ from the base model."""

from __future__ import annotations

import json
import re

import pytest

from tests.axolotl.helpers import NUM_LAYERS, WINDOW, changed_tensors, layer_of, load_state


pytestmark = pytest.mark.axolotl


def _assert_only_window_changed(workspace, run):
    base = load_state(workspace.model_dir / "model.safetensors")
    tuned = load_state(run.output_dir / "model.safetensors")
    changed = changed_tensors(base, tuned)
    assert changed, "full mode trained nothing"
    assert {layer_of(k) for k in changed} == set(WINDOW), sorted(changed)
    for i in WINDOW:  # every weight matrix of every window layer moved
        for proj in ("self_attn.q_proj", "self_attn.o_proj", "mlp.down_proj"):
            assert f"model.layers.{i}.{proj}.weight" in changed
    for key in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"):
        if key in base:
            assert key not in changed, key


@pytest.mark.parametrize("run_name", ["full_run", "full_gc_run"])
def test_full_mode_saves_a_full_model_with_only_window_layers_changed(workspace, request, run_name):
    run = request.getfixturevalue(run_name)
    assert (run.output_dir / "model.safetensors").exists()
    assert not (run.output_dir / "adapter_config.json").exists()
    _assert_only_window_changed(workspace, run)
    norms = [float(m) for m in re.findall(r"'grad_norm': '([0-9.e-]+)'", run.output)]
    assert len(norms) == 2 and all(n > 0 for n in norms), norms


def test_full_mode_optimizer_holds_only_window_parameters(full_run):
    plan = json.loads((full_run.output_dir / "midblock" / "plan.json").read_text())
    assert plan["mode"] == "full" and plan["layers"] == WINDOW and plan["num_layers"] == NUM_LAYERS
    by_hook = {h["hook"]: h for h in full_run.hooks}
    assert by_hook["post_lora_load"]["model_class"] == "LlamaForCausalLM"  # no PEFT wrapper in full mode
    assert by_hook["create_lr_scheduler"]["optimizer_params"] == plan["trainable_params"]
    assert "lora_r" in full_run.output and "are ignored" in full_run.output  # the warning about LoRA keys


def test_full_mode_gradient_checkpointing_truncates_backward(full_gc_run):
    post_train = [h for h in full_gc_run.hooks if h["hook"] == "post_train"][0]
    assert post_train["truncated"] is True and post_train["truncation_reentrant"] is False
