"""The main job: train mid-block LoRA on GSM8K, evaluate with lm-eval, analyse, report.

:func:`sweep` trains every window x seed x learning rate at the same rank budget, reports each
window at the rate its validation loss picks, with the held-out answer loss and its 95% interval,
the Holm-corrected paired comparisons with uniform, forgetting on general text (also at uniform's
task gain) and GSM8K accuracy: the paper's two claims, measured with error bars. :func:`compare` is
a sweep with one seed; :func:`run_job` one variant with one seed. The layer-wise analysis always
runs on a uniform model. Only measured numbers go into the report.

One module per concern:

==================  ==========================================================
:mod:`.options`     :class:`JobOptions`, the presets (``cpu``, ``paper``, ``auto``)
:mod:`.recipe`      the recipes: ``default`` and ``paper`` (the authors' public scripts)
:mod:`.measures`    peak memory, held-out answer loss (per row), training step time
:mod:`.forgetting`  base vs tuned on general text: change in loss, KL of next-token distributions
:mod:`.stats`       paired comparisons (crossed seeds x rows t test), Holm, GSM8K over seeds, value at a gain
:mod:`.record`      :class:`~.record.SeedRecord`, the typed per-seed record, and :data:`~.record.METRICS`
:mod:`.train`       load the base model, train one variant with one seed, measure, evaluate, analyse
:mod:`.summary`     per-seed records -> per-variant entries of ``results.json`` (rate choice, Holm)
:mod:`.report`      figures, ``report.md`` and ``results.json``
:mod:`.jobs`        :func:`sweep`, :func:`compare` (a sweep with one seed) and :func:`run_job` (one
                    variant, one seed): every check before any model loads, the run directory
                    guarded by :class:`midblock_plugin.io.RunDirectory`
==================  ==========================================================

A directory that holds a previous run (finished or not) is refused unless ``overwrite``
(``--overwrite``), which removes that run's files first; ``midblock-run.json`` says
``running``, then ``complete`` or ``incomplete`` (with the error).
"""

from midblock_plugin.experiments.jobs import compare, run_job, sweep  # noqa: F401
from midblock_plugin.experiments.options import DEFAULT_VARIANTS, PRESETS, SWEEP_VARIANTS, JobOptions  # noqa: F401


__all__ = ["JobOptions", "run_job", "compare", "sweep", "PRESETS", "DEFAULT_VARIANTS", "SWEEP_VARIANTS"]
