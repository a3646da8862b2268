"""``midblock_eval``: lm-eval's GSM8K on the trained model, in memory, at the end of an
Axolotl run (offline, from a local GSM8K directory); the same numbers as ``midblock eval``
on the saved adapter; a failing evaluation neither fails the run nor loses the model; bad
settings fail when the config is loaded."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.axolotl.helpers import ENV, PLUGIN, RECORDER, ROOT
from tests.axolotl.helpers import args_error as _error
from tests.axolotl.helpers import validate_args as _validate


pytestmark = pytest.mark.axolotl

FILTERS = {"strict-match", "flexible-extract"}


def _eval_settings(data_dir, **extra) -> dict:
    return {"limit": 2, "num_fewshot": 1, "max_gen_toks": 8, "data_dir": str(data_dir), **extra}


@pytest.fixture(scope="module")
def eval_run(workspace):
    """LoRA mode, 2 steps, then GSM8K (2 rows, 1-shot, 8 new tokens) with every sample saved,
    and a baseline evaluation of the untrained model at train start."""
    from midblock_plugin.testing import GSM8K_DIR

    return workspace.train("eval", midblock_eval=_eval_settings(GSM8K_DIR, save_samples=True, baseline=True)).check()


def _midblock_cli() -> list[str]:
    script = Path(sys.executable).parent / "midblock"
    return [str(script)] if script.exists() else [sys.executable, "-m", "midblock_plugin.cli"]


def test_eval_writes_gsm8k_json_after_the_model_is_saved(eval_run):
    out = eval_run.output_dir
    assert (out / "adapter_model.safetensors").exists()
    report = json.loads((out / "eval" / "gsm8k.json").read_text())
    assert report["task"] == "gsm8k" and report["label"] == "final"
    assert set(report["metrics"]) == FILTERS
    assert all("exact_match" in report["metrics"][f] for f in FILTERS)
    assert report["n_samples"] == 2 and report["num_fewshot"] == 1
    assert report["source"]["kind"] == "local"  # the local GSM8K copy, nothing from the hub
    assert report["model"]["peft"] is True  # the PeftModel in memory, not a reload
    assert report["distributed"]["mode"] == "single"
    assert not (out / "eval" / "error.json").exists()
    # single process: evaluated at Axolotl's second post_train call, i.e. after the save
    log = eval_run.output
    saved, evaluated = (
        log.find("Model successfully saved"),
        log.find("lm-eval final evaluation of the model in memory"),
    )
    assert 0 <= saved < evaluated, "the evaluation must run after the model is saved"
    assert "(after the model was saved)" in log
    assert "lm-eval results written to" in log
    assert len((out / "eval" / "gsm8k.samples.jsonl").read_text().splitlines()) == 2
    # baseline: the callback registered with the trainer evaluated the untrained model first
    assert set(report["baseline"]) == FILTERS and set(report["change"]) == FILTERS
    assert json.loads((out / "eval" / "gsm8k.baseline.json").read_text())["label"] == "baseline"
    assert 0 <= log.find("lm-eval (baseline)") < log.find("Training completed") < log.find("lm-eval (final)")


def test_eval_equals_midblock_eval_of_the_saved_adapter(workspace, eval_run, tmp_path):
    """`midblock eval BASE --adapter OUT` in the same venv: same metrics, same generations."""
    from midblock_plugin.testing import GSM8K_DIR

    cli_json = tmp_path / "cli.json"
    cmd = [
        *_midblock_cli(),
        "eval",
        str(workspace.model_dir),
        "--adapter",
        str(eval_run.output_dir),
        "--limit",
        "2",
        "--num-fewshot",
        "1",
        "--max-gen-toks",
        "8",
        "--data-dir",
        str(GSM8K_DIR),
        "--save-samples",
        "--output",
        str(cli_json),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, **ENV})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cli = json.loads(cli_json.read_text())
    trained = json.loads((eval_run.output_dir / "eval" / "gsm8k.json").read_text())
    assert cli["metrics"] == trained["metrics"]
    assert (cli["n_samples"], cli["num_fewshot"]) == (trained["n_samples"], trained["num_fewshot"]) == (2, 1)
    # the strong check: the in-memory model and the reloaded adapter generate the same text
    cli_rows = [json.loads(line) for line in (tmp_path / "cli.samples.jsonl").read_text().splitlines()]
    run_rows = [
        json.loads(line) for line in (eval_run.output_dir / "eval" / "gsm8k.samples.jsonl").read_text().splitlines()
    ]
    assert [(r["doc_id"], r["prompt"], r["response"]) for r in cli_rows] == [
        (r["doc_id"], r["prompt"], r["response"]) for r in run_rows
    ]


def test_failed_eval_keeps_the_model_and_exits_3(workspace, tmp_path):
    """A GSM8K copy that is whole when the config is checked (every line is read then) and gets a
    broken line after training, before the save (the test plugin of hook_recorder.py breaks it):
    the final evaluation fails; the model is saved first and the run ends with exit status 3
    (``EVAL_FAILED_EXIT``), raised in ``post_train_unload``."""
    from midblock_plugin.evaluation import EVAL_FAILED_EXIT
    from midblock_plugin.testing import GSM8K_DIR

    data = tmp_path / "gsm8k-broken"
    data.mkdir()
    shutil.copy(GSM8K_DIR / "train.jsonl", data / "train.jsonl")
    shutil.copy(GSM8K_DIR / "test.jsonl", data / "test.jsonl")

    run = workspace.train(
        "eval-broken",
        env={"MIDBLOCK_BREAK_JSONL": str(data / "test.jsonl")},
        plugins=[PLUGIN, RECORDER],
        midblock_eval=_eval_settings(data),
    )
    assert run.returncode == EVAL_FAILED_EXIT == 3, run.output[-4000:]
    assert f"exit status {EVAL_FAILED_EXIT}" in run.output
    out = run.output_dir
    assert (out / "adapter_model.safetensors").exists() and (out / "adapter_config.json").exists()
    assert not (out / "eval" / "gsm8k.json").exists()
    error = json.loads((out / "eval" / "error.json").read_text())
    assert error["label"] == "final" and error["error"] and error["traceback"]
    assert "lm-eval final evaluation FAILED" in run.output
    assert "the lm-eval evaluation failed" in run.output and "saved model are unaffected" in run.output
    assert run.output.find("Model successfully saved") < run.output.find("lm-eval final evaluation FAILED")


def test_bad_eval_key_fails_validation_in_axolotl_train(workspace):
    from midblock_plugin.testing import GSM8K_DIR

    cfg = workspace.config("eval-typo", midblock_eval={"limit": 2, "num_fewshots": 1, "data_dir": str(GSM8K_DIR)})
    run = workspace.axolotl("train", workspace.write(cfg, "eval-typo"))
    assert run.returncode != 0
    assert "midblock_eval: unknown evaluation option 'num_fewshots' (did you mean 'num_fewshot'?)" in run.output
    assert "allowed fields: enabled, tasks, num_fewshot, limit," in run.output
    assert "Loading weights" not in run.output and not (workspace.root / "eval-typo").exists()


def test_eval_without_findable_gsm8k_is_refused_before_the_model_loads(workspace, tmp_path):
    """midblock_eval with no data_dir, no $MIDBLOCK_GSM8K_DIR and the hub offline (empty caches): refused
    in pre_model_load, before the weights load, naming the key and how to fix it."""
    cfg = workspace.config("eval-offline", midblock_eval={"limit": 2, "num_fewshot": 1})
    env = {"MIDBLOCK_GSM8K_DIR": "", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    run = workspace.axolotl("train", workspace.write(cfg, "eval-offline"), env=env)
    assert run.returncode != 0
    assert "midblock_eval: the evaluation after training needs GSM8K, which cannot be found" in run.output, run.output[
        -3000:
    ]
    assert "or remove midblock_eval" in run.output
    assert "Loading weights" not in run.output and "Starting trainer" not in run.output


# --------------------------------------------------------------------------- the pydantic model itself


@pytest.mark.parametrize(
    "value, expected",
    [
        (
            {"limt": 5},
            "midblock_eval: unknown evaluation option 'limt' (did you mean 'limit'?); allowed fields: enabled, tasks,",
        ),
        ({"limit": 0}, "midblock_eval: limit: 0 must be a positive integer"),
        ({"batch_size": "big"}, "midblock_eval: batch_size: 'big' must be a positive integer, 'auto' or 'auto:N'"),
        ({"data_dir": "/no/such/gsm8k"}, "midblock_eval: data_dir: '/no/such/gsm8k' is not a directory"),
        (250, "midblock_eval: expected a mapping of evaluation settings"),
    ],
)
def test_bad_eval_settings_name_the_key_and_the_field(value, expected):
    assert expected in _error(midblock_eval=value)


def test_eval_key_values_and_other_adapters():
    from midblock_plugin.integrations.axolotl.args import MidBlockArgs
    from midblock_plugin.testing import GSM8K_DIR

    assert _validate().midblock_eval is None  # absent: off
    assert _validate(midblock_eval=True).midblock_eval == {}  # true: the defaults
    assert _validate(midblock_eval=False).midblock_eval is None
    settings = {"limit": 250, "num_fewshot": 5, "data_dir": str(GSM8K_DIR), "baseline": True}
    assert _validate(midblock_eval=settings).midblock_eval == settings
    # the one midblock_* key that also works without adapter: midblock (evaluate a uniform-LoRA baseline)
    assert MidBlockArgs.model_validate({"adapter": "lora", "midblock_eval": settings}).midblock_eval == settings
