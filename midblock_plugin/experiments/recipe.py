"""Recipes: ``default`` (midblock's own) and ``paper`` (the authors' public scripts).

``--recipe paper`` sets, for ``midblock run`` / ``compare`` / ``sweep`` (an option given
explicitly still wins):

======================  ===============================  ==========================================
option                  paper                            default recipe (``--preset cpu``)
======================  ===============================  ==========================================
training rows           shuffled with seed 42, first     the first ``--num-examples`` rows in file
                        2,000 (``shuffle_seed=42``)      order (64)
loss                    the whole "Question: ...         the same (TRL's language-modelling loss
                        Answer: ..." text                on the ``text`` field)
max_length              128 tokens                       128
epochs / steps          one epoch (``max_steps=-1``)     16 steps
batch x grad-accum      4 x 8                            4 x 1
lora_alpha              128 for every variant            2 * rank, kept in ratio
                        (``alpha_policy="fixed"``)       (``alpha_policy="ratio"``)
lora_dropout            0.05                             0.05
target modules          q/k/v/o                          q/k/v/o
rank (uniform baseline) 64; 8 at L=64 (the 32B model)    16
learning rate           1e-4 (L=16, 32: 1B, 7B);         5e-4
                        2e-4 (L=40: 13B);
                        5e-5 (L=64: 32B)
evaluation              ``protocol="paper"``: zero-shot, lm-eval's gsm8k task: 5-shot, two
                        greedy, 64 new tokens, last      filters (strict ``#### N`` and last
                        number                           number)
bf16                    on a CUDA GPU only               ``--preset paper``: on; cpu: off
======================  ===============================  ==========================================

The model size is read from its depth L: 16, 32, 40 and 64 layers are OLMo2-1B, 7B, 13B and
32B, the four models of the paper. Any other depth gets the 1B / 7B setting (rank 64, lr 1e-4),
and the report says that no paper setting matched.
"""

from __future__ import annotations

from typing import Any, Optional


#: The paper's per-size settings by depth L: (model, uniform rank, learning rate).
PAPER_BY_DEPTH = {
    16: ("OLMo2-1B", 64, 1e-4),
    32: ("OLMo2-7B", 64, 1e-4),
    40: ("OLMo2-13B", 64, 2e-4),
    64: ("OLMo2-32B", 8, 5e-5),
}
#: The setting used for a depth the paper did not train (its 1B / 7B setting).
PAPER_OTHER = ("the 1B/7B setting (no paper model has this depth)", 64, 1e-4)
#: Settings of the paper recipe that do not depend on the model.
PAPER_FIXED = dict(
    shuffle_seed=42,
    num_examples=2000,
    max_length=128,
    max_steps=-1,
    batch_size=4,
    grad_accum=8,
    lora_alpha=128.0,
    alpha_policy="fixed",
    lora_dropout=0.05,
    eval_protocol="paper",
)


def paper_match(num_layers: int) -> tuple[str, int, float]:
    """``(paper model or note, rank, lr)`` of a model of depth ``num_layers``."""
    return PAPER_BY_DEPTH.get(num_layers, PAPER_OTHER)


def recipe_values(recipe: str, num_layers: Optional[int] = None) -> dict[str, Any]:
    """The :class:`~.options.JobOptions` values a recipe sets (``{}`` for ``default``).

    ``paper`` needs the model's depth (``num_layers``) for rank and learning rate; without it only
    the depth-independent values are returned."""
    if recipe in (None, "default"):
        return {}
    if recipe != "paper":
        raise ValueError(f"--recipe {recipe!r}: must be one of default, paper.")
    import torch

    values: dict[str, Any] = dict(PAPER_FIXED, bf16=bool(torch.cuda.is_available()))
    if num_layers is not None:
        _, rank, lr = paper_match(num_layers)
        values.update(rank=rank, lr=lr)
    return values


def describe(recipe: str, num_layers: Optional[int]) -> str:
    """One line for the report: which recipe, and which paper model's setting was used."""
    if recipe != "paper":
        return "recipe `default` (midblock's own; `--recipe paper` for the authors' setup)"
    what = paper_match(num_layers)[0] if num_layers is not None else "unknown depth"
    return (
        f"recipe `paper` (the authors' public scripts; L={num_layers}: {what}): rows shuffled with seed 42, "
        "loss on the whole text, alpha 128 for every variant, dropout 0.05, q/k/v/o, zero-shot greedy evaluation "
        "(64 new tokens, last number)"
    )
