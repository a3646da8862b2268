"""Resuming keeps the window and the frozen set; a changed window is refused."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from tests.axolotl.helpers import WINDOW, changed_tensors, layer_of, load_state


pytestmark = pytest.mark.axolotl


def test_resume_full_mode_keeps_window_and_frozen_set(workspace, full_run):
    out = workspace.root / "full-resumed"
    shutil.copytree(full_run.output_dir, out)
    shutil.rmtree(out / "checkpoint-2")
    cfg = workspace.config("full-resumed", midblock_mode="full", save_strategy="steps", save_steps=1, max_steps=3,
                           resume_from_checkpoint=str(out / "checkpoint-1"))
    run = workspace.axolotl("train", workspace.write(cfg, "full-resumed")).check()
    assert "resuming from" in run.output and "with the same window (layers 1-3, mode full)" in run.output
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert len(re.findall(r"\{'loss': ", run.output)) == 2  # only steps 2 and 3 ran in this process
    base = load_state(workspace.model_dir / "model.safetensors")
    changed = changed_tensors(base, load_state(out / "model.safetensors"))
    assert {layer_of(k) for k in changed} == set(WINDOW)
    # the resumed steps moved the window further than the checkpoint they started from
    assert changed_tensors(load_state(out / "checkpoint-1" / "model.safetensors"), load_state(out / "model.safetensors"))


def test_resume_with_a_different_window_is_refused_before_loading(workspace, lora_run):
    out = workspace.root / "lora-changed"
    shutil.copytree(lora_run.output_dir, out)
    cfg = workspace.config("lora-changed", midblock_segments=None, midblock_layers="2-3",
                           resume_from_checkpoint=str(out / "checkpoint-1"))
    run = workspace.axolotl("train", workspace.write(cfg, "lora-changed"))
    assert run.returncode != 0
    assert "cannot resume from" in run.output and "checkpoint-1" in run.output
    assert "layers: checkpoint [1, 2, 3] vs now [2, 3]" in run.output
    assert "Restore the midblock_* / lora_* settings" in run.output
    assert "Loading weights" not in run.output  # refused before the model was loaded
