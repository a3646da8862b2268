"""``MidBlockCallback``: the training hooks, as a ``transformers.TrainerCallback``.

One callback serves every Trainer-based framework (TRL's ``SFTTrainer``, Axolotl's
trainers, the plain HF ``Trainer``):

* ``on_init_end`` (before the optimizer and before ``deepspeed.initialize``): resolve the
  plan against the model, freeze in full mode, check that only the window trains, check the
  output directory (another run holding it, a previous run with another plan:
  :mod:`midblock_plugin.training.output_dir`), log a one-screen summary and write
  ``<output_dir>/midblock/plan.json``;
* the start of ``trainer.train()`` (:meth:`MidBlockCallback.bind` wraps it; else
  ``on_train_begin``): a checkpoint to resume from is compared with the plan before it
  loads, and the run takes the output directory (lock, ``midblock-run.json`` ``running``);
* ``on_train_begin`` (after the Trainer enabled gradient checkpointing): backward
  truncation and the drift monitor's snapshot;
* logging steps: per-layer relative weight change and gradient norm into the logs;
* ``on_train_end``: ``<output_dir>/midblock/drift.json`` (and ``drift.png``), then
  ``midblock-run.json`` ``complete`` (``incomplete`` with the error if ``train()`` raises).

Build the plan once and hand it over (``MidBlockCallback(plan=plan)``, with
``peft_config=plan.lora_config()``); given only a config, the callback builds the plan
from the model at ``on_init_end``. Call :meth:`MidBlockCallback.bind` with the trainer so
the drift metrics reach W&B / TensorBoard in the step they are logged.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
from typing import Any

from transformers import TrainerCallback

from midblock_plugin import io, storage
from midblock_plugin.adapters import apply_full_mode, verify_trainable
from midblock_plugin.compat import checkpointing_on, is_reentrant, move_callback_to_front
from midblock_plugin.config import MidBlockConfig
from midblock_plugin.plan import MidBlockPlan, build_plan
from midblock_plugin.training.drift import DriftMonitor
from midblock_plugin.training.model_card import write_model_card
from midblock_plugin.training.output_dir import CALLBACK_OVERWRITE, TrainingDirectory, overwrite_switch
from midblock_plugin.training.progress import hide_drift_on_console
from midblock_plugin.training.resume import (
    check_model_matches_plan,
    check_resume,
    last_checkpoint,
    write_checkpoint_plan,
)
from midblock_plugin.training.truncation import BackwardTruncation


logger = logging.getLogger("midblock_plugin")

#: What to do about a checkpoint trained with another window (TRL / HF Trainer).
RESUME_FIX = (
    "Resume with the MidBlockConfig that checkpoint was trained with (its midblock/plan.json holds it), or "
    "train into a fresh output_dir without resume_from_checkpoint."
)


class MidBlockCallback(TrainerCallback):
    """Mid-Block Efficient Tuning hooks for any HF ``Trainer``.

    ``overwrite=True``: a previous midblock run in ``output_dir`` trained with another plan is
    replaced (its files removed when training starts) instead of refused. ``overwrite_hint``:
    how that refusal names the switch (the integrations set their own spelling).

    >>> from midblock_plugin import MidBlockConfig
    >>> cb = MidBlockCallback(MidBlockConfig(segments="01110", rank=16))
    """

    def __init__(
        self,
        config: MidBlockConfig | None = None,
        plan: MidBlockPlan | None = None,
        verbose: bool = True,
        overwrite: bool = False,
        overwrite_hint: str = CALLBACK_OVERWRITE,
    ):
        if config is not None and plan is not None and config != plan.config:
            raise ValueError(
                "MidBlockCallback got a config and a plan built from a different config; pass only "
                "plan=build_plan(model, config) (or only the config)."
            )
        self.config = plan.config if plan is not None else (config or MidBlockConfig())
        self.plan = plan
        self.verbose = verbose
        self.truncation: BackwardTruncation | None = None
        self.monitor: DriftMonitor | None = None
        self.trainable_params: int | None = None
        self._pending_grads: dict[int, float] | None = None
        self._bound = False
        self._warned_reporters = False
        self.overwrite = overwrite_switch(overwrite, overwrite_hint)
        self.overwrite_hint = overwrite_hint
        #: the guard of output_dir (main process only), from on_init_end
        self.directory: TrainingDirectory | None = None
        self._plan_json_pending: dict | None = None
        #: bound: "complete" waits for the save_model after training (see _guard_save)
        self._complete_after_save = False
        #: bytes of one checkpoint (checked before each save is due), when the trainer saves checkpoints
        self._checkpoint_bytes: int | None = None

    def bind(self, trainer: Any) -> "MidBlockCallback":
        """Run first among ``trainer``'s callbacks, so the drift metrics this callback adds
        to the logs reach the reporters (W&B, TensorBoard), which run before user callbacks.
        Also checks a checkpoint given to ``trainer.train(resume_from_checkpoint=...)`` before it
        loads (:meth:`_guard_train`). Returns ``self``. The integrations (Axolotl, ``midblock
        run``, the TRL example) call it."""
        self._bound = move_callback_to_front(trainer, self)
        if not self._bound:
            raise ValueError(
                "MidBlockCallback.bind: this callback is not among the trainer's callbacks; "
                "pass it in callbacks=[...] (or trainer.add_callback) first."
            )
        hide_drift_on_console(trainer)  # the per-layer entries stay in the logs, off the console line
        self._guard_train(trainer)
        self._guard_save(trainer)
        return self

    def _guard_train(self, trainer: Any) -> None:
        """Wrap ``trainer.train`` (this trainer only) so that, before anything loads, a checkpoint to
        resume from is compared with the plan and the run takes its output directory; an exception
        out of ``train()`` records the run ``incomplete`` with that error."""
        original = trainer.train
        if getattr(original, "__midblock_callback__", None) is self:
            return
        try:
            signature = inspect.signature(original)
        except (TypeError, ValueError):  # pragma: no cover
            signature = None

        @functools.wraps(original)
        def train(*args, **kwargs):
            resume = kwargs.get("resume_from_checkpoint")
            if signature is not None:
                try:
                    resume = signature.bind_partial(*args, **kwargs).arguments.get("resume_from_checkpoint")
                except TypeError:
                    pass  # train() itself reports its wrong arguments
            self._before_train(trainer, resume)
            try:
                return original(*args, **kwargs)
            except BaseException as exc:
                if self.directory is not None and self.directory.claimed:
                    self.directory.end(exc)
                raise

        train.__midblock_callback__ = self
        # Monkeypatch (this instance only): Trainer.train loads the checkpoint (_load_from_checkpoint)
        # before the first callback event of training (on_train_begin), so no hook runs early enough.
        trainer.train = train

    def _guard_save(self, trainer: Any) -> None:
        """Wrap ``trainer.save_model`` (this trainer only) so that the run is recorded ``complete``
        once the model saved after training is written, not when training ends: a run killed
        while saving its final model stays ``running`` with a dead pid, read as incomplete. A save
        that raises records ``incomplete`` with its error. With no save after training, the run is
        recorded ``complete`` at interpreter exit (:mod:`~midblock_plugin.training.output_dir`)."""
        original = trainer.save_model
        if getattr(original, "__midblock_callback__", None) is self:
            return

        @functools.wraps(original)
        def save_model(*args, **kwargs):
            after_training = self.awaiting_save
            try:
                result = original(*args, **kwargs)
            except BaseException as exc:
                if after_training:
                    self.finish(exc)
                raise
            if after_training:
                self.finish()
            return result

        save_model.__midblock_callback__ = self
        # Monkeypatch (this instance only): the Trainer has no callback event after its final save_model.
        trainer.save_model = save_model
        self._complete_after_save = True

    @property
    def awaiting_save(self) -> bool:
        """This process owns ``output_dir`` and training ended normally: the run awaits its final save."""
        return self.directory is not None and self.directory.claimed and self.directory.trained

    def finish(self, error: BaseException | str | None = None) -> None:
        """Record the run ``complete`` (or ``incomplete`` with ``error``) now and release ``output_dir``;
        for integrations whose final save does not go through ``trainer.save_model``."""
        if self.directory is not None and self.directory.claimed:
            self.directory.end(error)

    def _before_train(self, trainer: Any, resume: Any) -> None:
        """The resume check and the claim of the output directory, at the start of ``trainer.train``."""
        args = trainer.args
        checkpoint = None
        if resume is not None and resume is not False:
            if resume is True:
                found = last_checkpoint(args.output_dir)
                if found is None:
                    return  # the Trainer says "No valid checkpoint found" itself, before loading anything
                checkpoint = str(found)
            else:
                checkpoint = str(resume)
            if self.plan is not None:
                check_resume(checkpoint, self.plan, fix=RESUME_FIX)
        self.claim_output_dir(args, checkpoint)

    def claim_output_dir(self, args: Any, checkpoint: Any = None) -> None:
        """Take ``args.output_dir`` for this run (lock, ``running``; ``overwrite`` removes the previous
        run's files) on the main process; a no-op once taken, and on other processes. Called when
        training starts; the Axolotl plugin calls it when the trainer is built."""
        if self.directory is None or self.directory.claimed:
            return
        self.directory.claim(checkpoint)
        if self._plan_json_pending is not None:
            self._write_json(args, io.PLAN_JSON, self._plan_json_pending)
            self._plan_json_pending = None

    # ------------------------------------------------------------------ setup
    def on_init_end(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise RuntimeError("MidBlockCallback needs the model; the Trainer passes it to callbacks.")
        if self.plan is None:
            self.plan = build_plan(model, self.config)
        if self.plan.mode == "full":
            check_model_matches_plan(model, self.plan)  # a LoRA adapter in full mode would lose the training at save
            self.trainable_params = apply_full_mode(model, self.plan)
        else:
            self.trainable_params = verify_trainable(model, self.plan)
            check_model_matches_plan(model, self.plan)  # the peft_config: same layers, rank, alpha, targets
        checkpoint = self._resume_checkpoint(args)
        if checkpoint is not None:
            check_resume(checkpoint, self.plan, fix=RESUME_FIX)
        if state.is_world_process_zero:
            if getattr(args, "output_dir", None) and not (self.directory and self.directory.claimed):
                # transformers 4's own switch, where the installed version still has it
                overwrite = self.overwrite or getattr(args, "overwrite_output_dir", False) is True
                directory = TrainingDirectory(
                    args.output_dir, self.plan, overwrite=overwrite, overwrite_hint=self.overwrite_hint
                )
                directory.check(checkpoint)  # another run holding it, a previous run with another plan
                self.directory = directory
            if self.verbose:
                partitioned = any(hasattr(p, "ds_id") for p in model.parameters())
                extra = "\n  deepspeed      ZeRO-3, parameters partitioned" if partitioned else ""
                print(self.plan.summary() + extra, file=sys.stderr, flush=True)
            plan_json = {**self.plan.to_json_dict(), "trainable_params_on_model": self.trainable_params}
            self._plan_json_pending = None
            if self.directory is not None and self.directory.pending_removal:
                self._plan_json_pending = plan_json  # written once the previous run's files are removed
            else:
                self._write_json(args, io.PLAN_JSON, plan_json)
        return control

    @staticmethod
    def _resume_checkpoint(args) -> str | None:
        """The checkpoint named by ``TrainingArguments.resume_from_checkpoint`` (a path, or
        ``True`` / ``"true"`` for the last one in ``output_dir``), as scripts pass it on to
        ``trainer.train``."""
        value = getattr(args, "resume_from_checkpoint", None)
        if value is None or value is False:
            return None
        if value is True or str(value).lower() == "true":
            found = last_checkpoint(args.output_dir)
            return str(found) if found is not None else None
        return str(value)

    def _check_reporters(self, args) -> None:
        reporters = [r for r in (getattr(args, "report_to", None) or []) if r not in ("none", None)]
        if reporters and not self._bound and not self._warned_reporters and self.monitor is not None:
            self._warned_reporters = True
            logger.warning(
                "midblock: the drift metrics go to the trainer's log history and %s, but not to %s: those "
                "reporters run before user callbacks. Call callback.bind(trainer) after building the trainer.",
                io.DRIFT_JSON,
                ", ".join(map(str, reporters)),
            )

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        plan = self.plan
        if plan is None or model is None:
            return control
        # Re-check: nothing between init and now may have unfrozen layers outside the window.
        verify_trainable(model, plan)
        if state.global_step > 0:  # resumed (trainer.train(resume_from_checkpoint=...)): before any step
            checkpoint = io.artifact(args.output_dir, f"checkpoint-{state.global_step}")
            if checkpoint.is_dir():
                check_resume(checkpoint, plan, fix=RESUME_FIX)
            elif self._resume_checkpoint(args) is None:
                logger.warning(
                    "midblock: resumed at step %d from a checkpoint outside %s; its plan was not compared with this "
                    "run's. Set TrainingArguments(resume_from_checkpoint=PATH) so the callback checks it at init.",
                    state.global_step,
                    args.output_dir,
                )
        if self.directory is not None and not self.directory.claimed:  # not bound: train() was not wrapped
            resumed = io.artifact(args.output_dir, f"checkpoint-{state.global_step}") if state.global_step else None
            self.claim_output_dir(args, resumed if resumed is not None and resumed.is_dir() else None)
        if self.config.truncate_backward and checkpointing_on(args) and self.truncation is None:
            self.truncation = BackwardTruncation(plan.first_layer, reentrant=is_reentrant(args, model))
            if self.truncation.install(model):
                logger.info(
                    "midblock: backward truncated below layer %d (removed %d input-grad hooks, reentrant=%s)",
                    plan.first_layer,
                    self.truncation.removed_input_hooks,
                    self.truncation.reentrant,
                )
        if self.config.drift_monitor and self.monitor is None:
            self.monitor = DriftMonitor(model, plan.layers, plan.mode)
            self.monitor.snapshot()
        self._check_reporters(args)
        self._checkpoint_bytes = None
        saves = _strategy(args, "save_strategy") in ("steps", "epoch", "best") and getattr(args, "output_dir", None)
        if saves and state.is_local_process_zero:  # before the first step, not at the first save
            self._checkpoint_bytes = storage.checkpoint_bytes(model, save_only_model=bool(args.save_only_model))
            self._check_checkpoint_space(args, state.global_step + (state.save_steps or 1))
        return control

    def _check_checkpoint_space(self, args, step: int) -> None:
        storage.check_free_space(args.output_dir, self._checkpoint_bytes, f"checkpoint-{step}")

    def on_step_end(self, args, state, control, **kwargs):
        """Before a checkpoint is due: refuse it (NotEnoughSpace) rather than leave a partial one."""
        every = state.save_steps
        if self._checkpoint_bytes is not None and _strategy(args, "save_strategy") == "steps" and every:
            if state.global_step % int(every) == 0:
                self._check_checkpoint_space(args, state.global_step)
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if self._checkpoint_bytes is not None and _strategy(args, "save_strategy") == "epoch":
            self._check_checkpoint_space(args, state.global_step)
        return control

    # ------------------------------------------------------------------ drift
    def _will_log(self, args, state) -> bool:
        steps = state.logging_steps or getattr(args, "logging_steps", 0)
        return (
            _strategy(args, "logging_strategy", "steps") == "steps"
            and bool(steps)
            and (state.global_step + 1) % int(steps) == 0
        )

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.monitor is not None and self._will_log(args, state):
            self._pending_grads = self.monitor.grad_norms()
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.monitor is None or logs is None or "loss" not in logs:
            return control
        metrics = self.monitor.record(state.global_step, self._pending_grads)
        self._pending_grads = None
        logs.update(metrics)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(metrics)
        return control

    def on_save(self, args, state, control, **kwargs):
        """Each checkpoint carries its plan, so a resume is checked against what it was trained with."""
        if self.plan is not None and state.is_world_process_zero and getattr(args, "output_dir", None):
            checkpoint = io.artifact(args.output_dir, f"checkpoint-{state.global_step}")
            if checkpoint.is_dir():
                write_checkpoint_plan(
                    checkpoint, {**self.plan.to_json_dict(), "trainable_params_on_model": self.trainable_params}
                )
                if self.plan.mode == "lora" and (checkpoint / "adapter_config.json").is_file():
                    write_model_card(checkpoint, self.plan)
        return control

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.truncation is not None:
            self.truncation.remove()
        if self.monitor is not None:
            if not self.monitor.history or self.monitor.history[-1]["step"] != state.global_step:
                self.monitor.record(state.global_step)
            if state.is_world_process_zero:
                data = self.monitor.to_json_dict()
                data["num_layers"] = self.plan.num_layers if self.plan else None
                path = self._write_json(args, io.DRIFT_JSON, data)
                if path:
                    _plot_drift(data, str(io.artifact(args.output_dir, io.DRIFT_PNG)))
        if self.directory is not None and self.directory.claimed:  # training ended normally
            if self._complete_after_save:
                self.directory.trained = True  # complete once the final save_model returns (or at exit)
            else:
                self.directory.end()
        return control

    # ------------------------------------------------------------------ io
    def _write_json(self, args, name: str, data: dict) -> str | None:
        out = getattr(args, "output_dir", None)
        if not out:
            return None
        return str(io.write_json(io.artifact(out, name), data))


def _strategy(args, name: str, default: str = "no") -> str:
    """A strategy of the training arguments (``save_strategy``, ``logging_strategy``) as its name;
    transformers gives an enum, other arguments a string (absent: ``default``)."""
    value = getattr(args, name, default)
    return str(getattr(value, "value", value))


def _plot_drift(data: dict, path: str) -> None:
    """Final per-layer relative weight change over depth, shaded window (skipped without matplotlib)."""
    from midblock_plugin.figures import plot_drift

    try:
        plot_drift(data, path)
    except ImportError:  # matplotlib is optional
        return
