"""Bad and adversarial inputs at every entry point (issue 11: nothing lost, nothing silent).

One table row per bad input, across ``midblock plan / eval / analyze / run / compare``, the
TRL example ``examples/trl/sft_midblock.py`` and the Python API (``MidBlockConfig``,
``build_plan``, ``EvalSettings``, ``AnalysisConfig``). Every row must end in a *clear early
error*: exit status 2 (the CLI and the example) or the expected exception type (the API),
no Python traceback, a message that names the key / flag or the bad value, and, for the
expensive commands, no weights loaded and no training step taken.

The commands run in this process through :func:`midblock_plugin.cli.main` (and the
example's own ``main``) with ``from_pretrained`` / ``from_config`` / ``Trainer.train`` /
``PeftModel.from_pretrained`` / the default-model download replaced by a tripwire, so a
row that gets as far as the weights fails at once, cheaply. A few rows run the example as a
user does, in a subprocess; there the output directory must stay empty.

Each row ends in one of: ``ok`` (clear early error), ``late`` (an error after the weights
loaded, or a traceback, a wrong exit status, or a message that names neither key nor
value), ``silent`` (accepted: a wrong result; for a row that reached the tripwire, the
table's ``if_reached`` says whether the real run would have failed late or gone on with a
wrong result) or ``hang``. ``MIDBLOCK_BAD_INPUTS_REPORT=FILE`` writes every row's outcome and
the counts to FILE as JSON.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from midblock_plugin.testing import GSM8K_DIR, gsm8k_rows, save_tiny, tiny_config, tiny_model


ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "trl" / "sft_midblock.py"
HANG_S = 240  # an in-process row that runs longer than this is a hang
SUBPROCESS_TIMEOUT_S = 300

pytestmark = pytest.mark.skipif(
    not (GSM8K_DIR / "test.jsonl").is_file(), reason=f"GSM8K not found at {GSM8K_DIR} (set MIDBLOCK_GSM8K_DIR)"
)


# ----------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Case:
    """One bad input.

    ``entry``: ``plan``/``eval``/``analyze``/``run``/``compare`` (the CLI, in process),
    ``example`` (the TRL example's ``main``, in process), ``example-sub`` (the example as a
    subprocess) or ``api`` (``call(d)`` with ``d`` the fixture paths).
    ``needles``: each must occur in the message; a tuple means any of its strings. Both
    argv and needles are formatted with the fixture paths (``{base}``, ``{out}``, ...).
    ``expect``: ``"error"`` (the default) or ``"warn"`` (accepted, with a warning naming the needles).
    ``owner``: who fixes a failure: ``cli`` (the CLI / example / settings / analysis config),
    ``core`` (config.py, plan.py, window.py) or ``run`` (run / compare).
    ``if_reached``: what the unguarded run would do after the tripwire: ``late`` (fail) or ``silent``.
    """

    id: str
    entry: str
    argv: tuple = ()
    needles: tuple = ()
    call: Callable[[dict], Any] | None = None
    exc: Any = ValueError
    expect: str = "error"
    owner: str = "cli"
    if_reached: str = "late"
    hide: tuple = ()  # modules made unimportable for the row (a missing optional dependency)
    no_cuda: bool = False  # the row needs a machine without CUDA
    defaults: dict = field(default_factory=dict)
    drop: tuple = ()  # flags of ``defaults`` this row leaves out
    env: dict = field(default_factory=dict)  # environment for the row (None: unset; values formatted)


def C(id, entry, *argv, needles=(), **kw) -> Case:
    return Case(id=id, entry=entry, argv=tuple(argv), needles=tuple(needles), **kw)


def A(id, call, needles, exc=ValueError, **kw) -> Case:
    return Case(id=id, entry="api", call=call, needles=tuple(needles), exc=exc, **kw)


def _flag_value(flag: str, value: str) -> tuple:
    """The ways a message may name a flag and its value."""
    key = flag.lstrip("-").replace("-", "_")
    return (
        f"{flag} {value}",
        f"{flag}={value}",
        f"{flag} {value!r}",
        f"{flag}={value!r}",
        f"{key}={value}",
        f"{key}={value!r}",
        f"{key}: {value}",
    )


NAN, INF = float("nan"), float("inf")


def _mb(**kw):
    from midblock_plugin import MidBlockConfig

    return MidBlockConfig(**kw)


def _plan(model=None, cfg=None, **kw):
    from midblock_plugin import MidBlockConfig
    from midblock_plugin.plan import build_plan

    return build_plan(model, cfg or MidBlockConfig(), **kw)


def _es(**kw):
    from midblock_plugin.evaluation import EvalSettings

    return EvalSettings(**kw)


def _ac(d, **kw):
    from midblock_plugin.analysis.run import AnalysisConfig

    kw.setdefault("base", d["base"])
    return AnalysisConfig(**kw)


PLAN = [
    C("plan-missing-dir", "plan", "/nonexistent/model-dir", needles=["/nonexistent/model-dir"]),
    C("plan-empty-dir", "plan", "{empty}", needles=["{empty}", "config.json"]),
    C("plan-config-not-json", "plan", "{notjson}", needles=["{notjson}", ("JSON", "json")]),
    C("plan-config-a-list", "plan", "{configlist}", needles=["{configlist}", "config.json"]),
    C("plan-config-no-model-type", "plan", "{notype}", needles=["{notype}", "model_type"]),
    C("plan-config-unknown-model-type", "plan", "{unknowntype}", needles=["not_a_model"]),
    C("plan-config-zero-layers", "plan", "{nolayers}", needles=[("num_hidden_layers", "layers")]),
    C("plan-t5-encoder-decoder", "plan", "{t5}", needles=["{t5}", "encoder-decoder"]),
    C("plan-bert-encoder", "plan", "{bert}", needles=["{bert}", ("not a decoder", "encoder")], if_reached="silent"),
    C("plan-num-layers-zero", "plan", "--num-layers", "0", needles=[_flag_value("--num-layers", "0")]),
    C("plan-num-layers-negative", "plan", "--num-layers", "-3", needles=[_flag_value("--num-layers", "-3")]),
    C("plan-num-layers-float", "plan", "--num-layers", "10.5", needles=["--num-layers", "10.5"]),
    C("plan-rank-zero", "plan", "--num-layers", "10", "--rank", "0", needles=[_flag_value("--rank", "0")]),
    C("plan-rank-negative", "plan", "--num-layers", "10", "--rank", "-8", needles=[_flag_value("--rank", "-8")]),
    C("plan-rank-float", "plan", "--num-layers", "10", "--rank", "1.5", needles=["--rank", "1.5"]),
    C(
        "plan-alpha-nan",
        "plan",
        "--num-layers",
        "10",
        "--lora-alpha",
        "nan",
        needles=[_flag_value("--lora-alpha", "nan")],
    ),
    C(
        "plan-alpha-inf",
        "plan",
        "--num-layers",
        "10",
        "--lora-alpha",
        "inf",
        needles=[_flag_value("--lora-alpha", "inf")],
    ),
    C(
        "plan-alpha-negative",
        "plan",
        "--num-layers",
        "10",
        "--lora-alpha",
        "-1",
        needles=[_flag_value("--lora-alpha", "-1.0")],
    ),
    C(
        "plan-dropout-nan",
        "plan",
        "--num-layers",
        "10",
        "--lora-dropout",
        "nan",
        needles=[_flag_value("--lora-dropout", "nan")],
    ),
    C(
        "plan-dropout-one",
        "plan",
        "--num-layers",
        "10",
        "--lora-dropout",
        "1",
        needles=[_flag_value("--lora-dropout", "1.0")],
    ),
    C(
        "plan-window-empty",
        "plan",
        "--num-layers",
        "10",
        "--window",
        "",
        needles=[("window=''", "--window ''")],
        owner="core",
    ),
    C(
        "plan-segments-empty",
        "plan",
        "--num-layers",
        "10",
        "--segments",
        "",
        needles=[("segments=''", "--segments ''")],
        owner="core",
    ),
    C(
        "plan-layers-empty",
        "plan",
        "--num-layers",
        "10",
        "--layers",
        "",
        needles=[("layers=''", "--layers ''")],
        owner="core",
    ),
    C("plan-layers-garbage", "plan", "--num-layers", "10", "--layers", "3-x", needles=["3-x"]),
    C("plan-layers-backwards-negative", "plan", "--num-layers", "10", "--layers", "-1--4", needles=["-1--4"]),
    C("plan-layers-negative-out-of-range", "plan", "--num-layers", "10", "--layers", "-12--1", needles=["-12"]),
    C("plan-window-infinite", "plan", "--num-layers", "10", "--window", "0.2:inf", needles=["0.2:inf"]),
    C(
        "plan-two-window-forms",
        "plan",
        "--num-layers",
        "10",
        "--window",
        "0.2:0.8",
        "--segments",
        "01110",
        needles=["window", "segments"],
    ),
    C(
        "plan-window-from-missing",
        "plan",
        "--num-layers",
        "10",
        "--window-from",
        "/nonexistent/analysis.json",
        needles=["/nonexistent/analysis.json"],
    ),
    C("plan-window-from-not-json", "plan", "--num-layers", "10", "--window-from", "{badjson}", needles=["{badjson}"]),
    C(
        "plan-segments-more-than-layers",
        "plan",
        "{base}",
        "--segments",
        "000000000001",
        needles=["segments", "000000000001"],
    ),
    C("plan-layers-beyond-model", "plan", "{base}", "--layers", "12", needles=["12", "10"]),
    C(
        "plan-target-modules-empty",
        "plan",
        "{base}",
        "--target-modules",
        "",
        needles=[("target_modules", "--target-modules")],
    ),
    C("plan-target-modules-unknown", "plan", "{base}", "--target-modules", "c_attn", needles=["c_attn"]),
    C("plan-gpus-per-node-zero", "plan", "{base}", "--zero3", "--gpus-per-node", "0", needles=["--gpus-per-node"]),
    C("plan-nodes-negative", "plan", "{base}", "--zero3", "--nodes", "-2", needles=["--nodes"]),
    C("plan-zero3-without-model", "plan", "--num-layers", "10", "--zero3", needles=["--zero3"]),
    C("plan-mode-unknown", "plan", "--num-layers", "10", "--mode", "qlora", needles=["--mode", "qlora"]),
    C("plan-bool-flag-with-value", "plan", "--num-layers", "10", "--use-rslora=yes", needles=["--use-rslora"]),
    C("plan-norm-flag-in-lora-mode", "plan", "--num-layers", "10", "--train-final-norm", needles=["train_final_norm"]),
    C(
        "plan-rank-far-above-width",
        "plan",
        "{base}",
        "--rank",
        "4096",
        "--budget",
        "none",
        expect="warn",
        needles=[("warning", "Warning", "WARNING"), "width"],
        owner="core",
        if_reached="silent",
    ),
]

EVAL = [
    C("eval-missing-dir", "eval", "/nonexistent/model", needles=["/nonexistent/model"]),
    C("eval-model-is-a-file", "eval", "{file}", needles=["{file}"]),
    C("eval-config-not-json", "eval", "{notjson}", needles=["{notjson}", "config.json"]),
    C("eval-config-no-model-type", "eval", "{notype}", needles=["{notype}", "model_type"]),
    C("eval-config-unknown-model-type", "eval", "{unknowntype}", needles=["{unknowntype}", "not_a_model"]),
    C("eval-t5-encoder-decoder", "eval", "{t5}", needles=["{t5}", "encoder-decoder"]),
    C("eval-bert-encoder", "eval", "{bert}", needles=["{bert}", ("not a decoder", "encoder")]),
    C("eval-model-without-weights", "eval", "{cfgonly}", needles=["{cfgonly}", ("weights", "safetensors")]),
    C(
        "eval-adapter-for-a-deeper-model",
        "eval",
        "{base}",
        "--adapter",
        "{adapter_deep}",
        needles=["--adapter", "layer 11"],
    ),
    C(
        "eval-adapter-for-a-wider-model",
        "eval",
        "{base}",
        "--adapter",
        "{adapter_wide}",
        needles=["--adapter", ("width", "shape")],
    ),
    C(
        "eval-adapter-for-another-architecture",
        "eval",
        "{base}",
        "--adapter",
        "{adapter_gpt2}",
        needles=["--adapter", "c_attn"],
    ),
    C(
        "eval-adapter-with-other-target-modules",
        "eval",
        "{base}",
        "--adapter",
        "{adapter_phi3}",
        needles=["--adapter", "qkv_proj"],
    ),
    C(
        "eval-adapter-config-not-json",
        "eval",
        "{base}",
        "--adapter",
        "{adapter_badjson}",
        needles=["{adapter_badjson}", "adapter_config.json"],
    ),
    C(
        "eval-adapter-without-weights",
        "eval",
        "{base}",
        "--adapter",
        "{adapter_noweights}",
        needles=["{adapter_noweights}", "adapter_model"],
    ),
    C("eval-adapter-dir-names-no-base", "eval", "{adapter}", needles=["base_model_name_or_path"]),
    C("eval-adapter-dir-names-missing-base", "eval", "{adapter_missingbase}", needles=["/nonexistent/base-model"]),
    C(
        "eval-device-cuda-without-cuda",
        "eval",
        "{base}",
        "--device",
        "cuda",
        needles=["--device", "cuda"],
        no_cuda=True,
    ),
    C("eval-device-cuda-7", "eval", "{base}", "--device", "cuda:7", needles=["--device", "cuda:7"]),
    C("eval-device-unknown", "eval", "{base}", "--device", "tpu", needles=["--device", "tpu"]),
    C("eval-limit-nan", "eval", "{base}", "--limit", "nan", needles=[_flag_value("--limit", "nan")]),
    C("eval-limit-inf", "eval", "{base}", "--limit", "inf", needles=[_flag_value("--limit", "inf")]),
    C("eval-limit-negative", "eval", "{base}", "--limit", "-1", needles=[_flag_value("--limit", "-1")]),
    C("eval-limit-fraction-above-one", "eval", "{base}", "--limit", "1.5", needles=[_flag_value("--limit", "1.5")]),
    C("eval-limit-zero-fraction", "eval", "{base}", "--limit", "0.0", needles=["--limit"]),
    C("eval-limit-text", "eval", "{base}", "--limit", "all", needles=["--limit", "all"]),
    C(
        "eval-num-fewshot-negative",
        "eval",
        "{base}",
        "--num-fewshot",
        "-1",
        needles=[_flag_value("--num-fewshot", "-1")],
    ),
    C("eval-num-fewshot-float", "eval", "{base}", "--num-fewshot", "2.5", needles=["--num-fewshot", "2.5"]),
    C("eval-batch-size-zero", "eval", "{base}", "--batch-size", "0", needles=[_flag_value("--batch-size", "0")]),
    C("eval-batch-size-negative", "eval", "{base}", "--batch-size", "-2", needles=["--batch-size", "-2"]),
    C("eval-batch-size-bad-auto", "eval", "{base}", "--batch-size", "auto:x", needles=["--batch-size", "auto:x"]),
    C("eval-max-gen-toks-zero", "eval", "{base}", "--max-gen-toks", "0", needles=[_flag_value("--max-gen-toks", "0")]),
    C("eval-max-length-negative", "eval", "{base}", "--max-length", "-5", needles=[_flag_value("--max-length", "-5")]),
    C("eval-tasks-empty", "eval", "{base}", "--tasks", "", needles=[("--tasks", "tasks")]),
    C("eval-tasks-duplicate", "eval", "{base}", "--tasks", "gsm8k,gsm8k", needles=["--tasks", "gsm8k"]),
    C(
        "eval-output-empty",
        "eval",
        "{base}",
        "--output",
        "",
        needles=[("--output ''", "--output=''")],
        if_reached="silent",
    ),
    C("eval-output-is-a-directory", "eval", "{base}", "--output", "{empty}", needles=["--output", "{empty}"]),
    C("eval-output-under-a-file", "eval", "{base}", "--output", "{file}/x.json", needles=["--output", "{file}"]),
    C("eval-save-samples-without-output", "eval", "{base}", "--save-samples", needles=["--save-samples", "--output"]),
    C("eval-chat-template-empty", "eval", "{base}", "--apply-chat-template", "", needles=["--apply-chat-template"]),
    C("eval-data-dir-bad-line", "eval", "{base}", "--data-dir", "{gsm_badline}", needles=["test.jsonl:4"]),
    C("eval-data-dir-empty-string", "eval", "{base}", "--data-dir", "", needles=["--data-dir"]),
    C("eval-dtype-unknown", "eval", "{base}", "--dtype", "float8", needles=["--dtype", "float8"]),
    C("eval-without-lm-eval", "eval", "{base}", needles=["lm-eval", "pip install"], hide=("lm_eval",)),
    C(
        "eval-adapter-without-peft",
        "eval",
        "{base}",
        "--adapter",
        "{adapter}",
        needles=["peft", "pip install"],
        hide=("peft",),
    ),
]

_AN = dict(defaults={"--output-dir": "{out}/analysis", "--quiet": None, "--num-prompts": "4", "--max-length": "16"})
ANALYZE = [
    C("analyze-config-not-json", "analyze", "{notjson}", needles=["{notjson}", "config.json"], **_AN),
    C("analyze-config-unknown-model-type", "analyze", "{unknowntype}", needles=["not_a_model"], **_AN),
    C("analyze-t5-encoder-decoder", "analyze", "{t5}", needles=["{t5}", "encoder-decoder"], **_AN),
    C("analyze-bert-encoder", "analyze", "{bert}", needles=["{bert}", ("not a decoder", "encoder")], **_AN),
    C(
        "analyze-base-without-weights",
        "analyze",
        "{cfgonly}",
        needles=["{cfgonly}", ("weights", "safetensors")],
        **_AN,
    ),
    C(
        "analyze-tuned-of-another-architecture",
        "analyze",
        "{base}",
        "{gpt2}",
        needles=["GPT2", "Llama"],
        if_reached="silent",
        **_AN,
    ),
    C("analyze-tuned-wider", "analyze", "{base}", "{wide}", needles=["width"], **_AN),
    C("analyze-tuned-shallower", "analyze", "{base}", "{deep}", needles=["BASE has 10 layers"], **_AN),
    C("analyze-tuned-config-not-json", "analyze", "{base}", "{notjson}", needles=["{notjson}", "config.json"], **_AN),
    C(
        "analyze-adapter-for-a-deeper-model",
        "analyze",
        "{base}",
        "{adapter_deep}",
        needles=["TUNED", "layer 11"],
        **_AN,
    ),
    C(
        "analyze-adapter-for-a-wider-model",
        "analyze",
        "{base}",
        "{adapter_wide}",
        needles=["TUNED", ("width", "shape")],
        **_AN,
    ),
    C(
        "analyze-adapter-for-another-architecture",
        "analyze",
        "{base}",
        "{adapter_gpt2}",
        needles=["TUNED", "c_attn"],
        **_AN,
    ),
    C(
        "analyze-adapter-config-not-json",
        "analyze",
        "{base}",
        "{adapter_badjson}",
        needles=["{adapter_badjson}", "adapter_config.json"],
        **_AN,
    ),
    C(
        "analyze-device-cuda-without-cuda",
        "analyze",
        "{base}",
        "--device",
        "cuda",
        needles=["--device", "cuda"],
        no_cuda=True,
        **_AN,
    ),
    C(
        "analyze-num-prompts-zero",
        "analyze",
        "{base}",
        "--num-prompts",
        "0",
        needles=[_flag_value("--num-prompts", "0")],
        **_AN,
    ),
    C(
        "analyze-max-length-negative",
        "analyze",
        "{base}",
        "--max-length",
        "-1",
        needles=[_flag_value("--max-length", "-1")],
        **_AN,
    ),
    C("analyze-batch-size-float", "analyze", "{base}", "--batch-size", "1.5", needles=["--batch-size", "1.5"], **_AN),
    C("analyze-prompts-empty-file", "analyze", "{base}", "--prompts", "{emptyfile}", needles=["{emptyfile}"], **_AN),
    C(
        "analyze-prompts-row-not-an-object",
        "analyze",
        "{base}",
        "--prompts",
        "{prompts_row42}",
        needles=["{prompts_row42}", "line 2"],
        **_AN,
    ),
    C(
        "analyze-output-dir-is-a-file",
        "analyze",
        "{base}",
        "--output-dir",
        "{file}",
        needles=["--output-dir", "{file}"],
        **_AN,
    ),
    C(
        "analyze-output-dir-under-a-file",
        "analyze",
        "{base}",
        "--output-dir",
        "{file}/sub",
        needles=["--output-dir", "{file}"],
        **_AN,
    ),
    C(
        "analyze-without-matplotlib",
        "analyze",
        "{base}",
        needles=["matplotlib", "--no-figure"],
        hide=("matplotlib",),
        **_AN,
    ),
    C(
        "analyze-adapter-without-peft",
        "analyze",
        "{base}",
        "{adapter}",
        needles=["peft", "pip install"],
        hide=("peft",),
        **_AN,
    ),
    C(
        "analyze-tokenizer-missing",
        "analyze",
        "{base}",
        "--tokenizer",
        "/nonexistent/tok",
        needles=["/nonexistent/tok"],
        **_AN,
    ),
]

_JOB = dict(
    owner="run", defaults={"--model": "{base}", "--preset": "cpu", "--data-dir": "{gsm}", "--output-dir": "{out}/job"}
)
RUN = [
    C("run-rank-zero", "run", "--rank", "0", needles=[_flag_value("--rank", "0")], **_JOB),
    C(
        "run-max-steps-zero",
        "run",
        "--max-steps",
        "0",
        needles=[("--max-steps", "max_steps")],
        if_reached="silent",
        **_JOB,
    ),
    C("run-lr-nan", "run", "--lr", "nan", needles=[("--lr", "lr=")], **_JOB),
    C("run-batch-size-zero", "run", "--batch-size", "0", needles=[("--batch-size", "batch_size")], **_JOB),
    C("run-num-examples-zero", "run", "--num-examples", "0", needles=[("--num-examples", "num_examples")], **_JOB),
    C("run-heldout-zero", "run", "--heldout", "0", needles=[("--heldout", "heldout")], if_reached="silent", **_JOB),
    C("run-max-length-zero", "run", "--max-length", "0", needles=[("--max-length", "max_length")], **_JOB),
    C("run-segments-empty", "run", "--segments", "", needles=["segments"], if_reached="silent", **_JOB),
    C("run-output-dir-is-a-file", "run", "--output-dir", "{file}", needles=["{file}"], **_JOB),
    C("run-model-missing", "run", "--model", "/nonexistent/model", needles=["/nonexistent/model"], **_JOB),
    C("run-model-t5", "run", "--model", "{t5}", needles=["{t5}", "encoder-decoder"], **_JOB),
    C("compare-variants-empty", "compare", "--variants", "", needles=["--variants"], if_reached="silent", **_JOB),
    C("compare-variants-bad-mask", "compare", "--variants", "01110,01x10", needles=["01x10"], **_JOB),
    C(
        "compare-variants-duplicate",
        "compare",
        "--variants",
        "01110,01110",
        needles=[("--variants", "variants")],
        if_reached="silent",
        **_JOB,
    ),
]

_EX = dict(defaults={"--data": "{data_ok}", "--output-dir": "{out}/ex", "--max-steps": "1", "--batch-size": "2"})
EXAMPLE = [
    C(
        "example-layers-dash-value-is-a-value",
        "example",
        "--layers",
        "-4--1",
        "--rank",
        "0",
        needles=[_flag_value("--rank", "0")],
        **_EX,
    ),
    C("example-data-bad-json-line", "example", "--data", "{data_badjson}", needles=["{data_badjson}:3"], **_EX),
    C("example-data-row-not-an-object", "example", "--data", "{data_row42}", needles=["{data_row42}:2"], **_EX),
    C(
        "example-data-bad-line-after-num-examples",
        "example",
        "--data",
        "{data_late_bad}",
        "--num-examples",
        "2",
        needles=["{data_late_bad}:5"],
        if_reached="silent",
        **_EX,
    ),
    C(
        "example-data-row-missing-keys",
        "example",
        "--data",
        "{data_missing_keys}",
        needles=["{data_missing_keys}:2"],
        **_EX,
    ),
    C("example-data-empty", "example", "--data", "{emptyfile}", needles=["--data", "{emptyfile}"], **_EX),
    C(
        "example-output-dir-holds-a-run-with-another-plan",
        "example",
        "--segments",
        "01110",
        "--output-dir",
        "{finished_other}",
        needles=[
            "{finished_other} holds a finished midblock run",
            "layers 0-7 of 8",
            "layers 1-5 of 8",
            "--overwrite",
        ],
        if_reached="silent",  # before issue 23: both runs exit 0, one adapter in the directory
        **_EX,
    ),
    C("example-data-is-a-directory", "example", "--data", "{empty}", needles=["--data", "{empty}"], **_EX),
    C(
        "example-num-examples-zero",
        "example",
        "--num-examples",
        "0",
        needles=[_flag_value("--num-examples", "0")],
        if_reached="silent",
        **_EX,
    ),
    C(
        "example-num-examples-negative",
        "example",
        "--num-examples",
        "-5",
        needles=[_flag_value("--num-examples", "-5")],
        if_reached="silent",
        **_EX,
    ),
    C(
        "example-max-steps-zero",
        "example",
        "--max-steps",
        "0",
        needles=[_flag_value("--max-steps", "0")],
        if_reached="silent",
        **_EX,
    ),
    C(
        "example-max-steps-minus-two",
        "example",
        "--max-steps",
        "-2",
        needles=[_flag_value("--max-steps", "-2")],
        if_reached="silent",
        **_EX,
    ),
    C(
        "example-epochs-zero",
        "example",
        "--max-steps",
        "-1",
        "--epochs",
        "0",
        needles=[_flag_value("--epochs", "0.0")],
        if_reached="silent",
        **_EX,
    ),
    C(
        "example-epochs-nan",
        "example",
        "--max-steps",
        "-1",
        "--epochs",
        "nan",
        needles=[_flag_value("--epochs", "nan")],
        **_EX,
    ),
    C("example-lr-nan", "example", "--lr", "nan", needles=[_flag_value("--lr", "nan")], **_EX),
    C("example-lr-negative", "example", "--lr", "-0.001", needles=[_flag_value("--lr", "-0.001")], **_EX),
    C("example-lr-zero", "example", "--lr", "0", needles=[_flag_value("--lr", "0.0")], if_reached="silent", **_EX),
    C("example-batch-size-zero", "example", "--batch-size", "0", needles=[_flag_value("--batch-size", "0")], **_EX),
    C("example-grad-accum-zero", "example", "--grad-accum", "0", needles=[_flag_value("--grad-accum", "0")], **_EX),
    C("example-max-length-zero", "example", "--max-length", "0", needles=[_flag_value("--max-length", "0")], **_EX),
    C(
        "example-logging-steps-zero",
        "example",
        "--logging-steps",
        "0",
        needles=[_flag_value("--logging-steps", "0")],
        **_EX,
    ),
    C("example-seed-negative", "example", "--seed", "-1", needles=[_flag_value("--seed", "-1")], **_EX),
    C("example-optim-unknown", "example", "--optim", "adamw_nope", needles=["--optim", "adamw_nope"], **_EX),
    C("example-deepspeed-unknown", "example", "--deepspeed", "zero9", needles=["--deepspeed", "zero9"], **_EX),
    C(
        "example-model-missing",
        "example",
        "--model",
        "/nonexistent/model",
        needles=["--model", "/nonexistent/model"],
        **_EX,
    ),
    C("example-model-t5", "example", "--model", "{t5}", needles=["{t5}", "encoder-decoder"], **_EX),
    C(
        "example-model-without-weights",
        "example",
        "--model",
        "{cfgonly}",
        needles=["{cfgonly}", ("weights", "safetensors")],
        **_EX,
    ),
    C("example-output-dir-is-a-file", "example", "--output-dir", "{file}", needles=["--output-dir", "{file}"], **_EX),
    C("example-eval-limit-zero", "example", "--eval-limit", "0", needles=["limit"], **_EX),
    C(
        "example-eval-fewshot-negative",
        "example",
        "--eval-limit",
        "2",
        "--eval-fewshot",
        "-1",
        needles=["fewshot"],
        **_EX,
    ),
    C(
        "example-eval-data-dir-bad-line",
        "example",
        "--eval-limit",
        "2",
        "--eval-data-dir",
        "{gsm_badline}",
        needles=["test.jsonl:4"],
        if_reached="silent",
        **_EX,
    ),  # training ran; the evaluation was lost
    C("example-window-beyond-tiny-model", "example", "--layers", "9", needles=["layer 9", "8"], **_EX),
    C(
        "example-segments-empty",
        "example",
        "--segments",
        "",
        needles=["segments"],
        owner="core",
        if_reached="silent",
        **_EX,
    ),
    C("example-bool-flag-with-value", "example", "--use-rslora", "yes", needles=["yes"], **_EX),
    C("example-without-trl", "example", needles=["trl", "pip install"], hide=("trl",), **_EX),
]

# The example as a user runs it (a subprocess each; keep this list short).
_SUB = dict(
    defaults={
        "--data": "{data_ok}",
        "--output-dir": "{out}/ex",
        "--max-steps": "1",
        "--batch-size": "2",
        "--num-examples": "4",
    }
)
EXAMPLE_SUB = [
    C(
        "example-sub-layers-dash-value",
        "example-sub",
        "--layers",
        "-4--1",
        "--lora-dropout",
        "1.5",
        needles=[_flag_value("--lora-dropout", "1.5")],
        **_SUB,
    ),
    C(
        "example-sub-data-bad-json-line",
        "example-sub",
        "--data",
        "{data_badjson}",
        needles=["{data_badjson}:3"],
        **_SUB,
    ),
    C("example-sub-data-row-is-a-number", "example-sub", "--data", "{data_row42}", needles=["{data_row42}:2"], **_SUB),
    C(
        "example-sub-model-missing",
        "example-sub",
        "--model",
        "/nonexistent/model",
        needles=["/nonexistent/model"],
        **_SUB,
    ),
    C("example-sub-model-unknown-type", "example-sub", "--model", "{unknowntype}", needles=["not_a_model"], **_SUB),
    C("example-sub-output-dir-is-a-file", "example-sub", "--output-dir", "{file}", needles=["{file}"], **_SUB),
    C(
        "example-sub-max-steps-zero",
        "example-sub",
        "--max-steps",
        "0",
        needles=[_flag_value("--max-steps", "0")],
        **_SUB,
    ),
    C("example-sub-lr-nan", "example-sub", "--lr", "nan", needles=[_flag_value("--lr", "nan")], **_SUB),
    C("example-sub-deepspeed-unknown", "example-sub", "--deepspeed", "zero9", needles=["zero9"], **_SUB),
    C(
        "example-sub-num-examples-zero",
        "example-sub",
        "--num-examples",
        "0",
        needles=[_flag_value("--num-examples", "0")],
        **_SUB,
    ),
]

API = [
    # MidBlockConfig (core)
    A("api-config-rank-float", lambda d: _mb(rank=16.0), ["rank=16.0"], owner="core"),
    A("api-config-rank-bool", lambda d: _mb(rank=True), ["rank=True"], owner="core"),
    A("api-config-rank-string", lambda d: _mb(rank="16"), ["rank='16'"], owner="core"),
    A("api-config-alpha-inf", lambda d: _mb(lora_alpha=INF), ["lora_alpha=inf"], owner="core"),
    A("api-config-alpha-nan", lambda d: _mb(lora_alpha=NAN), ["lora_alpha=nan"], owner="core"),
    A("api-config-alpha-bool", lambda d: _mb(lora_alpha=True), ["lora_alpha=True"], owner="core"),
    A("api-config-dropout-nan", lambda d: _mb(lora_dropout=NAN), ["lora_dropout=nan"], owner="core"),
    A("api-config-dropout-string", lambda d: _mb(lora_dropout="0.1"), ["lora_dropout='0.1'"], owner="core"),
    A("api-config-rslora-string", lambda d: _mb(use_rslora="yes"), ["use_rslora='yes'"], owner="core"),
    A("api-config-truncate-int", lambda d: _mb(truncate_backward=0), ["truncate_backward=0"], owner="core"),
    A("api-config-segments-empty", lambda d: _mb(segments=""), ["segments=''"], owner="core"),
    A("api-config-layers-empty", lambda d: _mb(layers=""), ["layers=''"], owner="core"),
    A("api-config-window-empty", lambda d: _mb(window=""), ["window=''"], owner="core"),
    A("api-config-window-from-empty", lambda d: _mb(window_from=""), ["window_from=''"], owner="core"),
    A("api-config-layers-empty-list", lambda d: _mb(layers=[]), ["layers=[]"], owner="core"),
    A("api-config-target-modules-empty-list", lambda d: _mb(target_modules=[]), ["target_modules=[]"], owner="core"),
    A(
        "api-config-target-modules-blank-name",
        lambda d: _mb(target_modules=["q_proj", " "]),
        ["target_modules"],
        owner="core",
    ),
    A("api-config-mode-wrong-case", lambda d: _mb(mode="LoRA"), ["mode='LoRA'"], owner="core"),
    # build_plan (core)
    A("api-plan-float-layer-index", lambda d: _plan(None, _mb(layers=[3.5, 4]), num_layers=10), ["3.5"], owner="core"),
    A("api-plan-num-layers-zero", lambda d: _plan(None, num_layers=0), ["num_layers=0"], owner="core"),
    A("api-plan-num-layers-negative", lambda d: _plan(None, num_layers=-4), ["num_layers=-4"], owner="core"),
    A("api-plan-num-layers-float", lambda d: _plan(None, num_layers=10.0), ["num_layers=10.0"], owner="core"),
    A("api-plan-num-layers-bool", lambda d: _plan(None, num_layers=True), ["num_layers=True"], owner="core"),
    A(
        "api-plan-missing-path",
        lambda d: _plan("/nonexistent/model"),
        ["/nonexistent/model"],
        exc=(OSError, ValueError),
        owner="core",
    ),
    A("api-plan-t5-config", lambda d: _plan(d["t5"]), ["encoder-decoder"], owner="core"),
    A(
        "api-plan-bert-config",
        lambda d: _plan(d["bert"]),
        [("not a decoder", "encoder")],
        owner="core",
        if_reached="silent",
    ),
    A(
        "api-plan-rank-far-above-width",
        lambda d: _plan(d["base"], _mb(rank=4096, budget="none")),
        ["4096", "width"],
        expect="warn",
        owner="core",
        if_reached="silent",
    ),
    # EvalSettings
    A("api-eval-limit-nan", lambda d: _es(limit=NAN), ["limit=nan"]),
    A("api-eval-limit-inf", lambda d: _es(limit=INF), ["limit=inf"]),
    A("api-eval-limit-string", lambda d: _es(limit="10"), ["limit='10'"]),
    A("api-eval-limit-bool", lambda d: _es(limit=True), ["limit=True"]),
    A("api-eval-num-fewshot-float", lambda d: _es(num_fewshot=2.0), ["num_fewshot=2.0"]),
    A("api-eval-batch-size-float", lambda d: _es(batch_size=1.5), ["batch_size=1.5"]),
    A("api-eval-batch-size-empty", lambda d: _es(batch_size=""), ["batch_size=''"]),
    A("api-eval-max-gen-toks-zero", lambda d: _es(max_gen_toks=0), ["max_gen_toks=0"]),
    A("api-eval-tasks-empty-list", lambda d: _es(tasks=[]), ["tasks"]),
    A("api-eval-tasks-none", lambda d: _es(tasks=None), ["tasks=None"]),
    A("api-eval-enabled-string", lambda d: _es(enabled="yes"), ["enabled='yes'"]),
    A("api-eval-baseline-int", lambda d: _es(baseline=1), ["baseline=1"]),
    A("api-eval-bootstrap-negative", lambda d: _es(bootstrap_iters=-1), ["bootstrap_iters=-1"]),
    A("api-eval-output-subdir-escapes", lambda d: _es(output_subdir="../x"), ["output_subdir='../x'"]),
    A("api-eval-system-instruction-int", lambda d: _es(system_instruction=5), ["system_instruction=5"]),
    A("api-eval-chat-template-int", lambda d: _es(apply_chat_template=1), ["apply_chat_template=1"]),
    A("api-eval-data-dir-bad-line", lambda d: _es(data_dir=d["gsm_badline"]), ["test.jsonl:4"]),
    A(
        "api-eval-unknown-key",
        lambda d: __import__("midblock_plugin.evaluation", fromlist=["x"]).EvalSettings.from_dict({"limt": 5}),
        ["limt"],
    ),
    # AnalysisConfig
    A("api-analysis-num-prompts-float", lambda d: _ac(d, num_prompts=10.0), ["num-prompts", "10.0"]),
    A("api-analysis-batch-size-bool", lambda d: _ac(d, batch_size=True), ["batch-size", "True"]),
    A("api-analysis-max-length-inf", lambda d: _ac(d, max_length=INF), ["max-length", "inf"]),
    A("api-analysis-early-exit-string", lambda d: _ac(d, early_exit="no"), ["early_exit", "'no'"]),
    A("api-analysis-progress-int", lambda d: _ac(d, progress=1), ["progress", "1"]),
    A("api-analysis-weight-stats-none", lambda d: _ac(d, weight_stats=None), ["weight_stats", "None"]),
    A("api-analysis-base-none", lambda d: _ac(d, base=None), ["base", "None"]),
    A(
        "api-analysis-base-empty",
        lambda d: _ac(d, base=""),
        [("BASE ''", "base=''")],
        exc=(FileNotFoundError, ValueError),
    ),
    A("api-analysis-device-cuda-without-cuda", lambda d: _ac(d, device="cuda"), ["device", "cuda"], no_cuda=True),
    A("api-analysis-tuned-of-another-architecture", lambda d: _ac(d, tuned=d["gpt2"]), ["GPT2", "Llama"]),
    A(
        "api-analysis-adapter-for-a-wider-model",
        lambda d: _ac(d, tuned=d["adapter_wide"]),
        ["TUNED", ("width", "shape")],
    ),
    A("api-analysis-stats-dtype", lambda d: _ac(d, stats_dtype="float16"), ["stats-dtype", "float16"]),
    A("api-analysis-split", lambda d: _ac(d, split="validation"), ["split", "validation"]),
    A(
        "api-analysis-prompts-empty",
        lambda d: _ac(d, prompts=""),
        ["--prompts ''"],
        exc=(FileNotFoundError, ValueError),
    ),
]

# ----------------------------------------------------------------------------- issue 23: the new surfaces
# Values checked at parse / construction time, against the model's config.json before any weights, with
# the flag the user typed blamed.
PARSE_TIME = [
    A("api-config-layers-garbage-at-construction", lambda d: _mb(layers="3-x"), ["layers='3-x'", "3-x"], owner="core"),
    A(
        "api-config-layers-backwards-at-construction",
        lambda d: _mb(layers="9-3"),
        ["layers='9-3'", "backwards"],
        owner="core",
    ),
    A("api-config-layers-float-item-at-construction", lambda d: _mb(layers=[3.5, 4]), ["3.5"], owner="core"),
    A("api-config-layers-bool-item-at-construction", lambda d: _mb(layers=[True, 4]), ["True"], owner="core"),
    A(
        "api-plan-num-layers-contradicts-the-model",
        lambda d: _plan(d["base"], num_layers=12),
        ["num_layers=12", "10 decoder layers"],
        owner="core",
    ),
    C(
        "plan-num-layers-with-a-model-is-blamed-on-the-flag",
        "plan",
        "{base}",
        "--num-layers",
        "12",
        needles=["--num-layers 12", "10 decoder layers"],
        owner="core",
    ),
    C(
        "run-segments-longer-than-the-model",
        "run",
        "--segments",
        "000000000001",
        needles=["--segments '000000000001'", "10 decoder layers"],
        **_JOB,
    ),
    C(
        "compare-variant-longer-than-the-model",
        "compare",
        "--variants",
        "11111,000000000001",
        needles=["--variants '000000000001'", "10 decoder layers"],
        **_JOB,
    ),
    C(
        "example-segments-longer-than-the-model",
        "example",
        "--model",
        "{base}",
        "--segments",
        "000000000001",
        needles=["000000000001", "10 layers"],
        **_EX,
    ),
]

# midblock sweep's own options (and its variants against the model)
_SWEEP = dict(
    owner="run",
    defaults={"--model": "{base}", "--preset": "cpu", "--data-dir": "{gsm}", "--output-dir": "{out}/sweep"},
)
SWEEP = [
    C("sweep-seeds-zero", "sweep", "--seeds", "0", needles=[_flag_value("--seeds", "0")], **_SWEEP),
    C("sweep-lrs-not-a-number", "sweep", "--lrs", "1e-4,abc", needles=["--lrs", "'abc'"], **_SWEEP),
    C("sweep-lrs-twice", "sweep", "--lrs", "1e-4,1e-4", needles=["--lrs", "more than once"], **_SWEEP),
    C("sweep-lr-and-lrs", "sweep", "--lr", "1e-3", "--lrs", "1e-4,2e-4", needles=["--lr 0.001", "--lrs"], **_SWEEP),
    C("sweep-validation-zero", "sweep", "--validation", "0", needles=[_flag_value("--validation", "0")], **_SWEEP),
    C("sweep-shuffle-seed-negative", "sweep", "--shuffle-seed", "-1", needles=["--shuffle-seed", "-1"], **_SWEEP),
    C(
        "sweep-recommended-without-window-from",
        "sweep",
        "--variants",
        "recommended,11111",
        needles=["recommended", "--window-from"],
        **_SWEEP,
    ),
    C(
        "sweep-window-from-without-recommended",
        "sweep",
        "--window-from",
        "{badjson}",
        needles=["--window-from", "recommended"],
        **_SWEEP,
    ),
    C("sweep-recipe-unknown", "sweep", "--recipe", "authors2", needles=["--recipe", "authors2"], **_SWEEP),
    C(
        "sweep-eval-protocol-unknown",
        "sweep",
        "--eval-protocol",
        "exact",
        needles=["--eval-protocol", "exact"],
        **_SWEEP,
    ),
    C(
        "sweep-general-text-missing",
        "sweep",
        "--general-text",
        "/nonexistent/general.txt",
        needles=["/nonexistent/general.txt"],
        **_SWEEP,
    ),
    C("sweep-forgetting-blocks-zero", "sweep", "--forgetting-blocks", "0", needles=["--forgetting-blocks"], **_SWEEP),
    C("sweep-heldout-beyond-the-test-rows", "sweep", "--heldout", "100000", needles=["--heldout 100000"], **_SWEEP),
    C(
        "sweep-variant-longer-than-the-model",
        "sweep",
        "--variants",
        "11111,000000000001",
        needles=["--variants '000000000001'", "10 decoder layers"],
        **_SWEEP,
    ),
    A(
        "api-job-options-seeds-bool",
        lambda d: __import__("midblock_plugin.experiments", fromlist=["x"]).JobOptions(output_dir="o", seeds=True),
        ["--seeds True"],
        owner="run",
    ),
]

# midblock export (an adapter for a serving engine, or merged)
_EXPORT = dict(defaults={"--output": "{out}/export"})
EXPORT = [
    C(
        "export-adapter-missing",
        "export",
        "/nonexistent/adapter",
        "--target",
        "vllm",
        needles=["/nonexistent/adapter"],
        **_EXPORT,
    ),
    C(
        "export-adapter-is-a-model",
        "export",
        "{base}",
        "--target",
        "vllm",
        needles=["{base}", "adapter_config.json"],
        **_EXPORT,
    ),
    C(
        "export-target-unknown",
        "export",
        "{adapter}",
        "--target",
        "tensorrt",
        needles=["--target", "tensorrt"],
        **_EXPORT,
    ),
    C(
        "export-tolerance-zero",
        "export",
        "{adapter}",
        "--target",
        "vllm",
        "--tolerance",
        "0",
        needles=[_flag_value("--tolerance", "0.0")],
        **_EXPORT,
    ),
    C(
        "export-dtype-for-an-adapter-target",
        "export",
        "{adapter}",
        "--target",
        "vllm",
        "--dtype",
        "bfloat16",
        needles=["--dtype", "merged"],
        **_EXPORT,
    ),
    C(
        "export-base-missing",
        "export",
        "{adapter}",
        "--target",
        "vllm",
        "--base",
        "/nonexistent/base",
        needles=["/nonexistent/base"],
        **_EXPORT,
    ),
    C(
        "export-device-cuda-without-cuda",
        "export",
        "{adapter}",
        "--target",
        "vllm",
        "--device",
        "cuda",
        needles=["--device", "cuda"],
        no_cuda=True,
        **_EXPORT,
    ),
    C(
        "export-output-is-a-file",
        "export",
        "{adapter}",
        "--target",
        "vllm",
        "--base",
        "{base}",
        "--output",
        "{file}",
        needles=["{file}"],
        **_EXPORT,
    ),
]

# serving: the vLLM rank sizes, the serve budget, the config fragments
SERVING = [
    A(
        "api-vllm-rank-above-its-largest",
        lambda d: __import__("midblock_plugin.rules", fromlist=["x"]).check_vllm_rank(1024),
        ["rank=1024", "512"],
    ),
    A("api-config-budget-unknown", lambda d: _mb(budget="serving"), ["budget='serving'", "'serve'"], owner="core"),
    C("plan-emit-unknown-tool", "plan", "{base}", "--emit", "tgi", needles=["--emit", "tgi"]),
    C("plan-emit-without-a-model", "plan", "--num-layers", "10", "--emit", "peft", needles=["--emit", "MODEL"]),
    C("plan-budget-unknown", "plan", "--num-layers", "10", "--budget", "serving", needles=["--budget", "serving"]),
]

# QLoRA: a checkpoint whose config.json asks for bitsandbytes
QLORA = [
    C(
        "plan-mode-full-on-a-quantized-checkpoint",
        "plan",
        "{qbase}",
        "--mode",
        "full",
        needles=["full", "quantized"],
        owner="core",
    ),
    C(
        "eval-quantized-checkpoint-without-bitsandbytes",
        "eval",
        "{qbase}",
        needles=["{qbase}", "bitsandbytes", "pip install"],
        hide=("bitsandbytes",),
    ),
    C(
        "run-quantized-checkpoint-without-bitsandbytes",
        "run",
        "--model",
        "{qbase}",
        needles=["{qbase}", "bitsandbytes", "pip install"],
        hide=("bitsandbytes",),
        **_JOB,
    ),
    C(
        "example-quantized-checkpoint-without-bitsandbytes",
        "example",
        "--model",
        "{qbase}",
        needles=["{qbase}", "bitsandbytes", "pip install"],
        hide=("bitsandbytes",),
        **_EX,
    ),
    A(
        "api-check-model-dir-quantized-without-bitsandbytes",
        lambda d: __import__("midblock_plugin.checks", fromlist=["x"]).check_model_dir(
            d["qbase"], "MODEL", weights=True
        ),
        ["bitsandbytes", "pip install"],
        exc=ImportError,
        hide=("bitsandbytes",),
    ),
]

# evaluation backends and protocols (midblock eval, the TRL example's --eval-*)
EVAL_BACKENDS = [
    C(
        "eval-backend-vllm-without-vllm",
        "eval",
        "{base}",
        "--backend",
        "vllm",
        needles=["vllm", "pip install"],
        hide=("vllm",),
    ),
    C("eval-backend-unknown", "eval", "{base}", "--backend", "in-memory", needles=["--backend", "in-memory"]),
    C(
        "eval-tensor-parallel-with-hf",
        "eval",
        "{base}",
        "--tensor-parallel-size",
        "2",
        needles=["--tensor-parallel-size 2", "--backend 'vllm'"],
    ),
    C(
        "eval-vllm-args-not-key-value",
        "eval",
        "{base}",
        "--backend",
        "vllm",
        "--vllm-args",
        "gpu_memory_utilization",
        needles=["--vllm-args", "key=value"],
    ),
    C(
        "eval-authors-protocol-fraction-limit",
        "eval",
        "{base}",
        "--protocol",
        "authors",
        "--limit",
        "0.5",
        needles=["--limit 0.5", "authors"],
    ),
    C(
        "eval-paper-protocol-five-shot",
        "eval",
        "{base}",
        "--protocol",
        "paper",
        "--num-fewshot",
        "5",
        needles=["--num-fewshot 5", "paper"],
    ),
    C(
        "eval-authors-protocol-chat-template",
        "eval",
        "{base}",
        "--protocol",
        "authors",
        "--apply-chat-template",
        needles=["--apply-chat-template", "authors"],
    ),
    C(
        "example-eval-backend-vllm-without-vllm",
        "example",
        "--eval-limit",
        "2",
        "--eval-backend",
        "vllm",
        needles=["vllm", "pip install"],
        hide=("vllm",),
        **_EX,
    ),
    C(
        "example-eval-tensor-parallel-with-hf",
        "example",
        "--eval-limit",
        "2",
        "--eval-backend",
        "hf",
        "--eval-tensor-parallel-size",
        "2",
        needles=["--eval-tensor-parallel-size 2"],
        **_EX,
    ),
    C(
        "example-eval-authors-protocol-with-vllm",
        "example",
        "--eval-limit",
        "2",
        "--eval-protocol",
        "authors",
        "--eval-backend",
        "vllm",
        needles=["--eval-backend", "authors"],
        **_EX,
    ),
]

# GSM8K for the evaluation after training: nowhere to be found (offline, no local copy), or broken
_OFFLINE = {"MIDBLOCK_GSM8K_DIR": None, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
EVAL_DATA = [
    C(
        "example-eval-gsm8k-offline-nowhere",
        "example",
        "--eval-limit",
        "2",
        needles=["--eval-data-dir", "HF_HUB_OFFLINE", "--eval-limit"],
        env=_OFFLINE,
        if_reached="silent",  # trained, then "lm-eval final evaluation FAILED" and exit 0
        **_EX,
    ),
    C(
        "example-eval-env-gsm8k-broken-past-line-one",
        "example",
        "--eval-limit",
        "2",
        needles=["test.jsonl:4"],
        env={"MIDBLOCK_GSM8K_DIR": "{gsm_badline}"},
        if_reached="silent",
        **_EX,
    ),
    C(
        "run-gsm8k-offline-nowhere",
        "run",
        needles=["--data-dir", "HF_HUB_OFFLINE"],
        drop=("--data-dir",),
        env=_OFFLINE,
        **_JOB,
    ),
    C(
        "eval-gsm8k-hub-offline",
        "eval",
        "{base}",
        "--data-dir",
        "hub",
        needles=["--data-dir", "HF_HUB_OFFLINE"],
    ),
    C("eval-gsm8k-offline-nowhere", "eval", "{base}", needles=["--data-dir", "HF_HUB_OFFLINE"], env=_OFFLINE),
    A(
        "api-eval-callback-gsm8k-offline-nowhere",
        lambda d: __import__("midblock_plugin.evaluation", fromlist=["x"]).EvalCallback(_es(data_dir="hub", limit=2)),
        ["data_dir", "HF_HUB_OFFLINE"],
        exc=FileNotFoundError,
        if_reached="silent",
    ),
    C(
        "example-sub-eval-gsm8k-offline-nowhere",
        "example-sub",
        "--eval-limit",
        "2",
        needles=["--eval-data-dir", "HF_HUB_OFFLINE"],
        env=_OFFLINE,
        **_SUB,
    ),
]

NEW_CASES = PARSE_TIME + SWEEP + EXPORT + SERVING + QLORA + EVAL_BACKENDS + EVAL_DATA
CASES = PLAN + EVAL + ANALYZE + RUN + EXAMPLE + EXAMPLE_SUB + API + NEW_CASES
RESULTS: dict[str, dict] = {}


# ----------------------------------------------------------------------------- fixtures
def _jsonl(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def _config_only(path: Path, config, weights: bool = True) -> str:
    config.save_pretrained(path)
    if weights:
        (path / "model.safetensors").write_bytes(b"")  # never read: nothing may load it
    return str(path)


def _adapter(path: Path, model, **lora) -> str:
    from peft import LoraConfig, get_peft_model

    get_peft_model(model, LoraConfig(r=4, **lora)).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, str]:
    import transformers

    root = tmp_path_factory.mktemp("bad_inputs")
    d: dict[str, str] = {"gsm": str(GSM8K_DIR)}
    d["base"] = str(save_tiny(root / "base", "llama", num_layers=10))
    d["cfgonly"] = _config_only(root / "cfgonly", tiny_config("llama", num_layers=10), weights=False)
    d["deep"] = _config_only(root / "deep", tiny_config("llama", num_layers=4))
    d["wide"] = _config_only(root / "wide", tiny_config("llama", num_layers=10, hidden=128))
    d["gpt2"] = _config_only(root / "gpt2", tiny_config("gpt2", num_layers=10))
    quantized = tiny_config("llama", num_layers=10)
    quantized.quantization_config = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    d["qbase"] = _config_only(root / "qbase", quantized)  # a pre-quantized (QLoRA) checkpoint's config.json
    d["t5"] = _config_only(
        root / "t5", transformers.T5Config(num_layers=2, d_model=64, d_ff=128, num_heads=2, d_kv=32, vocab_size=512)
    )
    d["bert"] = _config_only(
        root / "bert",
        transformers.BertConfig(
            num_hidden_layers=2, hidden_size=64, num_attention_heads=2, intermediate_size=128, vocab_size=512
        ),
    )
    for name, text in (
        ("notjson", "{not json"),
        ("configlist", "[1, 2]"),
        ("notype", '{"hidden_size": 64, "num_hidden_layers": 4}'),
        ("unknowntype", '{"model_type": "not_a_model", "num_hidden_layers": 4}'),
        ("nolayers", '{"model_type": "llama", "num_hidden_layers": 0, "hidden_size": 64}'),
    ):
        (root / name).mkdir()
        (root / name / "config.json").write_text(text)
        (root / name / "model.safetensors").write_bytes(b"")
        d[name] = str(root / name)
    (root / "empty").mkdir()
    d["empty"] = str(root / "empty")
    d["file"] = str(root / "a-file.txt")
    Path(d["file"]).write_text("not a directory\n")
    d["emptyfile"] = _jsonl(root / "empty.jsonl", [])
    d["badjson"] = str(root / "analysis.json")
    Path(d["badjson"]).write_text("{")

    qv = dict(target_modules=["q_proj", "v_proj"], layers_pattern="layers")
    d["adapter"] = _adapter(root / "adapter", tiny_model("llama", num_layers=10), layers_to_transform=[8, 9], **qv)
    d["adapter_deep"] = _adapter(
        root / "adapter_deep", tiny_model("llama", num_layers=12), layers_to_transform=[11], **qv
    )
    d["adapter_wide"] = _adapter(
        root / "adapter_wide", tiny_model("llama", num_layers=10, hidden=128), layers_to_transform=[8], **qv
    )
    d["adapter_gpt2"] = _adapter(
        root / "adapter_gpt2",
        tiny_model("gpt2", num_layers=10),
        target_modules=["c_attn"],
        layers_to_transform=[8],
        layers_pattern="h",
        fan_in_fan_out=True,
    )
    d["adapter_phi3"] = _adapter(
        root / "adapter_phi3",
        tiny_model("phi3", num_layers=10),
        target_modules=["qkv_proj"],
        layers_to_transform=[8],
        layers_pattern="layers",
    )
    for name in ("adapter_badjson", "adapter_noweights", "adapter_missingbase"):
        shutil.copytree(d["adapter"], root / name)
        d[name] = str(root / name)
    (root / "adapter_badjson" / "adapter_config.json").write_text("{")
    (root / "adapter_noweights" / "adapter_model.safetensors").unlink()
    cfg = json.loads((root / "adapter_missingbase" / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "/nonexistent/base-model"
    (root / "adapter_missingbase" / "adapter_config.json").write_text(json.dumps(cfg))

    rows = [json.dumps(r) for r in gsm8k_rows("train", 8)]
    d["data_ok"] = _jsonl(root / "ok.jsonl", rows)
    d["data_badjson"] = _jsonl(root / "badjson.jsonl", rows[:2] + ["{not json"] + rows[2:])
    d["data_row42"] = _jsonl(root / "row42.jsonl", rows[:1] + ["42"] + rows[1:])
    d["data_late_bad"] = _jsonl(root / "latebad.jsonl", rows[:4] + ["{oops"] + rows[4:])
    d["data_missing_keys"] = _jsonl(root / "missingkeys.jsonl", rows[:1] + ['{"prompt": "no answer"}'] + rows[1:])
    d["prompts_row42"] = _jsonl(root / "prompts42.jsonl", ['{"text": "fine"}', "42", '{"text": "also fine"}'])
    d["finished_other"] = _finished_run(root / "finished_other", segments="11111")
    gsm = root / "gsm_badline"
    gsm.mkdir()
    _jsonl(gsm / "train.jsonl", rows[:3])
    _jsonl(gsm / "test.jsonl", [json.dumps(r) for r in gsm8k_rows("test", 3)] + ["{broken"])
    d["gsm_badline"] = str(gsm)
    return d


def _finished_run(path: Path, segments: str) -> str:
    """An output_dir holding a finished midblock run (plan.json and status) on the example's 8-layer tiny Llama."""
    from midblock_plugin import MidBlockConfig, io
    from midblock_plugin.plan import build_plan
    from midblock_plugin.training.resume import describe_plan

    plan = build_plan(tiny_config("llama", num_layers=8), MidBlockConfig(segments=segments, rank=16))
    io.write_json(io.artifact(path, io.PLAN_JSON), plan.to_json_dict())
    status = {"status": io.COMPLETE, "kind": "training", "plan": describe_plan(plan.to_json_dict())}
    io.write_json(path / io.RUN_STATUS_JSON, {**status, "started": "2026-12-01T00:00:00+00:00"})
    return str(path)


