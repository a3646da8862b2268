"""Flags from fields: every command's options come from the dataclass that owns them."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Optional

import pytest

from midblock_plugin.choices import Mode, Protocol, values
from midblock_plugin.cli import build_parser
from midblock_plugin.cli.fields import add_dataclass_arguments, values_from_args


@dataclasses.dataclass
class _Demo:
    name: str = dataclasses.field(metadata={"help": "a required name"})
    mode: Mode = dataclasses.field(default="lora", metadata={"help": "the mode"})
    count: Optional[int] = dataclasses.field(default=None, metadata={"help": "how many", "default": "the preset"})
    ratio: float | None = dataclasses.field(default=0.5, metadata={"help": "a ratio"})
    flag: bool = dataclasses.field(default=False, metadata={"help": "a switch"})
    items: tuple = dataclasses.field(
        default=("a",), metadata={"help": "comma list", "parse": lambda t: tuple(t.split(","))}
    )
    hidden: int = dataclasses.field(default=3, metadata={"help": "set in code", "cli": False})


def _parser(**kw) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_dataclass_arguments(p, _Demo, required=("name",), **kw)
    return p


def test_types_choices_bools_and_defaults_come_from_the_fields():
    args = _parser().parse_args(
        ["--name", "x", "--mode", "full", "--count", "3", "--ratio", "0.25", "--flag", "--items", "b,c"]
    )
    assert values_from_args(args, _Demo) == {
        "name": "x",
        "mode": "full",
        "count": 3,
        "ratio": 0.25,
        "flag": True,
        "items": ("b", "c"),
    }
    assert _Demo(**values_from_args(args, _Demo)).hidden == 3  # no flag for a cli=False field
    defaults = values_from_args(_parser().parse_args(["--name", "x"]), _Demo)
    assert defaults == {"name": "x", "mode": "lora", "count": None, "ratio": 0.5, "flag": False, "items": ("a",)}
    with pytest.raises(SystemExit):
        _parser().parse_args(["--name", "x", "--mode", "half"])  # choices from the Literal
    with pytest.raises(SystemExit):
        _parser().parse_args([])  # required
    text = _parser().format_help()
    assert "{lora,full}" in text and "(default: the preset)" in text and "--no-flag" in text and "--hidden" not in text


def test_skip_only_defaults_and_help_per_command():
    p = _parser(skip=("ratio",), defaults={"mode": "full"}, help={"count": "per-command help"})
    assert "--ratio" not in p.format_help() and "per-command help" in p.format_help()
    assert p.parse_args(["--name", "x"]).mode == "full"
    q = argparse.ArgumentParser()
    assert add_dataclass_arguments(q, _Demo, only=("mode",)) == ["mode"]


def _dests(parser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in parser._actions if a.dest not in ("help",)}  # noqa: SLF001  (reading only)


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    return dict(sub.choices)


@pytest.mark.parametrize("command", ["run", "compare", "sweep"])
def test_every_job_flag_is_a_job_options_field(command):
    from midblock_plugin.experiments.options import JobOptions

    fields = {f.name for f in dataclasses.fields(JobOptions)}
    assert _dests(_subparsers()[command]) - {"func"} <= fields


def test_every_eval_flag_is_a_field_of_its_dataclasses_and_the_protocol_choices_are_the_literal():
    from midblock_plugin.evaluation.settings import EvalSettings
    from midblock_plugin.evaluation.standalone import SavedEvalOptions

    fields = {f.name for f in dataclasses.fields(EvalSettings)} | {
        f.name for f in dataclasses.fields(SavedEvalOptions)
    }
    parser = _subparsers()["eval"]
    assert _dests(parser) - {"func"} <= fields
    protocol = next(a for a in parser._actions if a.dest == "protocol")  # noqa: SLF001
    assert tuple(protocol.choices) == values(Protocol)


def test_plan_flags_are_midblock_config_fields_or_the_commands_own():
    from midblock_plugin.config import MidBlockConfig

    fields = {f.name for f in dataclasses.fields(MidBlockConfig)}
    dests = _dests(_subparsers()["plan"]) - {"func"}
    training_only = {"truncate_backward", "drift_monitor"}  # no effect on a plan: skipped by plan
    assert fields - training_only <= dests
    mode = next(a for a in _subparsers()["plan"]._actions if a.dest == "mode")  # noqa: SLF001
    assert tuple(mode.choices) == values(Mode)


def test_every_analyze_option_is_a_field_of_analysis_config_or_analyze_output():
    from midblock_plugin.analysis.config import AnalysisConfig
    from midblock_plugin.cli.analyze import AnalyzeOutput

    fields = {f.name for f in dataclasses.fields(AnalysisConfig) if f.init} | {
        f.name for f in dataclasses.fields(AnalyzeOutput)
    }
    parser = _subparsers()["analyze"]
    assert _dests(parser) - {"func"} == fields
    args = parser.parse_args(["base", "--quiet", "--no-early-exit", "--no-figure"])  # the old spellings still work
    assert (args.progress, args.early_exit, args.figure, args.tuned) == (False, False, False, None)
