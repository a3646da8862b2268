"""Axolotl's own lifecycle commands on an ``adapter: midblock`` run, through the real CLI
modules in subprocesses, on whichever Axolotl the environment holds (0.19 in ``.venv-axolotl``,
0.21 in ``.venv-axolotl021``):

* ``evaluate`` and ``inference`` (non-interactive: the prompt on standard input) load the
  trained adapter through the plugin's ``load_adapter`` (``lora_model_dir``): the model they
  build holds the saved adapter's exact weights on the window's layers only, and evaluation
  with it gives another loss than the untrained base;
* ``merge-lora``'s two methods are in test_lora.py (``test_merge_lora_equals_base_plus_adapter``);
* ``sample_packing: true`` trains with the plugin (sdpa / eager attention on the CPU: packed rows
  are kept apart by their position ids);
* Axolotl 0.20+ loads the plugin through the ``axolotl.plugins`` entry point: ``adapter: midblock``
  trains with no ``plugins:`` list, and a plugin listed as well acts once;
* ``.ci/axolotl-setup.sh`` for 0.21 where no Python 3.12 exists: a clear skip (exit status 3).
"""

from __future__ import annotations

import csv
import json
import re

import pytest

from tests.axolotl.helpers import DISCOVERS_ENTRY_POINTS, PLUGIN, RECORDER, SHORT_PLUGIN, WINDOW, axolotl_version


pytestmark = pytest.mark.axolotl

PLAN_LINE = "midblock: lora mode on layers 1-3 of 5"


