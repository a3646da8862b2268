"""How the ranks of a distributed run share an evaluation.

With ``torch.distributed`` initialised and a world size > 1, lm-eval runs as a single
process on every rank (same documents, same few-shot draws, same prompts as a one-process
run); only the model calls are shared (:func:`sharded_hflm`):

* **sharded** (the default, DDP and ZeRO-3 / FSDP alike): generation requests are ordered
  and cut into batches exactly as lm-eval's ``HFLM`` does in a single process (grouped by
  generation settings, longest prompt first, ``batch_size`` per batch); batch ``k`` goes to
  rank ``k % W``, so every batch, padding included, is the one a single process would
  generate, and the answers are all-gathered back into lm-eval's order: results equal a
  single-process run generation for generation. Under ZeRO-3 / FSDP (parameters are
  gathered inside every forward, so all ranks must run the same forwards) every rank runs
  the same number of ``generate`` calls: a rank with fewer batches runs dummy ones (its
  answers are dropped), and ``generate`` keeps ranks in step token by token
  (``synced_gpus``, which transformers turns on under ZeRO-3 / FSDP). Log-likelihood
  requests are split by request under DDP and run by every rank under ZeRO-3 / FSDP.
* **lockstep** (ZeRO-3 / FSDP with ``partitioned_mode="lockstep"``): every rank generates
  every answer on the partitioned model (W times the work; kept as a fallback).

Afterwards ZeRO-3 parameters are re-partitioned (:func:`release_after_inference`). In
every mode rank 0's summary is broadcast (:func:`broadcast`), so every rank returns (and
logs) the same numbers; the report's ``distributed`` entry records the mode, the rows each
rank generated for (``rows_per_rank``) and its ``generate`` calls (``generate_calls_per_rank``,
dummy calls included).
"""

from __future__ import annotations

import functools
import os
from typing import Any

from midblock_plugin.compat import release_partitioned_parameters


