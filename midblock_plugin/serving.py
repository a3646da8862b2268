"""Serving arithmetic: the LoRA ranks vLLM accepts and what a LoRA adapter costs per token.

Pure arithmetic (it imports nothing but ``typing``, so :mod:`midblock_plugin.config` may import
it), shared by the plan (``budget='serve'``, the serving line of the summary) and by
``midblock export --target vllm``.

vLLM only starts with ``--max-lora-rank`` in a fixed set (:data:`VLLM_MAX_LORA_RANKS`: its
``MaxLoRARanks`` in vllm-project/vllm ``vllm/config/lora.py``; the one place midblock writes the
list), allocates its LoRA buffers for every layer and target module at that rank, and runs its LoRA kernels
on every layer, zero-filling the layers an adapter lacks. So a mid-block adapter of rank 113
is served at rank 128 on *all* layers: its serving cost per token is that of uniform LoRA at
rank 128, twice that of the uniform r=64 adapter it was budget-matched to.

>>> vllm_max_lora_rank(113), serve_rank(113)
(128, 64)
"""

from __future__ import annotations

from typing import Iterable

from midblock_plugin.rules import check_rank


#: ``--max-lora-rank`` values vLLM accepts (``MaxLoRARanks``, vllm/config/lora.py).
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
#: The same, as help texts and messages write it ("1, 8, ..., 512").
VLLM_MAX_LORA_RANKS_TEXT = ", ".join(map(str, VLLM_MAX_LORA_RANKS))


def vllm_max_lora_rank(rank: int) -> int | None:
    """The smallest ``--max-lora-rank`` vLLM accepts that holds ``rank`` (``None`` above 512)."""
    check_rank(rank)
    return next((s for s in VLLM_MAX_LORA_RANKS if s >= rank), None)


def serve_rank(rank: int) -> int:
    """The largest rank vLLM accepts at or below ``rank`` (``budget='serve'``)."""
    check_rank(rank)
    return max(s for s in VLLM_MAX_LORA_RANKS if s <= rank)


def lora_flops_per_token(rank: int, widths: Iterable[tuple[int, int]]) -> int:
    """FLOPs per token of LoRA branches of ``rank`` on modules of (in, out) ``widths``:
    ``x A^T`` then ``(x A^T) B^T`` is ``rank * (in + out)`` multiply-adds, 2 FLOPs each."""
    return sum(2 * rank * (i + o) for i, o in widths)
