"""One home per value rule (:mod:`midblock_plugin.rules`): each rule raises the same
``OptionError`` on every surface, and :func:`respell` writes it in the surface's spelling."""

from __future__ import annotations

import argparse
import pickle
import subprocess
import sys

import pytest

from midblock_plugin import rules
from midblock_plugin.rules import OptionError, flag_spelling, respell


def _err(call, *args, **kw) -> OptionError:
    with pytest.raises(OptionError) as info:
        call(*args, **kw)
    return info.value


def test_an_option_error_is_spelled_per_surface():
    exc = _err(rules.check_rank, 0)
    assert isinstance(exc, ValueError) and (exc.field, exc.value) == ("rank", 0)
    assert str(exc) == "rank=0 must be a positive integer (the uniform-LoRA rank r), e.g. 16."
    assert (
        str(respell(exc, {"rank": "--rank"}))
        == "--rank 0: must be a positive integer (the uniform-LoRA rank r), e.g. 16."
    )
    assert str(respell(exc, {"rank": "midblock_rank"})).startswith("midblock_rank: 0 must be a positive integer")
    assert str(respell(exc, {"rank": "lora_r"})) == exc.spelled("lora_r")
    assert str(respell(exc, {})) == str(exc)  # a surface that does not name the field keeps it
    assert (
        str(exc) == "rank=0 must be a positive integer (the uniform-LoRA rank r), e.g. 16."
    )  # the original is unchanged


def test_respell_spells_the_fields_a_rule_mentions_and_passes_other_errors_through():
    from midblock_plugin.evaluation.settings import EvalSettings

    exc = _err(EvalSettings, protocol="paper", num_fewshot=5)
    flags = str(respell(exc, flag_spelling))
    assert flags.startswith("--num-fewshot 5: contradicts --protocol 'paper', which fixes --num-fewshot 0")
    assert "Leave --num-fewshot unset" in flags and "num_fewshot=" not in flags
    yaml = str(respell(exc, lambda f: f, style="yaml"))  # midblock_eval: keys are the field names
    assert yaml.startswith("num_fewshot: 5 contradicts protocol: 'paper'")
    other = FileNotFoundError("no such file")
    assert respell(other, flag_spelling) is other
    with pytest.raises(ValueError, match="style='toml'"):
        respell(exc, flag_spelling, style="toml")


def test_a_respelled_window_error_keeps_its_class_and_pickles():
    from midblock_plugin.config import MidBlockConfig
    from midblock_plugin.window import WindowError

    exc = _err(MidBlockConfig, segments="0000")
    flagged = respell(exc, flag_spelling)
    assert isinstance(flagged, WindowError) and isinstance(flagged, OptionError)
    assert str(flagged) == "--segments '0000': activates no segment; put a '1' on at least one segment, e.g. '01110'."
    again = pickle.loads(pickle.dumps(flagged))
    assert type(again) is type(flagged) and str(again) == str(flagged)


@pytest.mark.parametrize(
    "call, args, field",
    [
        (rules.check_rank, (1.5,), "rank"),
        (rules.check_rank, (True,), "rank"),
        (rules.check_alpha, (float("inf"),), "lora_alpha"),
        (rules.check_alpha, (0,), "lora_alpha"),
        (rules.check_dropout, (1.0,), "lora_dropout"),
        (rules.check_dropout, ("0.1",), "lora_dropout"),
        (rules.check_bool, (1, "use_rslora"), "use_rslora"),
    ],
)
def test_each_rule_refuses_its_bad_values(call, args, field):
    assert _err(call, *args).field == field


def test_each_rule_accepts_its_good_values():
    assert rules.check_rank(16) == 16 and rules.check_alpha(None) is None and rules.check_alpha(32.0) == 32.0
    assert rules.check_dropout(0) == 0 and rules.check_bool(False, "x") is False
    from midblock_plugin.choices import Mode

    assert rules.check_choice("mode", "full", Mode) == "full"
    assert "choose one of 'lora', 'full'" in str(_err(rules.check_choice, "mode", "LoRA", Mode))


