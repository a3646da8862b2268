"""The self-check of every export: logits of base + export against base + the original adapter.

Both are computed in float32 on the same prompts, one prompt at a time (no padding). The
check passes when ``max |difference| <= tolerance * max(1, max |reference logit|)`` (an
absolute 1e-5 on small logits, relative on large ones). The adapter's own effect
(``max |base + adapter - base|``) is reported too: an export of an adapter that changes nothing
(an untrained ``lora_B = 0``) cannot be told apart from a broken one, and the report says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence


#: Prompts of the self-check (any text works: the check compares two models on the same tokens).
DEFAULT_PROMPTS = (
    "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether?\nAnswer:",
    "The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b",
)


@dataclass
class Check:
    """One comparison of logits."""

    what: str
    max_abs_diff: float
    max_abs_logit: float
    tolerance: float
    adapter_effect: float | None = None

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance * max(1.0, self.max_abs_logit)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def line(self) -> str:
        bound = self.tolerance * max(1.0, self.max_abs_logit)
        text = (
            f"{self.what}: max |logit difference| {self.max_abs_diff:.3e} "
            f"({'<=' if self.passed else '>'} {bound:.1e}) -> {'OK' if self.passed else 'MISMATCH'}"
        )
        if self.adapter_effect is not None:
            text += f"; the adapter itself moves logits by up to {self.adapter_effect:.3e}"
        return text


def prompt_ids(
    sources: Sequence[str | Path], vocab_size: int, prompts: Sequence[str] = DEFAULT_PROMPTS
) -> tuple[list[Any], str]:
    """Token ids of ``prompts``, with the first tokenizer found in ``sources`` (adapter, then
    base); without one, fixed pseudo-random ids (seed 0). Returns the ids and what made them."""
    import torch
    from transformers import AutoTokenizer

    for src in sources:
        try:
            tok = AutoTokenizer.from_pretrained(str(src))
        except (OSError, ValueError, TypeError, KeyError):
            continue
        ids = [torch.tensor([tok(p)["input_ids"]], dtype=torch.long) for p in prompts]
        ids = [i for i in ids if i.shape[1] > 0]
        if ids and all(int(i.max()) < vocab_size for i in ids):
            return ids, f"{len(ids)} prompts, tokenizer of {src}"
    gen = torch.Generator().manual_seed(0)
    ids = [torch.randint(0, vocab_size, (1, 16 + 8 * k), generator=gen) for k in range(len(prompts))]
    return ids, f"{len(ids)} sequences of random token ids (no tokenizer found)"


def logits(model: Any, ids: Sequence[Any], device: str = "cpu", progress: Any = None) -> list[Any]:
    """float32 logits of ``model`` on each sequence of ``ids`` (on the CPU)."""
    import torch

    out = []
    with torch.no_grad():
        for i in ids:
            out.append(model(input_ids=i.to(device)).logits.float().cpu())
            if progress is not None:
                progress.update(1)
    return out


def compare(
    what: str, got: Sequence[Any], ref: Sequence[Any], tolerance: float, base: Sequence[Any] | None = None
) -> Check:
    """A :class:`Check` of logits ``got`` against ``ref`` (and the adapter's effect against ``base``)."""
    diff = max(float((g - r).abs().max()) for g, r in zip(got, ref))
    scale = max(float(r.abs().max()) for r in ref)
    effect = max(float((r - b).abs().max()) for r, b in zip(ref, base)) if base is not None else None
    return Check(what=what, max_abs_diff=diff, max_abs_logit=scale, tolerance=tolerance, adapter_effect=effect)
