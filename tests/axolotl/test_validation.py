"""Config validation: bad settings fail when the config is loaded, before the model is,
with a message that names the key, the allowed values and the fix."""

from __future__ import annotations

import pytest

from tests.axolotl.helpers import args_error as _error


pytestmark = pytest.mark.axolotl


# --------------------------------------------------------------------------- through Axolotl's CLI


def test_bad_window_fails_validation_in_axolotl_train(workspace):
    cfg = workspace.config("bad-window", midblock_segments=None, midblock_window="0.8:0.2")
    run = workspace.axolotl("train", workspace.write(cfg, "bad-window"))
    assert run.returncode != 0
    assert "adapter: midblock: midblock_window: '0.8:0.2': need 0 <= a < b <= 1" in run.output
    assert "e.g. '0.2:0.8'" in run.output
    assert "Loading weights" not in run.output and not (workspace.root / "bad-window" / "midblock").exists()


def test_unknown_key_fails_validation_in_axolotl_train(workspace):
    cfg = workspace.config("unknown-key", midblock_segments=None, midblock_windw="0.2:0.8")
    run = workspace.axolotl("train", workspace.write(cfg, "unknown-key"))
    assert run.returncode != 0
    assert "unknown midblock key 'midblock_windw' (did you mean 'midblock_window'?)" in run.output
    assert "Fix the spelling or remove the key" in run.output
    assert "Loading weights" not in run.output


# --------------------------------------------------------------------------- the pydantic model itself


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("unfrozen_parameters", ["model.layers.0.*"], "cannot be combined with unfrozen_parameters: remove it"),
        ("peft_layers_to_transform", [1, 2], "put the layers in midblock_layers instead"),
        ("lora_rank_pattern", {"q_proj": 8}, "cannot be combined with lora_rank_pattern"),
        ("lora_modules_to_save", ["lm_head"], "would train modules outside the window"),
        ("load_in_4bit", True, "quantized (QLoRA) bases are not supported"),
    ],
)
def test_contradictory_axolotl_keys_are_rejected_with_what_to_remove(key, value, expected):
    message = _error(**{key: value})
    assert expected in message and key in message


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"midblock_mode": "ful"}, "midblock_mode: 'ful' is not allowed; choose one of 'lora', 'full'"),
        ({"midblock_budget": "half"}, "midblock_budget: 'half' is not allowed; choose one of 'match', 'none'"),
        ({"midblock_alpha_policy": "scaled"}, "midblock_alpha_policy: 'scaled' is not allowed"),
        ({"lora_r": 0}, "lora_r: 0 must be a positive integer"),
        ({"midblock_segments": "01210"}, "midblock_segments: '01210' "),
        ({"midblock_target_modules": "attn"}, "midblock_target_modules: 'attn' is not a preset; choose one of 'attention', 'mlp', 'all-linear'"),
        ({"midblock_window": "0.2:0.8", "midblock_layers": "3-5"}, "give only one of midblock_window / midblock_segments / midblock_layers"),
        ({"midblock_target_modules": "mlp", "lora_target_modules": ["q_proj"]}, "target modules are given twice"),
        ({"midblock_train_final_norm": True}, "apply to midblock_mode: 'full' only"),
        ({"midblock_mode": "full", "lora_model_dir": "/x"}, "remove lora_model_dir"),
        ({"midblock_mode": "full", "merge_lora": True}, "there is no LoRA adapter to merge"),
    ],
)
def test_bad_values_name_the_yaml_key_and_the_allowed_values(data, expected):
    assert expected in _error(**data)


def test_window_is_checked_against_a_local_base_model(workspace):
    message = _error(base_model=str(workspace.model_dir), midblock_layers="3-9")
    assert "midblock_layers: '3-9': layer 9 is out of range for a 5-layer model" in message
    assert "base_model has 5 layers" in message
    message = _error(base_model=str(workspace.model_dir), midblock_segments="010101")
    assert "has 6 segments but the model has only 5 layers" in message


def test_midblock_keys_without_the_midblock_adapter_are_rejected():
    from pydantic import ValidationError

    from midblock_plugin.integrations.axolotl.args import MidBlockArgs

    with pytest.raises(ValidationError, match="only take effect with adapter: midblock .* Set adapter: midblock"):
        MidBlockArgs.model_validate({"adapter": "lora", "midblock_segments": "01110"})
    MidBlockArgs.model_validate({"adapter": "lora", "lora_r": 8})  # other configs are left alone


def test_axolotl_lora_keys_keep_their_meaning():
    from midblock_plugin.integrations.axolotl.keys import midblock_config_from_cfg

    cfg = midblock_config_from_cfg({"adapter": "midblock", "lora_r": 32, "lora_alpha": 16, "lora_dropout": 0.1,
                                    "peft_use_rslora": True, "lora_target_modules": ["q_proj", "k_proj"]})
    assert (cfg.rank, cfg.lora_alpha, cfg.lora_dropout, cfg.use_rslora) == (32, 16, 0.1, True)
    assert cfg.target_modules == ["q_proj", "k_proj"]
    assert midblock_config_from_cfg({"adapter": "midblock", "lora_target_linear": True}).target_modules == "all-linear"
    default = midblock_config_from_cfg({"adapter": "midblock"})
    assert default.target_modules == "attention" and default.lora_dropout == 0.0 and default.window is None


def test_every_key_has_help_text_from_the_core():
    from midblock_plugin.config import MidBlockConfig
    from midblock_plugin.integrations.axolotl.args import MidBlockArgs
    from midblock_plugin.integrations.axolotl.keys import EXTRA_KEYS, MIDBLOCK_KEYS

    help_text = MidBlockConfig.field_help()
    for key, field_name in MIDBLOCK_KEYS.items():
        description = MidBlockArgs.model_fields[key].description
        assert description and description.startswith(help_text[field_name]), key
    assert set(MidBlockArgs.model_fields) == set(MIDBLOCK_KEYS) | set(EXTRA_KEYS)  # + midblock_eval (test_eval.py)
