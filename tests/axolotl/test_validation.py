"""Config validation: bad settings fail when the config is loaded, before the model is,
with a message that names the key, the allowed values and the fix."""

from __future__ import annotations

import pytest

from tests.axolotl.helpers import args_error as _error
from tests.axolotl.helpers import axolotl_load_error, axolotl_validate, yaml_config


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


# --------------------------------------------------------------------------- YAML as typed, through Axolotl's loader
# Each snippet is appended to a complete config file and loaded by axolotl.cli.config.load_cfg, the
# loader of `axolotl train`: YAML decides the types (01110 is the octal number 584, 0.2 a float,
# "no" a string), Axolotl's merged schema runs our validators, and the error names the key and the fix.

YAML_CASES = [
    # an unquoted mask is a number: 01110 is octal 584, 00100 is 64, 1110 stays 1110
    (
        "midblock_segments: 01110",
        ["midblock_segments: 584 is a number, not a mask", "octal", 'Quote the mask: midblock_segments: "01110"'],
    ),
    ("midblock_segments: 00100", ["midblock_segments: 64 is a number", "Quote the mask"]),
    ("midblock_segments: 1110", ["midblock_segments: 1110 is a number", "Quote the mask"]),
    # the layer list: a bare number (a count?), items that are not indices, unreadable text
    ("midblock_layers: 3", ["midblock_layers: 3 is a bare number", "not a layer count", "midblock_layers: [3]"]),
    (
        'midblock_layers: [3, "4-5"]',
        ["midblock_layers: [3, '4-5'] has items that are not layer indices", 'midblock_layers: "3-5,9"'],
    ),
    ('midblock_layers: "3..11"', ["midblock_layers: '3..11': cannot read '3..11'", "e.g. '3,4,9-12'"]),
    # a fraction window needs both ends, as a string
    ("midblock_window: 0.2", ["midblock_window: 0.2 is a number", 'midblock_window: "0.2:0.8"']),
    # empty window keys are errors, not the default window
    ('midblock_window: ""', ["midblock_window: '' is empty", "remove the key for the default window"]),
    ('midblock_segments: ""', ["midblock_segments: '' is empty", "remove the key"]),
    ("midblock_layers: []", ["midblock_layers: [] is empty", "remove the key"]),
    ("midblock_window_from: ''", ["midblock_window_from: '' is empty", "remove the key"]),
    # booleans must be YAML booleans, not strings or numbers
    (
        'midblock_truncate_backward: "no"',
        [
            "midblock_truncate_backward: 'no' is a string, not true/false",
            "without quotes: midblock_truncate_backward: false",
        ],
    ),
    ("midblock_drift_monitor: 'true'", ["midblock_drift_monitor: 'true' is a string", "midblock_drift_monitor: true"]),
    (
        "midblock_drift_monitor: 0",
        ["midblock_drift_monitor: 0 is a number, not true/false", "midblock_drift_monitor: false"],
    ),
    (
        'midblock_mode: full\nmidblock_train_final_norm: "yes"',
        ["midblock_train_final_norm: 'yes' is a string", "midblock_train_final_norm: true"],
    ),
    ('peft_use_rslora: "yes"', ["peft_use_rslora: 'yes' is a string", "peft_use_rslora: true"]),
    # choices are lower case
    (
        "midblock_mode: LoRA",
        ["midblock_mode: 'LoRA' is not allowed; choose one of 'lora', 'full'", "lower case: midblock_mode: lora"],
    ),
    ("midblock_budget: Match", ["midblock_budget: 'Match' is not allowed", "midblock_budget: match"]),
    # unknown keys get the closest one (an Axolotl key where that is what sets the field)
    (
        'midblock_windw: "0.2:0.8"',
        [
            "unknown midblock key 'midblock_windw' (did you mean 'midblock_window'?)",
            "Fix the spelling or remove the key",
        ],
    ),
    ("midblock_rank: 8", ["unknown midblock key 'midblock_rank' (did you mean 'lora_r'?)"]),
    # Axolotl's LoRA keys, as the plugin reads them
    ("lora_r: 0", ["lora_r: 0 must be a positive integer", "e.g. 16"]),
    ("lora_r: 8.5", ["lora_r: 8.5 must be a positive integer"]),
    ('lora_r: "16"', ["lora_r: '16' is a string", "without quotes: lora_r: 16"]),
    ("lora_alpha: .inf", ["lora_alpha: inf must be a positive finite number", "e.g. 32"]),
    ("lora_alpha: .nan", ["lora_alpha: nan must be a positive finite number"]),
    ("lora_alpha: 12.5", ["lora_alpha: 12.5 must be a whole number", "e.g. lora_alpha: 12"]),
    ("lora_dropout: 1.5", ["lora_dropout: 1.5 must be a number in [0, 1)", "e.g. 0.05"]),
    (
        "midblock_target_modules: []",
        ["midblock_target_modules: [] must be a preset", "midblock_target_modules: [q_proj, v_proj]"],
    ),
]


