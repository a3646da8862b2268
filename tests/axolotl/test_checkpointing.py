"""The gradient-checkpointing mode the plugin chooses at config load (``register``).

Non-reentrant by default; reentrant under DeepSpeed ZeRO-3 on a DeepSpeed older than 0.19.3,
where PEFT / frozen parameters + ZeRO-3 + non-reentrant checkpointing fail on the first backward
("CheckpointError: Recomputed values ... different metadata"); an explicit ``use_reentrant: false``
in that combination is refused when the config is loaded, before any model, data or process group.
No training here: the 2-process ZeRO-3 runs with checkpointing are in test_zero3.py.
"""

from __future__ import annotations

import json
import logging

import pytest

from midblock_plugin import compat
from tests.axolotl.helpers import axolotl_load_error, axolotl_validate


pytestmark = pytest.mark.axolotl

OLD, NEW = (0, 18, 9), (0, 19, 3)  # Axolotl 0.19's deepspeed extra (<0.19); the first fixed release
REFUSAL = "needs deepspeed>=0.19.3"
LOGGER = "axolotl.integrations.midblock"


def _fake_deepspeed(monkeypatch, version):
    monkeypatch.setattr(compat, "deepspeed_version", lambda: version)


def _validated(workspace, name, **overrides):
    """Axolotl's validation of the workspace config (plugins registered: ``register`` runs)."""
    return axolotl_validate(workspace.write(workspace.config(name, gradient_checkpointing=True, **overrides), name))


@pytest.mark.parametrize(
    ("deepspeed", "version", "requested", "expected"),
    [
        (None, OLD, None, False),  # no DeepSpeed: non-reentrant, the default
        ("midblock:zero3", OLD, None, True),  # ZeRO-3 on an old DeepSpeed: reentrant
        ("midblock:zero3_offload", OLD, None, True),
        ({"zero_optimization": {"stage": 3}}, OLD, None, True),  # a mapping, as Axolotl accepts
        ("midblock:zero3", NEW, None, False),  # fixed DeepSpeed: the default again
        ("midblock:zero3", None, None, True),  # DeepSpeed not importable: the safe choice
        ("stage2.json", OLD, None, False),  # ZeRO-2 never partitions parameters
        ("midblock:zero3", OLD, True, True),  # explicit settings are kept
        ("midblock:zero3", NEW, False, False),
        (None, OLD, False, False),
        (None, OLD, True, True),
    ],
)
def test_checkpointing_mode_chosen_at_config_load(
    workspace, monkeypatch, caplog, deepspeed, version, requested, expected
):
    _fake_deepspeed(monkeypatch, version)
    if deepspeed == "stage2.json":
        deepspeed = str(workspace.root / "stage2.json")
        with open(deepspeed, "w") as fh:
            json.dump({"zero_optimization": {"stage": 2}, "train_batch_size": "auto"}, fh)
    overrides = {}
    if deepspeed is not None:
        overrides["deepspeed"] = deepspeed
    if requested is not None:
        overrides["gradient_checkpointing_kwargs"] = {"use_reentrant": requested}
    with caplog.at_level(logging.INFO, logger=LOGGER):
        cfg = _validated(workspace, "gc-mode", **overrides)
    assert cfg.gradient_checkpointing_kwargs == {"use_reentrant": expected}
    logged = [r.getMessage() for r in caplog.records if "midblock: gradient checkpointing" in r.getMessage()]
    assert len(logged) == 1, logged
    assert logged[0].startswith(f"midblock: gradient checkpointing use_reentrant: {str(expected).lower()}; ")
    if requested is not None:
        assert logged[0].endswith("as configured")
    elif expected:  # the reason names the versions
        shown = "not installed" if version is None else ".".join(map(str, version))
        assert f"; DeepSpeed ZeRO-3, reentrant: DeepSpeed {shown} < 0.19.3 cannot recompute" in logged[0]
    else:
        assert logged[0].endswith(("; non-reentrant (the default)", "; DeepSpeed ZeRO-3, non-reentrant (the default)"))


def test_other_checkpointing_kwargs_are_kept(workspace, monkeypatch):
    _fake_deepspeed(monkeypatch, OLD)
    cfg = _validated(
        workspace, "gc-kwargs", deepspeed="midblock:zero3", gradient_checkpointing_kwargs={"preserve_rng_state": False}
    )
    assert cfg.gradient_checkpointing_kwargs == {"preserve_rng_state": False, "use_reentrant": True}


def test_without_checkpointing_nothing_is_set_or_refused(workspace, monkeypatch):
    _fake_deepspeed(monkeypatch, OLD)
    cfg = axolotl_validate(
        workspace.write(
            workspace.config(
                "no-gc", deepspeed="midblock:zero3", gradient_checkpointing_kwargs={"use_reentrant": False}
            ),
            "no-gc",
        )
    )
    assert not cfg.gradient_checkpointing and cfg.gradient_checkpointing_kwargs == {"use_reentrant": False}
    cfg = axolotl_validate(workspace.write(workspace.config("no-gc2", deepspeed="midblock:zero3"), "no-gc2"))
    assert cfg.gradient_checkpointing_kwargs is None


def test_explicit_non_reentrant_with_zero3_on_old_deepspeed_is_refused_at_config_load(workspace, monkeypatch):
    """Through ``load_cfg``, the loader of ``axolotl train``: before logging, outputs or weights."""
    _fake_deepspeed(monkeypatch, OLD)
    cfg = workspace.config(
        "gc-refused",
        deepspeed="midblock:zero3",
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
    error = axolotl_load_error(workspace.write(cfg, "gc-refused"))
    assert "adapter: midblock: gradient_checkpointing_kwargs: use_reentrant: false with DeepSpeed ZeRO-3" in error
    assert f"{REFUSAL} (installed: 0.18.9)" in error
    assert "CheckpointError: Recomputed values" in error and "set use_reentrant: true, or leave it unset" in error
    assert not (workspace.root / "gc-refused").exists()


def test_installed_deepspeed_refusal_in_axolotl_train(workspace):
    """The real DeepSpeed of this environment, through the ``axolotl train`` CLI: refused on a
    DeepSpeed < 0.19.3 (Axolotl 0.19's deepspeed extra installs 0.18.x), before any weights."""
    pytest.importorskip("deepspeed")
    if compat.zero3_nonreentrant_ok():
        pytest.skip(f"DeepSpeed {compat.deepspeed_version()} >= 0.19.3 runs non-reentrant ZeRO-3 checkpointing")
    cfg = workspace.config(
        "gc-refused-cli",
        deepspeed="midblock:zero3",
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
    run = workspace.axolotl("train", workspace.write(cfg, "gc-refused-cli"))
    assert run.returncode != 0
    version = ".".join(map(str, compat.deepspeed_version()))
    assert f"{REFUSAL} (installed: {version})" in run.output
    assert "Loading weights" not in run.output and not (workspace.root / "gc-refused-cli" / "midblock").exists()
