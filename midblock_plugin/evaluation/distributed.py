"""How the ranks of a distributed run share an evaluation.

With ``torch.distributed`` initialised and a world size > 1:

* **DDP / plain data parallel** ("sharded"): lm-eval builds the same prompts on every
  rank (exactly those of a single-process run), but the model calls are split: rank
  ``r`` generates for requests ``r, r+W, ...`` and the answers are all-gathered
  (:func:`sharded_hflm`), so no rank repeats another's generation and the scores equal a
  single-process run's.
* **DeepSpeed ZeRO-3 / FSDP** ("lockstep"): parameters are partitioned and gathered
  inside every forward, so all ranks must run the same forwards in the same order: each
  rank evaluates all rows on the partitioned model (``generate`` syncs ranks itself).
  Afterwards ZeRO-3 parameters are re-partitioned (:func:`release_after_inference`).

In both modes rank 0's summary is broadcast (:func:`broadcast`), so every rank returns
(and logs) the same numbers.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from midblock_plugin.compat import release_partitioned_parameters


def distributed_context(model: Any = None) -> dict[str, Any]:
    """``{"mode", "rank", "world_size", "partitioner"}``: mode ``single``, ``sharded`` (DDP:
    each rank generates for a share of the requests) or ``lockstep`` (ZeRO-3 / FSDP, named
    by ``partitioner``: all ranks run every forward together)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return {"mode": "single", "rank": 0, "world_size": 1, "partitioner": None}
    rank, world = dist.get_rank(), dist.get_world_size()
    partitioner = None
    try:
        from transformers.integrations import is_deepspeed_zero3_enabled

        if is_deepspeed_zero3_enabled():
            partitioner = "deepspeed-zero3"
    except Exception:  # pragma: no cover - transformers without deepspeed helpers
        pass
    if partitioner is None and model is not None:
        try:
            from transformers.integrations.fsdp import is_fsdp_managed_module

            if is_fsdp_managed_module(model):
                partitioner = "fsdp"
        except Exception:  # pragma: no cover
            pass
    if partitioner is None and os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
        partitioner = "fsdp"
    mode = "lockstep" if partitioner else "sharded"
    return {"mode": mode, "rank": rank, "world_size": world, "partitioner": partitioner}


def broadcast(obj: Any, ctx: dict[str, Any]) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself in a single process)."""
    if ctx["world_size"] == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def release_after_inference(model: Any, ctx: dict[str, Any], engine: Any = None) -> None:
    """Return a ZeRO-3 model to its training state after the evaluation's forwards
    (:func:`midblock_plugin.compat.release_partitioned_parameters`); nothing otherwise."""
    if ctx["partitioner"] == "deepspeed-zero3":
        release_partitioned_parameters(model, engine)


@functools.lru_cache(maxsize=1)
def sharded_hflm_class():
    """lm-eval's ``HFLM`` with its model calls split across DDP ranks (built on first use,
    so importing this module does not import lm-eval)."""
    from lm_eval.models.huggingface import HFLM

    class ShardedHFLM(HFLM):
        """HFLM over an in-memory model whose forward work is split across DDP ranks.

        lm-eval itself runs as a single process on every rank (same documents, same
        few-shot draws, same prompts as a one-process run); only the model calls are
        sharded: rank ``r`` answers requests ``r, r+W, ...`` and the answers are
        all-gathered back into lm-eval's order. (lm-eval's own data-parallel mode shards
        documents before drawing few-shot examples, so its prompts would differ from a
        single-process run's.)
        """

        def __init__(self, *, rank: int, world_size: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.shard_rank, self.shard_world_size = rank, world_size

        def _sharded(self, method, requests, **kwargs):
            import torch.distributed as dist

            r, w = self.shard_rank, self.shard_world_size
            mine = requests[r::w]
            answers = method(mine, **kwargs) if mine else []
            parts: list[Any] = [None] * w
            dist.all_gather_object(parts, list(answers))
            out: list[Any] = [None] * len(requests)
            for k, part in enumerate(parts):
                out[k::w] = part
            return out

        def generate_until(self, requests, disable_tqdm: bool = False):
            return self._sharded(super().generate_until, requests, disable_tqdm=disable_tqdm)

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return self._sharded(super().loglikelihood, requests, disable_tqdm=disable_tqdm)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return self._sharded(super().loglikelihood_rolling, requests, disable_tqdm=disable_tqdm)

    return ShardedHFLM


def sharded_hflm(*, rank: int, world_size: int, **kwargs: Any):
    """A :func:`sharded_hflm_class` instance for ``rank`` of ``world_size`` (``kwargs`` go to ``HFLM``)."""
    return sharded_hflm_class()(rank=rank, world_size=world_size, **kwargs)
