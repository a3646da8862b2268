"""QLoRA through ``python -m axolotl.cli.train``: ``adapter: midblock`` with ``load_in_4bit: true``
(or ``load_in_8bit: true``) on the CPU (bitsandbytes >= 0.49 quantizes and runs on the CPU).

Axolotl builds a ``BitsAndBytesConfig`` and calls ``prepare_model_for_kbit_training`` for
``adapter: lora`` / ``qlora`` only; for ``adapter: midblock`` the plugin does both (``register``
and ``post_model_build``). The 4-bit run uses reentrant checkpointing, so
``prepare_model_for_kbit_training`` registers its ``enable_input_require_grads`` hook: backward
truncation must remove it, or every layer below the window would run a backward
(``tests/axolotl/qlora_probe.py`` watches the hidden states entering the decoder stack).
"""

from __future__ import annotations

import json
import re

import pytest

from tests.axolotl.helpers import (
    MATCHED_RANK,
    PLUGIN,
    RECORDER,
    WINDOW,
    axolotl_load_error,
    axolotl_validate,
    layer_of,
    load_state,
)


pytestmark = pytest.mark.axolotl
pytest.importorskip("bitsandbytes")

PROBE = "tests.axolotl.qlora_probe.QloraProbePlugin"
#: the window's LoRA: 3 layers x rank 6 x (q_proj 64+64, v_proj 64+32 with GQA)
TRAINABLE = len(WINDOW) * MATCHED_RANK * (128 + 96)


def _qlora_run(workspace, name, **overrides):
    hooks, probe = workspace.root / f"{name}-hooks.jsonl", workspace.root / f"{name}-probe.jsonl"
    run = workspace.train(
        name,
        env={"MIDBLOCK_HOOK_LOG": str(hooks), "MIDBLOCK_QLORA_LOG": str(probe)},
        plugins=[PLUGIN, RECORDER, PROBE],
        **overrides,
    ).check()
    run.hooks = {}
    for path in (hooks, probe):  # the last record of each hook (post_train is called twice)
        for line in path.read_text().splitlines():
            record = json.loads(line)
            run.hooks.setdefault(record["hook"], {}).update(record)
    return run


@pytest.fixture(scope="module")
def qlora4_run(workspace):
    """4-bit NF4 base, reentrant gradient checkpointing (the input-grad hook is registered)."""
    return _qlora_run(
        workspace,
        "qlora4",
        load_in_4bit=True,
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": True},
    )


@pytest.fixture(scope="module")
def qlora8_run(workspace):
    """8-bit base, the plugin's default (non-reentrant) checkpointing."""
    return _qlora_run(workspace, "qlora8", load_in_8bit=True, gradient_checkpointing=True)


