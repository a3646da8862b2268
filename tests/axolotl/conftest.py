"""Axolotl integration tests: run only where Axolotl is installed (``.venv-axolotl`` with
Axolotl 0.19 on Python 3.11, ``.venv-axolotl021`` with Axolotl 0.21 on Python 3.12).

Axolotl pins its own transformers / trl / peft, so these tests run in their own virtual
environments (``.ci/axolotl-setup.sh``; ``AXOLOTL_VERSION=0.21.0`` for the second); in the main
environment the whole directory is skipped with the reason below. Every training run goes
through the real ``python -m axolotl.cli.<command>`` in a subprocess. Version-specific tests
check ``helpers.axolotl_version()``.

``-m axolotl_smoke`` selects a smoke subset (registration, one LoRA run, merge, the lifecycle
commands): CI runs the whole directory on the newest Axolotl and the subset on the older one.
"""

from __future__ import annotations

import importlib.util
import os

import pytest


HAVE_AXOLOTL = importlib.util.find_spec("axolotl") is not None
SKIP_REASON = (
    "Axolotl is not installed in this environment; these tests run in .venv-axolotl (Axolotl 0.19, "
    "create it with: bash .ci/axolotl-setup.sh) or .venv-axolotl021 (Axolotl 0.21, Python 3.12: "
    "AXOLOTL_VERSION=0.21.0 bash .ci/axolotl-setup.sh); run: .venv-axolotl021/bin/python -m pytest tests/axolotl"
)

#: The smoke subset (``-m axolotl_smoke``): the plugin registers and loads, trains in LoRA mode, and
#: Axolotl's merge / evaluate / inference / sample packing work with it.
SMOKE_FILES = {"test_entry_point.py", "test_lora.py", "test_lifecycle.py"}


def pytest_configure(config):
    config.addinivalue_line("markers", "axolotl_smoke: the Axolotl smoke subset (run on the older Axolotl in CI)")


# Nothing may reach a hub, and Axolotl's telemetry must not wait for the network.
for _k, _v in {
    "AXOLOTL_DO_NOT_TRACK": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "WANDB_DISABLED": "true",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_k, _v)


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(os.path.abspath(__file__))
    for item in items:
        if str(item.path).startswith(here + os.sep):
            item.add_marker(pytest.mark.axolotl)
            if item.path.name in SMOKE_FILES:
                item.add_marker(pytest.mark.axolotl_smoke)
            if not HAVE_AXOLOTL:
                item.add_marker(pytest.mark.skip(reason=SKIP_REASON))


@pytest.fixture(scope="session")
def workspace(tmp_path_factory):
    """A tiny 5-layer Llama (hidden 64) and 16 real GSM8K rows as alpaca JSONL."""
    if not HAVE_AXOLOTL:
        pytest.skip(SKIP_REASON)
    from tests.axolotl.helpers import Workspace

    return Workspace.create(tmp_path_factory.mktemp("axolotl"))


# --------------------------------------------------------------------------- shared runs
# Each training run costs ~20 s on 2 cores, so runs are session-scoped and several test
# modules assert on the same run.


def _recorded_run(workspace, name, plugin=None, **overrides):
    """A training run with the hook recorder (tests/axolotl/hook_recorder.py) listed after our
    plugin (``plugin``: the name under ``plugins:``, default the full path)."""
    import json

    from tests.axolotl.helpers import PLUGIN, RECORDER

    log = workspace.root / f"{name}-hooks.jsonl"
    plugins = [plugin or PLUGIN, RECORDER]
    run = workspace.train(name, env={"MIDBLOCK_HOOK_LOG": str(log)}, plugins=plugins, **overrides).check()
    run.hooks = [json.loads(line) for line in log.read_text().splitlines()]
    return run


@pytest.fixture(scope="session")
def lora_run(workspace):
    """LoRA mode, no gradient checkpointing, a checkpoint every step."""
    return _recorded_run(workspace, "lora", save_strategy="steps", save_steps=1)


@pytest.fixture(scope="session")
def lora_gc_run(workspace):
    """LoRA mode with gradient checkpointing (the plugin's non-reentrant default); the plugin is
    listed by its short path, ``midblock_plugin.axolotl.MidBlockPlugin`` (test_entry_point.py)."""
    from tests.axolotl.helpers import SHORT_PLUGIN

    return _recorded_run(workspace, "lora-gc", plugin=SHORT_PLUGIN, gradient_checkpointing=True)


@pytest.fixture(scope="session")
def full_run(workspace):
    """Full mode, no gradient checkpointing, a checkpoint every step; the LoRA keys of the
    user's config are left in (they are ignored, with a warning)."""
    return _recorded_run(workspace, "full", midblock_mode="full", save_strategy="steps", save_steps=1)


@pytest.fixture(scope="session")
def full_gc_run(workspace):
    """Full mode with gradient checkpointing."""
    return _recorded_run(
        workspace,
        "full-gc",
        midblock_mode="full",
        gradient_checkpointing=True,
        lora_r=None,
        lora_alpha=None,
        lora_target_modules=None,
    )
