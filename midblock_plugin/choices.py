"""Every closed choice of midblock, declared once as a ``Literal`` type.

The dataclasses annotate their fields with these types; the command line
(:mod:`midblock_plugin.cli.fields`), the Axolotl pydantic model and the docs' key-table test
read the allowed values from the annotation (:func:`values`), so a new choice is one edit here.
Import-cheap: nothing but ``typing``.

>>> values(AlphaPolicy)
('ratio', 'fixed')
"""

from __future__ import annotations

from typing import Any, Literal, get_args, get_origin


#: ``lora`` (the paper's method) or ``full`` (full-parameter updates of the window's layers).
Mode = Literal["lora", "full"]
#: How the per-layer rank is set: matched to uniform LoRA, the plain rank, or vLLM's serving sizes.
Budget = Literal["match", "none", "serve"]
#: ``ratio`` keeps alpha/r (alpha/sqrt(r) with rsLoRA) equal to the baseline's; ``fixed`` keeps alpha.
AlphaPolicy = Literal["ratio", "fixed"]
#: Named groups of target modules, resolved per architecture.
TargetPreset = Literal["attention", "mlp", "all-linear"]
#: GSM8K evaluation protocols (see :mod:`midblock_plugin.evaluation.settings`; ``authors``: the authors' scripts).
Protocol = Literal["lm-eval", "paper", "authors"]
#: Where an evaluation runs: the model in memory, or after the save in its own process.
Backend = Literal["in-memory", "hf", "vllm"]
#: How ZeRO-3 / FSDP ranks share an evaluation.
PartitionedMode = Literal["sharded", "lockstep"]
#: Recipes of the experiment jobs (:mod:`midblock_plugin.experiments.recipe`).
Recipe = Literal["default", "paper"]
#: Size presets of the experiment jobs (``auto``: ``paper`` on a CUDA GPU, else ``cpu``).
Preset = Literal["auto", "cpu", "paper"]

#: ``midblock analyze``: model dtype, dtype of the D x D accumulators, GSM8K split, the two-model per-layer signal.
AnalysisDtype = Literal["auto", "float32", "bfloat16", "float16"]
StatsDtype = Literal["float64", "float32"]
Split = Literal["train", "test"]
PairSignal = Literal["own_output", "weight", "inherited_cka"]

#: The segment mask ``midblock run`` trains by default (the paper's mid block).
DEFAULT_SEGMENTS = "01110"


def values(choice: Any) -> tuple:
    """The allowed values of a ``Literal`` type (also inside ``Optional[...]``), in declared order."""
    if get_origin(choice) is Literal:
        return tuple(get_args(choice))
    found: list = []
    for arg in get_args(choice):
        found.extend(v for v in values(arg) if v not in found)
    return tuple(found)


def check(name: str, value: Any, choice: Any) -> None:
    """Raise a ``ValueError`` naming ``name``, the value and the allowed values unless ``value`` is one of them."""
    allowed = values(choice)
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}.")