def _unquantized_plan(workspace, run):
    """The plan of the same config on the model loaded without quantization."""
    from transformers import AutoModelForCausalLM

    from midblock_plugin import MidBlockConfig
    from midblock_plugin.plan import build_plan

    saved = json.loads((run.output_dir / "midblock" / "plan.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(workspace.model_dir)
    return saved, build_plan(model, MidBlockConfig(**saved["midblock_config"])).to_json_dict(), model


@pytest.mark.parametrize(
    ("run_name", "linear", "weight"),
    [("qlora4_run", "Linear4bit", "Params4bit"), ("qlora8_run", "Linear8bitLt", "Int8Params")],
)
def test_quantized_base_trains_only_the_windows_lora(workspace, request, run_name, linear, weight):
    run = request.getfixturevalue(run_name)
    built = run.hooks["post_model_build"]
    assert (built["q_proj"], built["weight"]) == (linear, weight)  # the base really is quantized
    assert "prepared for LoRA training (peft.prepare_model_for_kbit_training)" in run.output
    cfg = json.loads((run.output_dir / "adapter_config.json").read_text())
    assert cfg["layers_to_transform"] == WINDOW and cfg["r"] == MATCHED_RANK
    state = load_state(run.output_dir / "adapter_model.safetensors")
    assert {layer_of(k) for k in state} == set(WINDOW) and len(state) == len(WINDOW) * 2 * 2
    assert all(t.abs().max() > 0 for k, t in state.items() if "lora_B" in k), "the adapter was not trained"
    # nothing but the window's LoRA trains: no base weight, norm or embedding in the optimizer
    assert run.hooks["post_model_load"]["trainable_non_lora"] == 0
    assert run.hooks["create_lr_scheduler"]["optimizer_params"] == TRAINABLE
    norms = [float(m) for m in re.findall(r"'grad_norm': '([0-9.e-]+)'", run.output)]
    assert len(norms) == 2 and all(n > 0 for n in norms), norms


def test_plan_counts_quantized_parameters_unpacked(workspace, qlora4_run):
    """Params4bit stores two weights per byte (its numel() is half of them, its shape (n/2, 1));
    the plan of the quantized model counts what the unquantized model has."""
    saved, plain, model = _unquantized_plan(workspace, qlora4_run)
    assert saved["trainable_params"] == saved["trainable_params_on_model"] == plain["trainable_params"] == TRAINABLE
    for key in ("full_params", "uniform_lora_params", "largest_module_params", "target_modules", "ranks"):
        assert saved[key] == plain[key], key
    assert saved["full_params"] == sum(p.numel() for p in model.parameters())


def test_truncation_removes_the_kbit_input_grad_hook(qlora4_run):
    assert qlora4_run.hooks["post_model_build"]["input_grad_hooks"] is True  # prepare_model_for_kbit_training's
    post_train = qlora4_run.hooks["post_train"]
    assert post_train["truncated"] is True and post_train["truncation_reentrant"] is True
    assert post_train["removed_input_hooks"] >= 1
    assert post_train["input_grad_hooks"] is False
    # during training the hidden states entering layer 0 never required grad, and no gradient
    # reached the output of layer 0 (below the window): no backward below the window
    assert post_train["entering_requires_grad"] and not any(post_train["entering_requires_grad"])
    assert post_train["below_window_grads"] == 0


def test_drift_monitor_reads_the_quantized_base_weights(qlora4_run, qlora8_run):
    """The relative weight change divides by the base weight's norm: of the dequantized weight,
    not of the packed 4-bit bytes (NaN) or the int8 codes (~2500x too large)."""
    for run in (qlora4_run, qlora8_run):
        drift = json.loads((run.output_dir / "midblock" / "drift.json").read_text())
        change = drift["history"][-1]["weight_change"]
        assert set(map(int, change)) == set(WINDOW)
        assert all(1e-4 < v < 1 for v in change.values()), change


# --------------------------------------------------------------------------- config load


def test_quantization_config_is_handed_to_from_pretrained(workspace):
    cfg = axolotl_validate(
        workspace.write(
            workspace.config("q4-cfg", load_in_4bit=True, bnb_config_kwargs={"bnb_4bit_use_double_quant": False}),
            "q4-cfg",
        )
    )
    assert cfg.overrides_of_model_kwargs["quantization_config"] == {
        "load_in_4bit": True,
        "llm_int8_threshold": 6.0,
        "llm_int8_has_fp16_weight": False,
        "bnb_4bit_compute_dtype": "float32",  # bf16: false, fp16: false on this config
        "bnb_4bit_use_double_quant": False,  # bnb_config_kwargs on top, as for adapter: qlora
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_quant_storage": "bfloat16",
    }
    cfg = axolotl_validate(workspace.write(workspace.config("q8-cfg", load_in_8bit=True), "q8-cfg"))
    assert cfg.overrides_of_model_kwargs["quantization_config"] == {"load_in_8bit": True}
    own = {"load_in_4bit": True, "bnb_4bit_quant_type": "fp4"}
    cfg = axolotl_validate(
        workspace.write(
            workspace.config("q4-own", load_in_4bit=True, model_kwargs={"quantization_config": own}), "q4-own"
        )
    )
    assert cfg.overrides_of_model_kwargs["quantization_config"] == own  # the user's own is kept


@pytest.mark.parametrize("key", ["load_in_4bit", "load_in_8bit"])
def test_full_mode_on_a_quantized_base_is_refused_at_config_load(workspace, key):
    error = axolotl_load_error(
        workspace.write(workspace.config(f"full-{key}", midblock_mode="full", **{key: True}), f"full-{key}")
    )
    assert "midblock_mode: 'full' trains the base weights" in error and f"quantized ({key}: true)" in error
    assert f"Remove {key}" in error and "midblock_mode: 'lora' (QLoRA)" in error
    assert not (workspace.root / f"full-{key}").exists()


def test_both_quantizations_are_refused(workspace):
    error = axolotl_load_error(workspace.write(workspace.config("q48", load_in_4bit=True, load_in_8bit=True), "q48"))
    assert "load_in_4bit and load_in_8bit are both true; keep one of them" in error