def test_the_surfaces_share_the_rules():
    """MidBlockConfig, the plan and the command line raise the rule's own message."""
    from midblock_plugin.config import MidBlockConfig

    rule = str(_err(rules.check_dropout, 1.5))
    assert str(_err(MidBlockConfig, lora_dropout=1.5)) == rule
    from midblock_plugin.cli.options import add_config_arguments, config_from_args

    p = argparse.ArgumentParser()
    add_config_arguments(p)
    with pytest.raises(OptionError) as info:
        config_from_args(p.parse_args(["--lora-dropout", "1.5"]))
    assert str(info.value) == "--lora-dropout 1.5: must be a number in [0, 1), e.g. 0.05."


def test_full_mode_on_a_quantized_model_is_one_rule():
    rules.check_quantized_full("lora", "bnb-4bit")
    rules.check_quantized_full("full", None)
    exc = _err(rules.check_quantized_full, "full", "bnb-4bit")
    assert "quantized (bnb-4bit)" in str(exc) and "Use mode='lora' (QLoRA) for LoRA mode" in str(exc)
    yaml = str(respell(exc, {"mode": "midblock_mode"}))
    assert (
        yaml.startswith("midblock_mode: 'full' trains the base weights")
        and "Use midblock_mode: 'lora' (QLoRA)" in yaml
    )


def test_vllm_ranks_come_from_serving():
    from midblock_plugin.serving import VLLM_MAX_LORA_RANKS

    assert (
        rules.check_vllm_rank(113) == 128 and rules.check_vllm_rank(VLLM_MAX_LORA_RANKS[-1]) == VLLM_MAX_LORA_RANKS[-1]
    )
    assert f"--max-lora-rank {VLLM_MAX_LORA_RANKS[-1]}" in str(
        _err(rules.check_vllm_rank, VLLM_MAX_LORA_RANKS[-1] + 1)
    )


def test_install_hints_have_one_home():
    from midblock_plugin import checks

    assert checks.INSTALL_HINTS is rules.INSTALL_HINTS and checks.MissingDependency is rules.MissingDependency
    exc = rules.missing_dependency("vllm", "--backend vllm", "or pip install vllm")
    assert isinstance(exc, ImportError) and exc.name == "vllm"
    assert str(exc) == (
        "--backend vllm needs the optional package 'vllm', which is not installed: "
        "pip install -e '.[vllm]' in a midblock checkout, or pip install "
        "'midblock-plugin[vllm] @ git+https://github.com/midblock-plugin/midblock' (or pip install vllm)."
    )
    with pytest.raises(rules.MissingDependency, match="no_such_pkg_xyz"):
        rules.check_dependency("no_such_pkg_xyz", "a test")
    rules.check_dependency("json", "a test")


def test_rules_are_import_cheap():
    code = "import sys, midblock_plugin.rules; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_eval_flags_come_from_the_fields():
    """``midblock eval``'s flags: one per EvalSettings / SavedEvalOptions field it takes, with the field's choices."""
    from midblock_plugin.choices import Protocol, values
    from midblock_plugin.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["eval"]
    by_dest = {a.dest: a for a in sub._actions}
    assert tuple(by_dest["protocol"].choices) == values(Protocol)
    assert tuple(by_dest["backend"].choices) == ("hf", "vllm") and by_dest["backend"].default == "hf"
    args = sub.parse_args(["m", "--limit", "0.5", "--batch-size", "auto", "--num-fewshot", "3", "--dtype", "bfloat16"])
    assert (args.limit, args.batch_size, args.num_fewshot, args.dtype) == (0.5, "auto", 3, "bfloat16")
    assert sub.parse_args(["m", "--fewshot-as-multiturn"]).fewshot_as_multiturn is True
    assert sub.parse_args(["m", "--apply-chat-template"]).apply_chat_template is True
