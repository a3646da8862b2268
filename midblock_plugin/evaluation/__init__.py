"""End-of-training evaluation with lm-eval's own tasks (GSM8K by default).

* :class:`EvalSettings` (``settings.py``): the options, validated on construction.
* :func:`evaluate_model` (``runner.py``): evaluate a model in memory, write ``<task>.json``.
* :class:`EvalCallback` (``callback.py``): a ``TrainerCallback`` running it at train end
  (and optionally at train start as a baseline), for TRL, the HF Trainer and Axolotl.
* ``midblock eval`` (``cli.py``): the same evaluation of a saved model.
* ``tasks.py``: lm-eval tasks reading a local GSM8K directory (offline clusters).

Importing this package is cheap; torch, transformers and lm-eval load on first use.

>>> from midblock_plugin.evaluation import EvalSettings
>>> EvalSettings(limit=100).tasks
['gsm8k']
"""

from midblock_plugin.evaluation.settings import EvalSettings  # noqa: F401

__all__ = ["EvalSettings", "EvalCallback", "evaluate_model", "EvaluationError", "write_offline_tasks"]


def __getattr__(name: str):
    if name == "EvalCallback":
        from midblock_plugin.evaluation.callback import EvalCallback

        return EvalCallback
    if name in ("evaluate_model", "EvaluationError"):
        from midblock_plugin.evaluation import runner

        return getattr(runner, name)
    if name == "write_offline_tasks":
        from midblock_plugin.evaluation.tasks import write_offline_tasks

        return write_offline_tasks
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
