"""One owner per Axolotl ``output_dir`` (issue 23, item 1): the lock and status record of
``midblock run`` through the plugin. A run into a directory another run holds, or whose previous
midblock run was trained with another plan, stops before the model loads; ``midblock_overwrite:
true`` replaces that run; the status ends ``complete`` or ``incomplete`` with the error."""

from __future__ import annotations

import json
import os
import shutil
import socket

import pytest

from midblock_plugin.testing.launch import hold_run_directory
from tests.axolotl.helpers import MATCHED_RANK, PLUGIN


pytestmark = pytest.mark.axolotl

PLAN = f"layers 1-3 of 5, lora rank {MATCHED_RANK} per layer"
#: midblock_layers "2-3": rank floor(4 * 5 / 2) = 10 on each of the two layers
OTHER = {"midblock_segments": None, "midblock_layers": "2-3"}
OTHER_PLAN = "layers 2-3 of 5, lora rank 10 per layer"


def _status(out) -> dict:
    return json.loads((out / "midblock-run.json").read_text())


def _files(out) -> dict[str, bytes]:
    """The run's files and their bytes (not ``debug.log``, which Axolotl appends to on every start)."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "debug.log"
    }


def _copy(run, workspace, name):
    out = workspace.root / name
    shutil.copytree(run.output_dir, out)
    return out


def test_a_training_run_records_complete(lora_run):
    status = _status(lora_run.output_dir)
    assert status["status"] == "complete" and status["kind"] == "training" and status["plan"] == PLAN
    assert status["host"] == socket.gethostname() and status["pid"] != os.getpid()


def test_another_plan_into_a_finished_run_is_refused_before_the_model_loads(workspace, lora_run):
    out = _copy(lora_run, workspace, "owned-other-plan")
    before = _files(out)
    run = workspace.axolotl(
        "train", workspace.write(workspace.config("owned-other-plan", **OTHER), "owned-other-plan")
    )
    assert run.returncode != 0
    assert f"adapter: midblock: output_dir: {out} holds a finished midblock run" in run.output, run.output[-3000:]
    assert f"trained on {PLAN}; this run's plan is {OTHER_PLAN}" in run.output
    assert "set midblock_overwrite: true" in run.output
    assert "Loading weights" not in run.output  # refused before the model was loaded
    assert _files(out) == before


def test_midblock_overwrite_replaces_the_previous_run(workspace, lora_run):
    out = _copy(lora_run, workspace, "owned-overwrite")
    workspace.train("owned-overwrite", midblock_overwrite=True, **OTHER).check()
    assert not list(out.glob("checkpoint-*"))  # lora_run's checkpoint-1 and -2 were removed
    assert json.loads((out / "midblock" / "plan.json").read_text())["layers"] == [2, 3]
    assert json.loads((out / "adapter_config.json").read_text())["layers_to_transform"] == [2, 3]
    status = _status(out)
    assert status["status"] == "complete" and status["plan"] == OTHER_PLAN
    assert {"checkpoint-1", "checkpoint-2", "adapter_model.safetensors"} <= set(status["replaced"]["files"])


def test_a_concurrent_run_fails_at_once_naming_the_other(workspace):
    out = workspace.root / "owned-busy"
    with hold_run_directory(out) as holder:
        run = workspace.train("owned-busy")
    assert run.returncode != 0
    assert f"is in use: another midblock run (pid {holder.pid} on {socket.gethostname()})" in run.output, run.output[
        -3000:
    ]
    assert "Loading weights" not in run.output


def test_an_exception_in_training_records_incomplete_with_the_error(workspace):
    run = workspace.train("owned-fails", plugins=[PLUGIN, "tests.axolotl.failing_plugin.FailingPlugin"])
    assert run.returncode != 0 and "injected at step 1" in run.output
    status = _status(run.output_dir)
    assert status["status"] == "incomplete" and status["error"] == "StepFailure: injected at step 1", status
