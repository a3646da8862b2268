"""The main job: train mid-block LoRA on GSM8K, evaluate with lm-eval, analyse, report.

:func:`run_job` does one variant end to end; :func:`compare` trains several windows
(uniform ``11111`` and mid-block masks) at the same rank budget and seed and writes a
markdown report with a table and figures: the paper's comparison at small scale. Only
measured numbers go into the report.

One module per concern:

==================  ==========================================================
:mod:`.options`     :class:`JobOptions`, the presets (``cpu``, ``paper``, ``auto``)
:mod:`.measures`    peak memory, held-out answer loss, training step time
:mod:`.train`       load the base model, train one variant, evaluate, analyse
:mod:`.report`      figures, ``report.md`` and ``results.json``
:mod:`.jobs`        :func:`run_job` and :func:`compare`: every check before any model loads,
                    the run directory guarded by :class:`midblock_plugin.io.RunDirectory`
==================  ==========================================================

A directory that holds a previous run (finished or not) is refused unless ``overwrite``
(``--overwrite``), which removes that run's files first; ``midblock-run.json`` says
``running``, then ``complete`` or ``incomplete`` (with the error).
"""

from midblock_plugin.experiments.jobs import compare, run_job  # noqa: F401
from midblock_plugin.experiments.options import DEFAULT_VARIANTS, PRESETS, JobOptions  # noqa: F401


__all__ = ["JobOptions", "run_job", "compare", "PRESETS", "DEFAULT_VARIANTS"]
