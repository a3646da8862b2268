"""Resuming keeps the window and the frozen set; a changed window or rank is refused before the
model is loaded, against the plan inside the checkpoint (``<checkpoint>/midblock/plan.json``), not the
run directory's ``midblock/plan.json`` that a later run may have replaced."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from tests.axolotl.helpers import MATCHED_RANK, WINDOW, changed_tensors, layer_of, load_state


pytestmark = pytest.mark.axolotl


def test_resume_full_mode_keeps_window_and_frozen_set(workspace, full_run):
    out = workspace.root / "full-resumed"
    shutil.copytree(full_run.output_dir, out)
    shutil.rmtree(out / "checkpoint-2")
    cfg = workspace.config(
        "full-resumed",
        midblock_mode="full",
        save_strategy="steps",
        save_steps=1,
        max_steps=3,
        resume_from_checkpoint=str(out / "checkpoint-1"),
    )
    run = workspace.axolotl("train", workspace.write(cfg, "full-resumed")).check()
    assert "resuming from" in run.output and "with the same window (layers 1-3, mode full)" in run.output
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert len(re.findall(r"\{'loss': ", run.output)) == 2  # only steps 2 and 3 ran in this process
    base = load_state(workspace.model_dir / "model.safetensors")
    changed = changed_tensors(base, load_state(out / "model.safetensors"))
    assert {layer_of(k) for k in changed} == set(WINDOW)
    # the resumed steps moved the window further than the checkpoint they started from
    assert changed_tensors(
        load_state(out / "checkpoint-1" / "model.safetensors"), load_state(out / "model.safetensors")
    )


def test_resume_with_a_different_window_is_refused_before_loading(workspace, lora_run):
    out = workspace.root / "lora-changed"
    shutil.copytree(lora_run.output_dir, out)
    cfg = workspace.config(
        "lora-changed", midblock_segments=None, midblock_layers="2-3", resume_from_checkpoint=str(out / "checkpoint-1")
    )
    run = workspace.axolotl("train", workspace.write(cfg, "lora-changed"))
    assert run.returncode != 0
    assert "cannot resume from" in run.output and "checkpoint-1" in run.output
    assert "layers: checkpoint [1, 2, 3] vs now [2, 3]" in run.output
    assert "Restore the midblock_* / lora_* settings" in run.output
    assert "Loading weights" not in run.output  # refused before the model was loaded


def test_every_checkpoint_carries_its_plan(lora_run, full_run):
    for run, mode in ((lora_run, "lora"), (full_run, "full")):
        checkpoints = sorted(run.output_dir.glob("checkpoint-*"))
        assert [p.name for p in checkpoints] == ["checkpoint-1", "checkpoint-2"], run.output_dir
        for checkpoint in checkpoints:
            plan = json.loads((checkpoint / "midblock" / "plan.json").read_text())
            assert plan["layers"] == WINDOW and plan["mode"] == mode, checkpoint
            assert plan["layer_rank"] == (MATCHED_RANK if mode == "lora" else 0)


def _plan(workspace, **overrides):
    """The plan a run of ``workspace.config(**overrides)`` trains (its plan.json: ``.to_json_dict()``)."""
    from midblock_plugin.integrations.axolotl.keys import midblock_config_from_cfg
    from midblock_plugin.plan import build_plan

    return build_plan(str(workspace.model_dir), midblock_config_from_cfg(workspace.config("x", **overrides)))


def test_resume_checks_the_checkpoints_own_plan_not_the_run_directorys(workspace, full_run):
    """Window A (layers 1-3) trained into out/; a later run with window B (layers 2-3) replaced
    out/midblock/plan.json. Resuming checkpoint-1 with window B is still refused: that checkpoint
    was trained with A."""
    out = workspace.root / "full-overwritten"
    shutil.copytree(full_run.output_dir, out)
    window_b = {"midblock_mode": "full", "midblock_segments": None, "midblock_layers": "2-3"}
    (out / "midblock" / "plan.json").write_text(json.dumps(_plan(workspace, **window_b).to_json_dict()))
    cfg = workspace.config("full-overwritten", resume_from_checkpoint=str(out / "checkpoint-1"), **window_b)
    run = workspace.axolotl("train", workspace.write(cfg, "full-overwritten"))
    assert run.returncode != 0
    assert "adapter: midblock: cannot resume from" in run.output
    assert "layers: checkpoint [1, 2, 3] vs now [2, 3]" in run.output
    assert f"recorded in {out / 'checkpoint-1' / 'midblock' / 'plan.json'}" in run.output
    assert f"{out / 'midblock' / 'plan.json'}" not in run.output  # the run directory's plan is not consulted
    assert "midblock_segments: '01110' (this config: not set)" in run.output  # the setting to restore
    assert "Loading weights" not in run.output


def test_resume_with_a_different_rank_is_refused_before_loading(workspace, lora_run):
    """lora_r 4 -> 8 changes every window layer's rank (6 -> 13): refused with the rank named, before
    the Trainer could fail on the checkpoint's tensor shapes."""
    out = workspace.root / "lora-rank"
    shutil.copytree(lora_run.output_dir, out)
    cfg = workspace.config("lora-rank", lora_r=8, auto_resume_from_checkpoints=True)
    run = workspace.axolotl("train", workspace.write(cfg, "lora-rank"))
    assert run.returncode != 0
    assert f"adapter: midblock: cannot resume from {out / 'checkpoint-2'}" in run.output  # the last checkpoint
    assert f"r: checkpoint adapter {MATCHED_RANK} vs the plan's 13" in run.output
    assert f"layer_rank: checkpoint {MATCHED_RANK} vs now 13" in run.output
    assert "That run was trained with lora_r: 4 (this config: 8)" in run.output
    assert "Restore the midblock_* / lora_* settings" in run.output
    assert "Loading weights" not in run.output
    assert "size mismatch" not in run.output and "Error(s) in loading state_dict" not in run.output


