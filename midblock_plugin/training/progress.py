"""What training and measuring print: progress bars on stderr and one short line per logging step.

* :func:`bar`: a tqdm bar on stderr that redraws every 0.1 s on a terminal and at most every
  :data:`NON_TTY_INTERVAL` seconds into a file or pipe (a log keeps a line every few seconds, not
  a redraw per item); it is cleared when done, so only the stage's result line stays.
* :class:`ConsoleProgress`: the trainer's progress bar with one short line per logging step
  (``step 3/16  loss 2.0421  lr 5.00e-04  1.92 s/step``); with ``verbose`` also the per-layer
  drift entries (``midblock/weight_change/layer_NN`` ...). ``midblock run`` uses it in place of
  transformers' ``ProgressCallback``.
* :func:`hide_drift_on_console`: for TRL / Axolotl, where transformers' own progress line is kept,
  the per-layer drift entries are left out of that line (2 x the trained layers of numbers per
  step). They stay in the logs: ``trainer.state.log_history``, the reporters (W&B, TensorBoard)
  and ``midblock/drift.json``.

>>> step_line(3, 16, {"loss": 2.04211, "learning_rate": 5e-4}, 1.918)
'step 3/16  loss 2.0421  lr 5.00e-04  1.92 s/step'
"""

from __future__ import annotations

import sys
import time
from typing import Any, Optional

from transformers import PrinterCallback, ProgressCallback


#: The prefix of the drift monitor's log keys (:meth:`~midblock_plugin.training.drift.DriftMonitor.record`).
DRIFT_PREFIX = "midblock/"
#: Seconds between redraws of a bar that writes into a file or a pipe (not a terminal).
NON_TTY_INTERVAL = 5.0


def bar(total: Optional[int] = None, desc: Optional[str] = None, unit: str = "it", disable: bool = False):
    """A tqdm progress bar on stderr, cleared when closed (see the module docstring)."""
    from tqdm.auto import tqdm

    tty = bool(getattr(sys.stderr, "isatty", lambda: False)())
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        leave=False,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.1 if tty else NON_TTY_INTERVAL,
        disable=disable,
    )


def step_line(step: int, max_steps: Optional[int], logs: dict, seconds_per_step: Optional[float]) -> str:
    """One training step in under 80 characters: step, loss, learning rate, seconds per step."""
    parts = [f"step {step}/{max_steps}" if max_steps and max_steps > 0 else f"step {step}"]
    if isinstance(logs.get("loss"), (int, float)):
        parts.append(f"loss {logs['loss']:.4f}")
    if isinstance(logs.get("learning_rate"), (int, float)):
        parts.append(f"lr {logs['learning_rate']:.2e}")
    if seconds_per_step is not None:
        parts.append(f"{seconds_per_step:.2f} s/step")
    return "  ".join(parts)


def drift_lines(logs: dict) -> list[str]:
    """The per-layer drift entries of ``logs``, one line per measure (``weight_change``, ``grad_norm``)."""
    groups: dict[str, list[str]] = {}
    for key, value in logs.items():
        if not key.startswith(DRIFT_PREFIX) or key.count("/") < 2:
            continue
        measure, layer = key[len(DRIFT_PREFIX) :].rsplit("/", 1)
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        groups.setdefault(measure, []).append(f"{layer}={shown}")
    return [f"  {measure}: {' '.join(items)}" for measure, items in groups.items()]


def without_drift(logs: dict) -> dict:
    """``logs`` without the per-layer drift entries."""
    return {k: v for k, v in logs.items() if not k.startswith(DRIFT_PREFIX)}


def _write(line: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(line, file=sys.stderr)  # above any open bar, which is redrawn below it


class ConsoleProgress(ProgressCallback):
    """The training bar (on stderr, titled ``desc``) and one short line per logging step: step,
    loss, learning rate and seconds per step (:func:`step_line`); at the end one line with the
    steps, the time and the mean loss. ``verbose``: also the per-layer drift entries of each step."""

    def __init__(self, verbose: bool = False, desc: Optional[str] = None):
        super().__init__()
        self.verbose = verbose
        self.desc = desc
        self._since: tuple[float, int] = (time.perf_counter(), 0)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.training_bar = bar(total=state.max_steps, desc=self.desc, unit="step")
        self.current_step = state.global_step
        self._since = (time.perf_counter(), state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if "loss" in logs:
            now, (then, step) = time.perf_counter(), self._since
            per = (now - then) / (state.global_step - step) if state.global_step > step else None
            self._since = (now, state.global_step)
            _write(step_line(state.global_step, state.max_steps, logs, per))
        elif "train_runtime" in logs:
            loss = logs.get("train_loss")
            _write(
                f"trained {state.global_step} steps in {logs['train_runtime']:.1f} s"
                + (f", mean loss {loss:.4f}" if isinstance(loss, (int, float)) else "")
            )
        else:  # an evaluation's metrics: short keys, no drift
            shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in without_drift(logs).items()}
            shown.pop("total_flos", None)
            if shown:
                _write("  ".join(f"{k} {v}" for k, v in shown.items()))
        if self.verbose:
            for line in drift_lines(logs):
                _write(line)


class _DriftHiddenProgress(ProgressCallback):
    """transformers' progress bar and log line, without the per-layer drift entries."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        return super().on_log(args, state, control, logs=without_drift(logs or {}), **kwargs)


class _DriftHiddenPrinter(PrinterCallback):
    """transformers' log printer (``disable_tqdm=True``), without the per-layer drift entries."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        return super().on_log(args, state, control, logs=without_drift(logs or {}), **kwargs)


def hide_drift_on_console(trainer: Any) -> bool:
    """Swap ``trainer``'s own ``ProgressCallback`` / ``PrinterCallback`` (exactly those classes; a
    :class:`ConsoleProgress` or any other subclass is left alone) for one that prints every log key
    but the per-layer drift. Through ``pop_callback`` / ``add_callback``, before training starts.
    Returns whether one was swapped."""
    handler = getattr(trainer, "callback_handler", None)
    found = [cb for cb in getattr(handler, "callbacks", ()) if type(cb) in (ProgressCallback, PrinterCallback)]
    if not found or not hasattr(trainer, "pop_callback"):
        return False
    for old in found:
        trainer.pop_callback(old)  # this instance (a class would also match subclasses)
        if type(old) is ProgressCallback:
            trainer.add_callback(_DriftHiddenProgress(max_str_len=old.max_str_len))
        else:
            trainer.add_callback(_DriftHiddenPrinter())
    return True