class Reached(BaseException):
    """A tripwire fired: weights were about to load, or a training step to run."""


class Hang(BaseException):
    pass


@pytest.fixture
def tripwires(monkeypatch):
    """Replace every way to load weights or take a step with a :class:`Reached` raise."""
    import peft
    import transformers

    import midblock_plugin.models

    def wire(what):
        def fire(*args, **kwargs):
            raise Reached(what)

        return fire

    monkeypatch.setattr(
        transformers.AutoModelForCausalLM, "from_pretrained", wire("AutoModelForCausalLM.from_pretrained")
    )
    real_from_config = transformers.AutoModelForCausalLM.from_config

    def from_config(*args, **kwargs):  # a shape-only copy on the meta device holds no weights: allowed
        import torch

        if torch.get_default_device().type == "meta":
            return real_from_config(*args, **kwargs)
        raise Reached("AutoModelForCausalLM.from_config")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_config", from_config)
    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", wire("PreTrainedModel.from_pretrained"))
    monkeypatch.setattr(transformers.Trainer, "train", wire("Trainer.train"))
    monkeypatch.setattr(peft.PeftModel, "from_pretrained", wire("PeftModel.from_pretrained"))
    monkeypatch.setattr(midblock_plugin.models, "smollm2_dir", wire("the default model download"))


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    dest = os.environ.get("MIDBLOCK_BAD_INPUTS_REPORT")
    if dest and RESULTS:
        counts: dict[str, int] = {}
        for r in RESULTS.values():
            counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
        Path(dest).write_text(json.dumps({"tried": len(RESULTS), "counts": counts, "cases": RESULTS}, indent=1))


