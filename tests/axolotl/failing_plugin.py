"""A test-only Axolotl plugin whose training callback raises at the end of the first step: a run
that fails during ``trainer.train`` (tests/axolotl/test_output_dir.py)."""

from __future__ import annotations

from axolotl.integrations.base import BasePlugin
from transformers import TrainerCallback


class StepFailure(RuntimeError):
    pass


class _RaiseAtFirstStep(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        raise StepFailure("injected at step 1")


class FailingPlugin(BasePlugin):
    def add_callbacks_post_trainer(self, cfg, trainer):
        return [_RaiseAtFirstStep()]