def distributed_context(model: Any = None, partitioned_mode: str = "sharded") -> dict[str, Any]:
    """``{"mode", "rank", "world_size", "partitioner"}``: mode ``single``, ``sharded`` (each
    rank generates for a share of the requests; under ZeRO-3 / FSDP, named by
    ``partitioner``, in step with the others) or ``lockstep`` (ZeRO-3 / FSDP with
    ``partitioned_mode="lockstep"``: every rank generates every answer)."""
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
    mode = "lockstep" if partitioner and partitioned_mode == "lockstep" else "sharded"
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
    """lm-eval's ``HFLM`` with its model calls shared between ranks and its ``generate``
    calls counted (built on first use, so importing this module does not import lm-eval)."""
    from lm_eval.models.huggingface import HFLM

    from midblock_plugin.compat import count_generate_calls, lm_eval_collator

    Collator = lm_eval_collator()

    class ShardedHFLM(count_generate_calls(HFLM)):
        """HFLM over an in-memory model whose generation is split across ranks by batch.

        ``partitioned``: the model is ZeRO-3 / FSDP partitioned, so every rank must run the
        same number of ``generate`` calls (padded with dummy batches) and log-likelihood
        requests run on every rank. ``lockstep``: every rank runs every request (no split).
        With ``world_size=1`` it is HFLM itself, plus the counters. After a call,
        :attr:`stats` holds ``rows_per_rank``, ``generate_calls_per_rank`` and ``dummy_calls_per_rank``.
        """

        def __init__(
            self,
            *,
            rank: int = 0,
            world_size: int = 1,
            partitioned: bool = False,
            lockstep: bool = False,
            **kwargs: Any,
        ) -> None:
            super().__init__(**kwargs)
            self.shard_rank, self.shard_world_size = rank, world_size
            self.partitioned, self.lockstep = partitioned, lockstep
            self.generate_calls = 0
            self.stats: dict[str, list[int]] = {}

        # ---------------------------------------------------------------- helpers
        def _gather(self, obj: Any) -> list[Any]:
            if self.shard_world_size == 1:
                return [obj]
            import torch.distributed as dist

            parts: list[Any] = [None] * self.shard_world_size
            dist.all_gather_object(parts, obj)
            return parts

        def _record(self, rows: int, calls: int, dummies: int) -> None:
            gathered = self._gather((rows, calls, dummies))
            for key, k in (("rows_per_rank", 0), ("generate_calls_per_rank", 1), ("dummy_calls_per_rank", 2)):
                prev = self.stats.get(key) or [0] * len(gathered)
                self.stats[key] = [p + g[k] for p, g in zip(prev, gathered)]

        def single_process_batches(self, requests) -> list[list[int]]:
            """The batches (lists of request indices) HFLM would generate in one process:
            grouped by generation settings, longest prompt first, ``batch_size`` per batch."""

            def _collate(item):
                toks = self.tok_encode(item[0])
                return -len(toks), item[0]

            items = [(*req.args, i) for i, req in enumerate(requests)]
            collator = Collator(items, sort_fn=_collate, group_by="gen_kwargs", group_fn=lambda x: x[1])
            return [[item[2] for item in batch] for batch in collator.get_batched(n=int(self.batch_size))]

        # ---------------------------------------------------------------- requests
        def generate_until(self, requests, disable_tqdm: bool = False):
            w, r = self.shard_world_size, self.shard_rank
            calls0 = self.generate_calls
            if self.lockstep or self.batch_size == "auto" or not requests:
                # every rank runs everything (lockstep); "auto" batch sizes are found per rank,
                # so batches cannot be planned ahead: fall back to every rank doing all the work
                out = super().generate_until(requests, disable_tqdm=disable_tqdm or r != 0)
                self._record(len(requests), self.generate_calls - calls0, 0)
                return out
            batches = self.single_process_batches(requests)
            mine = batches[r::w]
            calls = -(-len(batches) // w) if self.partitioned else len(mine)
            from tqdm.auto import tqdm

            bar = tqdm(
                total=len(requests),
                desc=f"generate_until ({w} rank{'s' if w > 1 else ''})",
                disable=disable_tqdm or r != 0,
            )
            answers: dict[int, str] = {}
            for k in range(calls):
                if k < len(mine):
                    batch = mine[k]
                    texts = super().generate_until([requests[i] for i in batch], disable_tqdm=True)
                    answers.update(zip(batch, texts))
                else:  # a dummy batch keeps this rank's partitioned forwards in step with the others
                    super().generate_until([requests[batches[-1][-1]]], disable_tqdm=True)
                bar.update(sum(len(b) for b in batches[k * w : (k + 1) * w]))
            bar.close()
            rows = sum(len(b) for b in mine)
            self._record(rows, self.generate_calls - calls0, max(0, calls - len(mine)))
            merged: dict[int, str] = {}
            for part in self._gather(answers):
                merged.update(part)
            return [merged[i] for i in range(len(requests))]

        def _split(self, method, requests, **kwargs):
            w, r = self.shard_world_size, self.shard_rank
            if w == 1 or self.partitioned or self.lockstep:
                return method(requests, **kwargs)  # partitioned forwards: every rank runs every request
            mine = requests[r::w]
            answers = method(mine, **kwargs) if mine else []
            out: list[Any] = [None] * len(requests)
            for k, part in enumerate(self._gather(list(answers))):
                out[k::w] = part
            return out

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return self._split(super().loglikelihood, requests, disable_tqdm=disable_tqdm)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return self._split(super().loglikelihood_rolling, requests, disable_tqdm=disable_tqdm)

    return ShardedHFLM


def sharded_hflm(
    *, rank: int = 0, world_size: int = 1, partitioned: bool = False, lockstep: bool = False, **kwargs: Any
):
    """A :func:`sharded_hflm_class` instance for ``rank`` of ``world_size`` (``kwargs`` go to ``HFLM``)."""
    return sharded_hflm_class()(rank=rank, world_size=world_size, partitioned=partitioned, lockstep=lockstep, **kwargs)
