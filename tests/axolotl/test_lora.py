"""``adapter: midblock`` in LoRA mode through ``python -m axolotl.cli.train``: the saved
adapter, the hook order, gradient checkpointing, and Axolotl's merge command."""

from __future__ import annotations

import json
import re

import pytest

from tests.axolotl.helpers import MATCHED_RANK, NUM_LAYERS, RANK, WINDOW, changed_tensors, layer_of, load_state


pytestmark = pytest.mark.axolotl


def test_adapter_config_names_the_window_layers_and_matched_rank(lora_run):
    cfg = json.loads((lora_run.output_dir / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA"
    assert cfg["layers_to_transform"] == WINDOW
    assert cfg["layers_pattern"] in ("layers", ["layers"])
    assert cfg["r"] == MATCHED_RANK == 6  # floor(4 * 5 / 3): the rank sum of uniform r=4
    assert cfg["lora_alpha"] == pytest.approx(2 * RANK * MATCHED_RANK / RANK)  # alpha/r kept (ratio policy)
    assert sorted(cfg["target_modules"]) == ["self_attn.q_proj", "self_attn.v_proj"]
    assert cfg["lora_dropout"] == 0.0  # Axolotl's default applies


def test_adapter_weights_exist_only_in_window_layers_and_were_trained(lora_run):
    state = load_state(lora_run.output_dir / "adapter_model.safetensors")
    assert {layer_of(k) for k in state} == set(WINDOW)
    assert len(state) == len(WINDOW) * 2 * 2  # q_proj, v_proj x lora_A, lora_B
    for key, tensor in state.items():
        if "lora_A" in key:
            assert tensor.shape == (MATCHED_RANK, 64)
        if "lora_B" in key:
            assert tensor.abs().max() > 0, f"{key} is still zero: the adapter was not trained"


def test_plan_and_drift_written_by_the_shared_callback(lora_run):
    plan = json.loads((lora_run.output_dir / "midblock" / "plan.json").read_text())
    assert plan["layers"] == WINDOW and plan["num_layers"] == NUM_LAYERS
    assert plan["ranks"] == {str(i): MATCHED_RANK for i in WINDOW}
    drift = json.loads((lora_run.output_dir / "midblock" / "drift.json").read_text())
    assert drift["history"][-1]["step"] == 2
    assert {int(k) for k in drift["history"][-1]["weight_change"]} == set(WINDOW)
    assert "midblock plan: LlamaForCausalLM" in lora_run.output  # the summary, printed at trainer init
    # the per-layer drift goes to the logs' history (and so to W&B / TensorBoard), not the console line
    assert "midblock/weight_change/layer_02" not in lora_run.output
    history = json.loads((lora_run.output_dir / "checkpoint-1" / "trainer_state.json").read_text())["log_history"]
    assert any("midblock/weight_change/layer_02" in entry for entry in history)


def test_midblock_callback_is_bound_first_so_the_reporters_get_the_drift_metrics(lora_run):
    by_hook = {h["hook"]: h for h in lora_run.hooks}
    assert by_hook["add_callbacks_post_trainer"]["callbacks"][0] != "MidBlockCallback"  # as the trainer built it
    assert by_hook["post_trainer_create"]["callbacks"][0] == "MidBlockCallback"  # after callback.bind(trainer)
    assert "Call callback.bind(trainer)" not in lora_run.output


def test_checkpoints_hold_the_windowed_adapter(lora_run):
    cfg = json.loads((lora_run.output_dir / "checkpoint-1" / "adapter_config.json").read_text())
    assert cfg["layers_to_transform"] == WINDOW and cfg["r"] == MATCHED_RANK


def test_hooks_fire_in_the_expected_order(lora_run):
    hooks = [h["hook"] for h in lora_run.hooks]
    assert hooks == [
        "register",
        "get_input_args",
        "pre_model_load",
        "post_model_build",
        "pre_lora_load",
        "post_lora_load",
        "post_model_load",
        "get_trainer_cls",
        "add_callbacks_pre_trainer",
        "add_callbacks_post_trainer",
        "post_trainer_create",
        "create_lr_scheduler",
        "post_train",
        "post_train",
        "post_train_unload",
    ]


def test_hook_state_shows_our_adapter_applied_between_pre_and_post_lora_load(lora_run):
    by_hook = {h["hook"]: h for h in lora_run.hooks}
    assert by_hook["register"]["adapter"] == "midblock"  # the adapter name is kept, not renamed to lora
    assert by_hook["pre_lora_load"]["lora_layers"] == []
    assert by_hook["post_lora_load"]["model_class"].startswith("PeftModel")
    assert by_hook["post_lora_load"]["lora_layers"] == WINDOW
    assert by_hook["post_model_load"]["trainable_non_lora"] == 0
    assert "MidBlockCallback" in by_hook["add_callbacks_post_trainer"]["callbacks"]
    # the optimizer holds exactly the window's LoRA parameters: 3 layers x r x (q: 64+64, v: 64+32 with GQA)
    plan = json.loads((lora_run.output_dir / "midblock" / "plan.json").read_text())
    assert by_hook["create_lr_scheduler"]["optimizer_params"] == plan["trainable_params"] == 3 * 6 * (128 + 96)
    assert by_hook["post_train"]["plan_json"] is True


def test_gradient_checkpointing_truncates_backward_and_still_trains_the_window(lora_run, lora_gc_run):
    assert "'use_reentrant': False" in lora_gc_run.output or '"use_reentrant": false' in lora_gc_run.output
    post_train = [h for h in lora_gc_run.hooks if h["hook"] == "post_train"][0]
    assert post_train["truncated"] is True and post_train["truncation_reentrant"] is False
    assert post_train["removed_input_hooks"] >= 1  # Axolotl's enable_input_require_grads() hook is gone
    assert [h for h in lora_run.hooks if h["hook"] == "post_train"][0]["truncated"] is False  # no GC: not needed
    # gradients still reach the window: a non-zero gradient norm at every step, B moved off zero
    norms = [float(m) for m in re.findall(r"'grad_norm': '([0-9.e-]+)'", lora_gc_run.output)]
    assert len(norms) == 2 and all(n > 0 for n in norms), norms
    state = load_state(lora_gc_run.output_dir / "adapter_model.safetensors")
    assert {layer_of(k) for k in state} == set(WINDOW)
    assert all(t.abs().max() > 0 for k, t in state.items() if "lora_B" in k)


@pytest.mark.parametrize("method", ["memory_efficient", "legacy"])
def test_merge_lora_equals_base_plus_adapter(workspace, lora_run, method):
    """Axolotl's own merge command merges the adapter; the merged model computes base + adapter.
    ``legacy`` loads the model through the plugin's load_adapter (lora_model_dir) first."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = workspace.root / f"merge-{method}"
    merge = workspace.axolotl(
        "merge_lora",
        workspace.root / "lora.yml",
        f"--merge_method={method}",
        f"--lora_model_dir={lora_run.output_dir}",
        f"--output_dir={out}",
    ).check()
    merged_dir = out / "merged"
    if method == "legacy":  # the model went through MidBlockPlugin.pre_model_load / load_adapter
        assert "midblock: lora mode on layers 1-3 of 5, rank 6 per layer" in merge.output
    assert (merged_dir / "model.safetensors").exists(), merge.output[-3000:]

    ids = torch.randint(0, 500, (2, 24), generator=torch.Generator().manual_seed(0))
    base = AutoModelForCausalLM.from_pretrained(workspace.model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits
        peft_model = PeftModel.from_pretrained(base, str(lora_run.output_dir)).eval()
        adapter_logits = peft_model(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
        merged_logits = merged(input_ids=ids).logits
    assert (adapter_logits - base_logits).abs().max() > 1e-4  # the adapter changes the outputs
    torch.testing.assert_close(merged_logits, adapter_logits, rtol=1e-4, atol=1e-4)
    # and only the window's adapted projections changed
    changed = changed_tensors(
        load_state(workspace.model_dir / "model.safetensors"), load_state(merged_dir / "model.safetensors")
    )
    assert changed == {f"model.layers.{i}.self_attn.{p}_proj.weight" for i in WINDOW for p in "qv"}, sorted(changed)


def test_explicit_reentrant_gradient_checkpointing_trains(workspace):
    run = workspace.train(
        "lora-reentrant", gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": True}
    )
    assert run.returncode == 0, run.output[-3000:]