_EXAMPLE_MODULE = None


def _example():
    global _EXAMPLE_MODULE
    if _EXAMPLE_MODULE is None:
        spec = importlib.util.spec_from_file_location("sft_midblock_example", SCRIPT)
        _EXAMPLE_MODULE = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_EXAMPLE_MODULE)
    return _EXAMPLE_MODULE


# ----------------------------------------------------------------------------- running a row
def _argv(case: Case, values: dict[str, str]) -> list[str]:
    argv = [a.format(**values) for a in case.argv]
    for flag, value in case.defaults.items():
        if flag not in argv and flag not in case.drop:
            argv += [flag] if value is None else [flag, value.format(**values)]
    return argv


@contextlib.contextmanager
def _deadline(seconds: int):
    def alarm(signum, frame):
        raise Hang(f"no answer after {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _missing(needles: tuple, text: str, values: dict[str, str]) -> list:
    missing = []
    for needle in needles:
        options = needle if isinstance(needle, tuple) else (needle,)
        if not any(o.format(**values) in text for o in options):
            missing.append(needle)
    return missing


def _run_in_process(case: Case, values: dict, capsys, caplog) -> tuple[Any, str, BaseException | None, str]:
    """``(status, text, exception, traceback)`` of one in-process row."""
    capsys.readouterr()
    status: Any = None
    exc: BaseException | None = None
    tb = ""
    caught_text: list[str] = []
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        try:
            with _deadline(HANG_S):
                if case.entry == "api":
                    status = case.call(values)
                    caught_text = list(getattr(status, "warnings", None) or [])  # a plan's own warnings
                elif case.entry == "example":
                    status = _example().main(_argv(case, values))
                else:
                    from midblock_plugin.cli import main

                    status = main([case.entry, *_argv(case, values)])
        except SystemExit as e:  # argparse
            status = e.code
        except (Reached, Hang) as e:
            exc = e
        except Exception as e:  # noqa: BLE001 - every escape is a finding
            exc, tb = e, traceback.format_exc()
    out, err = capsys.readouterr()
    text = "\n".join([err, out, *(str(w.message) for w in caught), *map(str, caught_text), caplog.text])
    return status, text, exc, tb


def _verdict(case: Case, values: dict, status: Any, text: str, exc: BaseException | None, tb: str) -> tuple[str, str]:
    if isinstance(exc, Hang):
        return "hang", str(exc)
    if isinstance(exc, Reached):
        return case.if_reached, f"got as far as {exc} (no early error)"
    if case.entry == "api":
        if exc is None:
            if case.expect == "warn":
                missing = _missing(case.needles, text, values)
                return ("ok", "") if not missing else ("silent", f"accepted without a warning naming {missing}")
            return "silent", "accepted"
        if not isinstance(exc, case.exc):
            return "late", f"raised {type(exc).__name__} (expected {case.exc}): {exc}"
        missing = _missing(case.needles, str(exc), values)
        return ("ok", f"{type(exc).__name__}: {exc}") if not missing else ("late", f"message lacks {missing}: {exc}")
    if exc is not None:
        return "late", f"traceback: {tb[-1500:]}"
    if case.expect == "warn":
        missing = _missing(case.needles, text, values)
        if status not in (0, None):
            return "late", f"exit {status}: {text[-800:]}"
        return ("ok", "") if not missing else ("silent", f"accepted without a warning naming {missing}")
    if status in (0, None):
        return "silent", f"exit 0: {text[-800:]}"
    if "Traceback" in text:
        return "late", f"a traceback on stderr: {text[-1500:]}"
    if status != 2:
        return "late", f"exit {status} (expected 2): {text[-800:]}"
    missing = _missing(case.needles, text, values)
    return ("ok", text.strip()[-800:]) if not missing else ("late", f"message lacks {missing}: {text[-800:]}")


def _run_subprocess(case: Case, values: dict) -> tuple[str, str]:
    argv = _argv(case, values)
    t0 = time.perf_counter()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    for name, value in case.env.items():
        env.pop(name, None) if value is None else env.__setitem__(name, value.format(**values))
    try:
        r = subprocess.run(
            [sys.executable, str(SCRIPT), *argv],
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT_S,
            cwd=ROOT,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return "hang", f"no answer after {SUBPROCESS_TIMEOUT_S} s"
    seconds = time.perf_counter() - t0
    out = Path(values["out"]) / "ex"
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) if out.is_dir() else []
    if r.returncode == 0:
        return "silent", f"exit 0 after {seconds:.0f} s; wrote {written}"
    if written:
        return "late", f"exit {r.returncode} after {seconds:.0f} s, having written {written}: {r.stderr[-800:]}"
    if "Traceback" in r.stderr:
        return "late", f"a traceback after {seconds:.0f} s: {r.stderr[-1500:]}"
    if r.returncode != 2:
        return "late", f"exit {r.returncode} (expected 2): {r.stderr[-800:]}"
    missing = _missing(case.needles, r.stderr, values)
    return (
        ("ok", f"{r.stderr.strip()[-800:]} ({seconds:.0f} s)")
        if not missing
        else ("late", f"message lacks {missing}: {r.stderr[-800:]}")
    )


# ----------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_early_and_clearly(case, dirs, tmp_path, monkeypatch, tripwires, capsys, caplog):
    if case.no_cuda:
        import torch

        if torch.cuda.is_available():
            pytest.skip("needs a machine without CUDA")
    values = {**dirs, "out": str(tmp_path / "out")}
    for name, value in case.env.items():
        monkeypatch.delenv(name, raising=False) if value is None else monkeypatch.setenv(name, value.format(**values))
    for name in case.hide:
        for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            monkeypatch.delitem(sys.modules, mod)
        monkeypatch.setitem(sys.modules, name, None)
    if case.entry == "example-sub":
        outcome, detail = _run_subprocess(case, values)
    else:
        outcome, detail = _verdict(case, values, *_run_in_process(case, values, capsys, caplog))
    RESULTS[case.id] = {"entry": case.entry, "owner": case.owner, "outcome": outcome, "detail": detail[-600:]}
    assert outcome == "ok", f"{outcome.upper()} ({case.owner}): {detail}"


def test_the_table_is_broad_and_cheap():
    assert len({c.id for c in CASES}) == len(CASES) >= 80
    assert {c.entry for c in CASES} >= {
        "plan",
        "eval",
        "analyze",
        "run",
        "compare",
        "sweep",
        "export",
        "example",
        "example-sub",
        "api",
    }
    assert len([c for c in CASES if c.entry == "example-sub"]) < 15


def test_dash_values_work_as_documented(capsys):
    """README's ``--layers -4--1``: the ``midblock`` CLI and the TRL example read it as a value."""
    from midblock_plugin.cli import main

    assert main(["plan", "--num-layers", "10", "--layers", "-4--1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["layers"] == [6, 7, 8, 9]
    args = _example().parse_args(
        ["--data", "x.jsonl", "--output-dir", "o", "--layers", "-4--1", "--window", "0.2:0.8"]
    )
    assert args.layers == "-4--1" and args.window == "0.2:0.8"


def test_good_inputs_pass_the_checks(dirs):
    """The checks refuse nothing valid: a matching adapter, a hub-style id that is cached nowhere is an error, not a crash."""
    from midblock_plugin import checks

    config = checks.check_model_dir(dirs["base"], "MODEL", weights=True)
    checks.check_adapter(dirs["adapter"], config, "--adapter")
    checks.check_device("cpu", "--device")
    checks.check_output_file(str(Path(dirs["empty"]) / "new" / "x.json"), "--output")
    checks.check_output_dir(str(Path(dirs["empty"]) / "new"), "--output-dir")
    assert not (Path(dirs["empty"]) / "new").exists()  # checking creates nothing
    with pytest.raises(FileNotFoundError, match="no-such-org/no-such-model"):
        checks.check_model_dir("no-such-org/no-such-model", "MODEL")


# ----------------------------------------------------------------------------- order and outcome (issue 23)
@pytest.fixture(scope="module")
def garbage_weights(tmp_path_factory) -> Path:
    """A 10-layer tiny Llama directory whose ``model.safetensors`` is not a safetensors file: a
    command that opened it would fail with safetensors' own error, never with the window's."""
    model = Path(save_tiny(tmp_path_factory.mktemp("garbage") / "model", "llama", num_layers=10))
    (model / "model.safetensors").write_bytes(b"not a safetensors file")
    return model


@pytest.mark.parametrize(
    "entry, argv, needle",
    [
        ("run", ["--segments", "000000000001"], "--segments '000000000001'"),
        ("compare", ["--variants", "11111,000000000001"], "--variants '000000000001'"),
        ("sweep", ["--variants", "11111,000000000001", "--seeds", "2"], "--variants '000000000001'"),
        ("example", ["--segments", "000000000001"], "segments='000000000001'"),
    ],
)
def test_a_window_deeper_than_the_model_fails_before_any_weight_file_is_opened(
    entry, argv, needle, garbage_weights, tmp_path, capsys
):
    """The mask is checked against config.json's depth first: the error names the flag and both depths,
    no weight file is read (reading this one would end in safetensors' error instead), and nothing is
    written (no output directory at all, so no base model was scored)."""
    out = tmp_path / "out"
    if entry == "example":
        status = _example().main(
            [
                "--model",
                str(garbage_weights),
                "--data",
                str(GSM8K_DIR / "train.jsonl"),
                "--output-dir",
                str(out),
                *argv,
            ]
        )
    else:
        from midblock_plugin.cli import main

        common = ["--model", str(garbage_weights), "--preset", "cpu", "--data-dir", str(GSM8K_DIR)]
        status = main([entry, *common, "--output-dir", str(out), *argv])
    err = capsys.readouterr().err
    assert status == 2, err
    assert needle in err and "12 segments" in err and "10 layers" in err, err
    assert "safetensors" not in err.lower() and "Traceback" not in err
    assert not out.exists()


def test_an_adapter_deeper_than_the_model_fails_before_any_weight_file_is_opened(garbage_weights, dirs, capsys):
    from midblock_plugin.cli import main

    assert main(["eval", str(garbage_weights), "--adapter", dirs["adapter_deep"]]) == 2
    err = capsys.readouterr().err
    assert "--adapter" in err and "layer 11" in err and "safetensors" not in err.lower()


def _small_gsm8k(root: Path) -> Path:
    """A private GSM8K copy (16 training, 8 test rows) that a test may break."""
    root.mkdir(parents=True)
    for split, n in (("train", 16), ("test", 8)):
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gsm8k_rows(split, n)))
    return root


@pytest.fixture
def data_vanishes_when_training_starts(monkeypatch):
    """A fault: the GSM8K test file disappears once training starts (a shared filesystem hiccup),
    after every check passed. The real ``Trainer.train`` runs; the evaluation after it fails for real."""
    import transformers

    real_train = transformers.Trainer.train
    doomed: list[Path] = []

    def train(self, *args, **kwargs):
        for path in doomed:
            path.unlink(missing_ok=True)
        return real_train(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "train", train)
    return doomed


def test_example_evaluation_failing_after_training_keeps_the_model_and_exits_3(
    tmp_path, data_vanishes_when_training_starts, capsys
):
    from midblock_plugin.evaluation import EVAL_FAILED_EXIT

    data = _small_gsm8k(tmp_path / "gsm8k")
    data_vanishes_when_training_starts.append(data / "test.jsonl")
    out = tmp_path / "out"
    argv = ["--data", str(data / "train.jsonl"), "--output-dir", str(out), "--max-steps", "1", "--batch-size", "2"]
    argv += ["--eval-limit", "1", "--eval-fewshot", "0", "--eval-max-gen-toks", "4", "--eval-data-dir", str(data)]
    status = _example().main(argv)
    captured = capsys.readouterr()
    assert status == EVAL_FAILED_EXIT == 3, captured.err[-3000:]
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()  # kept
    assert "the evaluation failed after training" in captured.err and f"saved in {out}" in captured.err
    assert "test.jsonl" in json.loads((out / "eval" / "error.json").read_text())["error"]


def test_run_evaluation_failing_after_training_keeps_the_adapter_and_exits_3(
    tmp_path, dirs, data_vanishes_when_training_starts, capsys
):
    """``midblock run``: the base model is scored, the variant trains and is saved, then its evaluation
    fails: exit 3, the adapter on disk, the run recorded incomplete with the error."""
    from midblock_plugin import io
    from midblock_plugin.cli import main
    from midblock_plugin.evaluation import EVAL_FAILED_EXIT

    data = _small_gsm8k(tmp_path / "gsm8k")
    data_vanishes_when_training_starts.append(data / "test.jsonl")
    out = tmp_path / "run"
    argv = ["run", "--model", dirs["base"], "--preset", "cpu", "--data-dir", str(data), "--output-dir", str(out)]
    argv += ["--max-steps", "1", "--num-examples", "4", "--batch-size", "2", "--heldout", "2"]
    argv += ["--eval-limit", "1", "--num-fewshot", "0", "--max-gen-toks", "4", "--skip-analysis", "--skip-forgetting"]
    status = main(argv)
    err = capsys.readouterr().err
    assert status == EVAL_FAILED_EXIT == 3, err[-3000:]
    adapter = out / "variant-01110" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()
    assert (out / "base" / "eval" / "gsm8k.baseline.json").is_file()  # the base model was scored before
    assert "the evaluation failed" in err and str(adapter) in err and "Traceback" not in err
    status_doc = json.loads((out / io.RUN_STATUS_JSON).read_text())
    assert status_doc["status"] == "incomplete" and "EvaluationError" in status_doc["error"]


def test_exit_status_3_is_documented_once(capsys):
    """One definition (``EVAL_FAILED_EXIT``), shown by ``midblock --help`` / ``run --help``, the example's
    ``--help`` and docs/evaluation.md."""
    import argparse

    from midblock_plugin.cli import EXIT_STATUSES, build_parser
    from midblock_plugin.evaluation import EVAL_FAILED_EXIT

    assert f"{EVAL_FAILED_EXIT} the evaluation failed after training" in EXIT_STATUSES
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert parser.epilog == EXIT_STATUSES
    assert all(sub.choices[name].epilog == EXIT_STATUSES for name in ("run", "compare", "sweep", "eval"))
    with pytest.raises(SystemExit):
        _example().parse_args(["--help"])
    assert f"exits {EVAL_FAILED_EXIT}" in " ".join(capsys.readouterr().out.split())
    assert f"exit status {EVAL_FAILED_EXIT}" in (ROOT / "docs" / "evaluation.md").read_text()
    sources = [p.read_text() for p in (ROOT / "midblock_plugin").rglob("*.py")] + [SCRIPT.read_text()]
    assert sum("EVAL_FAILED_EXIT = " in text for text in sources) == 1