@pytest.mark.parametrize("snippet, expected", YAML_CASES, ids=[c[0].splitlines()[-1] for c in YAML_CASES])
def test_yaml_mistakes_fail_in_axolotls_config_loader_with_the_key_and_the_fix(workspace, snippet, expected):
    message = axolotl_load_error(yaml_config(workspace, "yaml-case", snippet))
    for part in expected:
        assert part in message, f"{part!r} not in:\n{message}"


@pytest.mark.parametrize(
    "snippet, field, value",
    [
        ('midblock_segments: "01110"', "segments", "01110"),
        ("midblock_segments: '00100'", "segments", "00100"),
        ("midblock_layers: [1, 2]", "layers", [1, 2]),
        ("midblock_layers: 1-3", "layers", "1-3"),  # YAML reads 1-3 as text
        ("midblock_window: 0.2:0.8", "window", "0.2:0.8"),  # and 0.2:0.8 too
        ("midblock_segments: '01110'\nmidblock_truncate_backward: no", "truncate_backward", False),  # YAML 1.1 boolean
        ("midblock_segments: '01110'\nlora_alpha: 16.0", "lora_alpha", 16),
    ],
)
def test_the_written_forms_pass_axolotls_validation(workspace, snippet, field, value):
    from midblock_plugin.integrations.axolotl.keys import midblock_config_from_cfg

    cfg = axolotl_validate(yaml_config(workspace, "yaml-ok", snippet))
    assert getattr(midblock_config_from_cfg(cfg), field) == value


def test_unquoted_mask_fails_in_axolotl_train(workspace):
    """The headline case through the `axolotl train` command: stopped at config load, told to quote."""
    path = yaml_config(workspace, "octal-mask", "midblock_segments: 01110")
    run = workspace.axolotl("train", path)
    assert run.returncode != 0
    assert "midblock_segments: 584 is a number, not a mask" in run.output
    assert 'Quote the mask: midblock_segments: "01110"' in run.output
    assert "Loading weights" not in run.output and not (workspace.root / "octal-mask" / "midblock").exists()


# --------------------------------------------------------------------------- the pydantic model itself


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("unfrozen_parameters", ["model.layers.0.*"], "cannot be combined with unfrozen_parameters: remove it"),
        ("peft_layers_to_transform", [1, 2], "put the layers in midblock_layers instead"),
        ("lora_rank_pattern", {"q_proj": 8}, "cannot be combined with lora_rank_pattern"),
        ("lora_modules_to_save", ["lm_head"], "would train modules outside the window"),
        ("gptq", True, "GPTQ bases are not supported by adapter: midblock; for QLoRA use load_in_4bit: true"),
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
        (
            {"midblock_target_modules": "attn"},
            "midblock_target_modules: 'attn' is not a preset; choose one of 'attention', 'mlp', 'all-linear'",
        ),
        (
            {"midblock_window": "0.2:0.8", "midblock_layers": "3-5"},
            "give only one of midblock_window / midblock_segments / midblock_layers",
        ),
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

    cfg = midblock_config_from_cfg(
        {
            "adapter": "midblock",
            "lora_r": 32,
            "lora_alpha": 16,
            "lora_dropout": 0.1,
            "peft_use_rslora": True,
            "lora_target_modules": ["q_proj", "k_proj"],
        }
    )
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
