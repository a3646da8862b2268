"""Layer-wise analysis of base vs. tuned models (``midblock analyze``) and the window rule.

Modules: ``metrics`` (pure tensor math), ``prompts`` (prompt sets), ``collect`` (forward
hooks and streamed per-layer statistics), ``weights`` (weight change and spectral SNR),
``run`` (configuration, model loading, :func:`run_analysis`), ``recommend`` (the window
search), ``probe`` (the pre-training gradient probe), ``report`` (JSON / CSV / PNG). The subcommand is :mod:`midblock_plugin.cli.analyze`;
model layouts come from :mod:`midblock_plugin.architecture`. See ``docs/analysis.md``.

Names are re-exported lazily, so ``midblock --help`` (which imports
:mod:`midblock_plugin.cli.analyze`) does not import torch.

>>> from midblock_plugin.analysis import recommend_window
>>> recommend_window([0.0] * 16).fallback is not None  # a flat curve gives the paper default
True
"""

from __future__ import annotations

import importlib
from typing import Any


_EXPORTS = {
    "collect": ("LayerCollector", "OwnChange", "Readout", "backbone_and_readout"),
    "run": (
        "AnalysisConfig",
        "AnalysisResult",
        "PAIR_SIGNALS",
        "adapter_trained_layers",
        "pair_signal",
        "result_columns",
        "run_analysis",
    ),
    "probe": ("ProbeResult", "gradient_probe", "layer_projection_weights"),
    "weights": ("weight_change_adapter", "weight_change_models", "weight_snr"),
    "metrics": (
        "CrossStats",
        "MomentStats",
        "cka_from_stats",
        "curvature",
        "dataset_entropy",
        "effective_rank",
        "linear_cka",
        "linear_cka_gram",
        "mean_pool",
        "mean_shift",
        "prompt_entropy",
        "spectral_snr",
    ),
    "prompts": ("BUILTIN_PROMPTS", "load_prompt_rows"),
    "recommend": (
        "SIGNALS",
        "Recommendation",
        "best_segment_mask",
        "compare_windows",
        "default_recommendation",
        "exact_segment_mask",
        "recommend_window",
        "refused_recommendation",
        "search_windows",
    ),
    "report": ("load_analysis", "summary_table", "to_json", "write_reports"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'midblock_plugin.analysis' has no attribute {name!r}")
    return getattr(importlib.import_module(f"midblock_plugin.analysis.{module}"), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
