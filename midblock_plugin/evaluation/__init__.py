"""End-of-training evaluation with lm-eval's own tasks (GSM8K by default).

One module per concern:

* ``settings.py``: :class:`EvalSettings`, the options, validated on construction.
* ``tasks.py``: which lm-eval tasks run and where their data comes from (offline task
  YAMLs reading a local GSM8K directory, cached ``TaskManager``).
* ``runner.py``: :func:`evaluate_model`, evaluate a model in memory with lm-eval.
* ``distributed.py``: how DDP / ZeRO-3 / FSDP ranks share an evaluation ("sharded": the
  ranks split the batches, in step under ZeRO-3; "lockstep": every rank does everything).
* ``saved.py``: evaluation of the saved model in its own process (``--backend hf`` /
  ``vllm``, :func:`evaluate_after_save`, an adapter merged into a temporary copy for vLLM).
* ``results.py``: the report, its table, its log metrics and its files (``<task>.json``).
* ``callback.py``: :class:`EvalCallback`, a ``TrainerCallback`` running it at train end
  (and optionally at train start as a baseline), for TRL, the HF Trainer and Axolotl.
* ``standalone.py``: the driver of ``midblock eval`` on a saved model (loading, process group,
  the vLLM path); :mod:`midblock_plugin.cli.eval` only parses its flags and calls it.
* ``authors.py``: the authors' own GSM8K scoring (``protocol="authors"``), without lm-eval.
* ``preflight.py``: :func:`preflight`, whether the evaluation will find GSM8K, asked before any
  training; :data:`EVAL_FAILED_EXIT` (3), the exit status of a run whose evaluation failed after
  its model was saved.

``EvalSettings.protocol`` is ``"lm-eval"`` (the task's defaults), ``"paper"`` (zero-shot,
greedy, 64 new tokens, last number, through lm-eval) or ``"authors"`` (the authors' scripts:
100 shuffled test questions, no stop sequence, numbers compared as floats); every report says which.

Importing this package is cheap; torch, transformers and lm-eval load on first use.

>>> from midblock_plugin.evaluation import EvalSettings
>>> EvalSettings(limit=100).tasks
['gsm8k']
"""

from midblock_plugin.evaluation.preflight import (  # noqa: F401
    EVAL_FAILED_EXIT,
    EvaluationError,
    EvaluationFailed,
    preflight,
)
from midblock_plugin.evaluation.settings import EvalSettings  # noqa: F401


__all__ = [
    "EvalSettings",
    "EvalCallback",
    "evaluate_model",
    "EvaluationError",
    "EvaluationFailed",
    "EVAL_FAILED_EXIT",
    "preflight",
    "write_offline_tasks",
    "evaluate_after_save",
]


def __getattr__(name: str):
    if name == "EvalCallback":
        from midblock_plugin.evaluation.callback import EvalCallback

        return EvalCallback
    if name == "evaluate_model":
        from midblock_plugin.evaluation import runner

        return getattr(runner, name)
    if name == "evaluate_after_save":
        from midblock_plugin.evaluation.saved import evaluate_after_save

        return evaluate_after_save
    if name == "write_offline_tasks":
        from midblock_plugin.evaluation.tasks import write_offline_tasks

        return write_offline_tasks
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