# --------------------------------------------------------------------------- the check itself (no training)


def _checkpoint(root, name="checkpoint-1", **plan_json):
    from midblock_plugin.training.resume import write_checkpoint_plan

    path = root / name
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text("{}")  # written last by the Trainer: a whole checkpoint
    if plan_json:
        write_checkpoint_plan(path, plan_json)
    return path


def test_auto_resume_checks_the_highest_numbered_checkpoint(workspace, tmp_path):
    from axolotl.utils.dict import DictDefault

    from midblock_plugin.integrations.axolotl.plugin import check_before_training
    from midblock_plugin.training.resume import PlanMismatch

    full = {"midblock_mode": "full"}
    _checkpoint(tmp_path, "checkpoint-9", **_plan(workspace, **full).to_json_dict())
    _checkpoint(tmp_path, "checkpoint-10", **_plan(workspace, **full, midblock_segments="01000").to_json_dict())
    cfg = DictDefault(workspace.config("x", **full, output_dir=str(tmp_path), auto_resume_from_checkpoints=True))
    with pytest.raises(PlanMismatch, match=r"cannot resume from .*checkpoint-10: .*layers: checkpoint \[1\] vs now"):
        check_before_training(cfg, _plan(workspace, **full))


def test_a_checkpoint_without_its_plan_is_not_compared_with_the_run_directory(workspace, tmp_path, monkeypatch):
    """Checkpoints saved before the plan went into each checkpoint: the run directory's plan.json
    may describe a later run, so it is not used; a warning says that nothing records the window."""
    from axolotl.utils.dict import DictDefault

    from midblock_plugin import io
    from midblock_plugin.integrations.axolotl import plugin

    warnings: list[str] = []
    monkeypatch.setattr(plugin.LOG, "warning", warnings.append)
    full = {"midblock_mode": "full"}
    checkpoint = _checkpoint(tmp_path)
    io.write_json(
        io.artifact(tmp_path, io.PLAN_JSON), _plan(workspace, **full, midblock_segments="01000").to_json_dict()
    )
    cfg = DictDefault(workspace.config("x", **full, resume_from_checkpoint=str(checkpoint)))
    plugin.check_before_training(cfg, _plan(workspace, **full))  # window 1-3 vs the run directory's [1]: not refused
    (warning,) = warnings
    assert f"{checkpoint} carries no midblock/plan.json" in warning and "nothing records its window" in warning


def test_lora_model_dir_for_another_window_is_refused(workspace, lora_run):
    from axolotl.utils.dict import DictDefault

    from midblock_plugin.integrations.axolotl.plugin import check_before_training
    from midblock_plugin.training.resume import PlanMismatch

    cfg = DictDefault(
        workspace.config("x", midblock_segments=None, midblock_layers="2-3", lora_model_dir=str(lora_run.output_dir))
    )
    with pytest.raises(
        PlanMismatch,
        match=r"^adapter: midblock: lora_model_dir .* holds an adapter for a different "
        r"window or rank .*layers_to_transform.*remove lora_model_dir",
    ):
        check_before_training(cfg, _plan(workspace, midblock_segments=None, midblock_layers="2-3"))
    check_before_training(
        DictDefault(workspace.config("x", lora_model_dir=str(lora_run.output_dir))), _plan(workspace)
    )


def test_a_checkpoint_cut_off_while_saving_is_refused_naming_the_last_whole_one(workspace, tmp_path):
    """auto_resume_from_checkpoints picks the highest checkpoint; one without trainer_state.json was
    cut off while saving: refused before the model loads, naming the last whole checkpoint."""
    from axolotl.utils.dict import DictDefault

    from midblock_plugin.integrations.axolotl.plugin import check_before_training
    from midblock_plugin.training.resume import IncompleteCheckpoint

    full = {"midblock_mode": "full"}
    whole = _checkpoint(tmp_path, "checkpoint-9", **_plan(workspace, **full).to_json_dict())
    cut = _checkpoint(tmp_path, "checkpoint-10", **_plan(workspace, **full).to_json_dict())
    (cut / "trainer_state.json").unlink()
    cfg = DictDefault(workspace.config("x", **full, output_dir=str(tmp_path), auto_resume_from_checkpoints=True))
    with pytest.raises(IncompleteCheckpoint) as info:
        check_before_training(cfg, _plan(workspace, **full))
    assert f"cannot resume from {cut}: it is incomplete (no trainer_state.json" in str(info.value)
    assert f"remove it to resume from {whole} (the last whole checkpoint)" in str(info.value)
