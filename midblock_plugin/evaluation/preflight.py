"""Before and after training: will the evaluation find its data, and how a run says that it failed.

* :func:`preflight`: called before any training by every surface that evaluates after it (the TRL
  example's ``--eval-limit``, ``midblock run`` / ``compare`` / ``sweep`` unless ``--skip-eval``,
  Axolotl's ``midblock_eval``, and :class:`~midblock_plugin.evaluation.callback.EvalCallback`
  itself): an evaluation whose GSM8K cannot be found (no local directory, and offline or the hub
  unreachable) is refused then, not discovered after hours of training.
* :data:`EVAL_FAILED_EXIT`: the exit status of a run whose evaluation failed after training. The
  trained model is saved first and kept; only the evaluation's numbers are missing.
* :class:`EvaluationError`: an evaluation that failed (``midblock run`` ends with
  :data:`EVAL_FAILED_EXIT` on it; :func:`after_training` turns any failure after a model was saved
  into one); :class:`EvaluationFailed`: what the Axolotl plugin raises once the model is saved,
  ending the process with :data:`EVAL_FAILED_EXIT`.

Import-cheap: no torch, no lm-eval (``datasets`` is imported only when the hub must serve GSM8K).

>>> EVAL_FAILED_EXIT
3
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Optional

from midblock_plugin.data import gsm8k
from midblock_plugin.evaluation.settings import EvalSettings


#: Exit status of a run whose evaluation failed after training (its model is saved and kept).
#: 2 stays "bad input, nothing was done"; 1 a crash; 130 / 143 / 129 a signal.
EVAL_FAILED_EXIT = 3


class EvaluationError(RuntimeError):
    """An evaluation failed for a reason the user can fix (the message says how)."""


class EvaluationFailed(SystemExit):
    """The final evaluation failed after the model was saved: raised by an integration whose host
    program owns the exit (Axolotl) once everything is saved, so the process ends with
    :data:`EVAL_FAILED_EXIT`. ``str()`` is the reason."""

    def __init__(self, message: str) -> None:
        super().__init__(EVAL_FAILED_EXIT)
        self.message = message

    def __str__(self) -> str:
        return self.message


@contextlib.contextmanager
def after_training(saved: Path, what: str) -> Iterator[None]:
    """Around a step that trains, saves ``saved`` (a model directory, written whole or not at all)
    and then measures and evaluates it: a failure once ``saved`` exists is the evaluation's, raised
    as :class:`EvaluationError` naming ``what`` and where the model is kept (the caller ends with
    :data:`EVAL_FAILED_EXIT`); a failure before it is raised as it is."""
    try:
        yield
    except Exception as exc:
        if not Path(saved).is_dir():
            raise
        raise EvaluationError(
            f"{what}: {type(exc).__name__}: {exc} (after training: the trained model is saved in {saved})"
        ) from exc


def _gsm8k_tasks(settings: EvalSettings) -> list[str]:
    """The tasks of ``settings`` that read GSM8K (lm-eval's GSM8K family; the authors' protocol)."""
    if settings.protocol == "authors":
        return list(settings.tasks)
    from midblock_plugin.rules import MissingDependency

    try:
        from midblock_plugin.evaluation.tasks import gsm8k_task_yamls

        family = set(gsm8k_task_yamls())
    except MissingDependency:  # no lm-eval: its own check names the install line
        return [t for t in settings.tasks if t.startswith("gsm8k")]
    return [t for t in settings.tasks if t in family]


def preflight(
    settings: EvalSettings, *, data_dir: str = "data_dir", needs: str = "the evaluation", fix: str = ""
) -> Optional[Path]:
    """Refuse now an evaluation that would fail for want of GSM8K: the local directory it reads
    (``data_dir``, else ``$MIDBLOCK_GSM8K_DIR``) is parsed line by line, and without one the hub must
    serve ``openai/gsm8k`` (online, or from the datasets cache under ``HF_HUB_OFFLINE`` /
    ``HF_DATASETS_OFFLINE``: :func:`midblock_plugin.data.gsm8k.require_source`). Returns the local
    directory (``None``: the hub). Tasks outside the GSM8K family fetch their own data through
    lm-eval and are not checked here.

    ``data_dir``, ``needs`` and ``fix`` spell the message for a surface: how it names the data
    directory (``--eval-data-dir``), what evaluates (``--eval-limit``) and how to turn it off
    (``drop --eval-limit``). Raises ``FileNotFoundError`` / ``ValueError`` naming them.
    """
    if not settings.enabled or not _gsm8k_tasks(settings):
        return None
    from midblock_plugin.checks import check_gsm8k_dir

    where = gsm8k.require_source(settings.data_dir, data_dir, needs, fix)
    if where is not None:  # every line of both splits (cached by size and time: cheap to repeat)
        check_gsm8k_dir(where, data_dir if settings.data_dir is not None else gsm8k.ENV)
    return where