def _hooks(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _loaded(workspace, name: str, command: str, adapter_dir, *args, stdin_text=None, **overrides):
    """``python -m axolotl.cli.<command>`` with ``lora_model_dir: adapter_dir`` (None: no adapter
    to load) and the hook recorder; the run and what the recorder saw at ``post_model_load``."""
    log = workspace.root / f"{name}-hooks.jsonl"
    cfg = workspace.config(
        name, plugins=[PLUGIN, RECORDER], lora_model_dir=str(adapter_dir) if adapter_dir else None, **overrides
    )
    run = workspace.axolotl(
        command, workspace.write(cfg, name), *args, env={"MIDBLOCK_HOOK_LOG": str(log)}, stdin_text=stdin_text
    ).check()
    (loaded,) = [h for h in _hooks(log) if h["hook"] == "post_model_load"]
    return run, loaded


def _train_loss(output_dir) -> float:
    with open(output_dir / "eval_summary.csv", encoding="utf-8") as fh:
        rows = {row["metric"]: row for row in csv.DictReader(fh)}
    return float(rows["loss"]["training"])


# --------------------------------------------------------------------------- evaluate


def test_evaluate_loads_the_trained_adapter(workspace, lora_run):
    run, loaded = _loaded(workspace, "evaluate-trained", "evaluate", lora_run.output_dir)
    assert PLAN_LINE in run.output  # through the plugin's pre_model_load / load_adapter
    assert loaded["lora_layers"] == WINDOW
    assert loaded["adapter_tensors"] == loaded["saved_tensors"] > 0 and loaded["adapter_max_diff"] == 0.0
    trained = _train_loss(run.output_dir)

    # the same command with a fresh adapter (LoRA B = 0: the base model) gives another loss
    base_run, base_loaded = _loaded(workspace, "evaluate-base", "evaluate", None)
    assert base_loaded["lora_layers"] == WINDOW and "adapter_tensors" not in base_loaded
    base = _train_loss(base_run.output_dir)
    assert abs(trained - base) > 1e-3, (trained, base)


# --------------------------------------------------------------------------- inference


def test_inference_loads_the_trained_adapter_and_generates(workspace, lora_run):
    """``axolotl inference`` reads one instruction from standard input until EOF, generates (with
    sampling: Axolotl's fixed generation config) and returns at the next, empty, read."""
    prompt = "Natalia sold clips to 48 of her friends in April. How many clips did she sell?"
    run, loaded = _loaded(
        workspace, "inference", "inference", lora_run.output_dir, "--prompter=AlpacaPrompter", stdin_text=prompt + "\n"
    )
    assert PLAN_LINE in run.output
    assert loaded["lora_layers"] == WINDOW
    assert loaded["adapter_tensors"] == loaded["saved_tensors"] > 0 and loaded["adapter_max_diff"] == 0.0
    # the prompt went through the model: Axolotl prints the decoded prompt + generation after its ruler
    decoded = [part for part in run.stdout.split("=" * 80) if "### Response:" in part][-1]
    assert "### Instruction:" in decoded and prompt in decoded, run.stdout[-3000:]
    assert decoded.split("### Response:", 1)[1].strip(), "nothing was generated"


# --------------------------------------------------------------------------- sample packing


@pytest.fixture(scope="module")
def short_rows(workspace):
    """Short alpaca rows (a GSM8K question's first sentence and its final answer), so several
    fit one packed sequence."""
    from midblock_plugin.testing import gsm8k_rows

    path = workspace.root / "gsm8k-short.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for row in gsm8k_rows("train", n=48):
            first = row["question"].split(". ")[0][:80]
            fh.write(
                json.dumps({"instruction": first, "input": "", "output": row["answer"].split("####")[-1].strip()})
                + "\n"
            )
    return path


def test_sample_packing_trains_with_the_plugin(workspace, short_rows):
    log = workspace.root / "packed-hooks.jsonl"
    run = workspace.train(
        "packed",
        env={"MIDBLOCK_HOOK_LOG": str(log)},
        plugins=[PLUGIN, RECORDER],
        datasets=[{"path": str(short_rows), "ds_type": "json", "type": "alpaca"}],
        dataset_prepared_path=str(workspace.root / "prepared-packed"),
        sample_packing=True,
        eval_sample_packing=False,
        pad_to_sequence_len=True,
        sequence_len=256,
        attn_implementation="sdpa" if axolotl_version() >= (0, 20) else None,
        sdp_attention=True if axolotl_version() < (0, 20) else None,
    ).check()
    hooks = _hooks(log)
    assert [h["lora_layers"] for h in hooks if h["hook"] == "post_lora_load"] == [WINDOW]
    assert [h["plan_json"] for h in hooks if h["hook"] == "post_train"][:1] == [True]
    # packing packed: 48 rows of ~30 tokens went into far fewer than 48 / micro_batch_size = 24 batches,
    # and the 2 x 256 token positions of a step are mostly real tokens (unpacked: ~60 of 512)
    batches = [int(n) for n in re.findall(r"gather_len_batches: \[(\d+)\]", run.output)]
    assert batches and max(batches) < 24, (batches, run.output[-4000:])
    trainable = [int(n) for n in re.findall(r"'tokens/trainable': '?(\d+)", run.output)]
    assert trainable and trainable[0] > 256, trainable
    norms = [float(m) for m in re.findall(r"'grad_norm': '?([0-9.e-]+)", run.output)]
    assert len(norms) == 2 and all(n > 0 for n in norms), norms


# --------------------------------------------------------------------------- entry point (0.20+)

needs_discovery = pytest.mark.skipif(
    not DISCOVERS_ENTRY_POINTS,
    reason=f"Axolotl {'.'.join(map(str, axolotl_version()))} loads only listed plugins; "
    "entry-point discovery came with 0.20 (run in .venv-axolotl021)",
)


def _once(run, hooks) -> None:
    """The plugin acted once: one plan printed, one MidBlockCallback, one adapter on the window."""
    assert run.output.count(PLAN_LINE) == 1, run.output.count(PLAN_LINE)
    (created,) = [h for h in hooks if h["hook"] == "post_trainer_create"]
    assert created["callbacks"].count("MidBlockCallback") == 1, created["callbacks"]
    assert [h["lora_layers"] for h in hooks if h["hook"] == "post_lora_load"] == [WINDOW]


@needs_discovery
def test_adapter_midblock_trains_with_no_plugins_list(workspace):
    """Only the hook recorder is listed; MidBlockPlugin comes from the entry point, before it."""
    log = workspace.root / "no-list-hooks.jsonl"
    run = workspace.train("no-list", env={"MIDBLOCK_HOOK_LOG": str(log)}, plugins=[RECORDER]).check()
    assert f"Plugin loaded successfully: {PLUGIN}" in run.output
    _once(run, _hooks(log))
    assert (run.output_dir / "midblock" / "plan.json").exists()


@needs_discovery
@pytest.mark.parametrize("listed", ["full", "short"])
def test_plugin_listed_and_discovered_acts_once(workspace, lora_run, lora_gc_run, listed):
    """Listed by its full path (the entry point's own name: one instance) or by the short path
    (a second instance, which stays inert): either way each hook acts once."""
    run = lora_run if listed == "full" else lora_gc_run
    assert (PLUGIN if listed == "full" else SHORT_PLUGIN) in run.output
    _once(run, run.hooks)


# --------------------------------------------------------------------------- the setup script


def test_setup_script_without_python_312_says_how_to_provide_it(tmp_path):
    """``AXOLOTL_VERSION=0.21.0 bash .ci/axolotl-setup.sh`` where no Python 3.12 exists: exit status 3
    (the test command's cue to skip the 0.21 suite) and a message naming how to provide one."""
    import shutil
    import subprocess

    from tests.axolotl.helpers import ROOT

    bare_path = "/usr/bin:/bin"
    if shutil.which("python3.12", path=bare_path):
        pytest.skip("this machine has python3.12 in /usr/bin: the script would build the environment")
    venv = tmp_path / "venv"
    env = {"PATH": bare_path, "HOME": str(tmp_path), "AXOLOTL_VERSION": "0.21.0", "AXOLOTL_VENV": str(venv)}
    out = subprocess.run(
        ["bash", str(ROOT / ".ci" / "axolotl-setup.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 3, out.stdout + out.stderr
    assert "needs Python 3.12" in out.stderr and "pyenv install 3.12" in out.stderr and "PYTHON=" in out.stderr
    assert not venv.exists()
