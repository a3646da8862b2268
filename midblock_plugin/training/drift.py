"""Per-layer drift monitor: relative weight change ||W_t - W_0|| / ||W_0|| and gradient norm.

Only what the trained layers need is kept: in LoRA mode the frozen base weight *is*
W_0 (so only its norm is stored and the change is ``scaling * B @ A``); in full mode a
copy of the window's parameters is kept (under ZeRO-3, of this rank's partition only,
and the squared norms are summed across ranks).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from midblock_plugin.architecture import decoder_layers, param_quantization
from midblock_plugin.compat import zero3_partitioned


def _gathered(params: list[Any]):
    """Context that gathers ZeRO-3 partitioned parameters (collective: all ranks call it)."""
    import contextlib

    if zero3_partitioned(params):
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    return contextlib.nullcontext()


def _dense_weight(module: Any) -> torch.Tensor:
    """The base weight of a LoRA layer as real numbers: dequantized (PEFT's
    ``dequantize_module_weight``) for a bitsandbytes 4-/8-bit layer (QLoRA), whose stored
    tensor holds packed 4-bit codes or int8 codes."""
    if param_quantization(module.weight) is not None:
        from peft.utils.integrations import dequantize_module_weight

        return dequantize_module_weight(module).detach()
    return module.weight.detach()


def _all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.SUM)
    return values


class DriftMonitor:
    """Tracks the trained layers of one model. Call :meth:`snapshot` once before training."""

    def __init__(self, model: Any, layers: list[int], mode: str):
        self.layers = list(layers)
        self.mode = mode
        layer_list = decoder_layers(model)
        self._layer_modules = {i: layer_list[i] for i in self.layers}
        self._base_sq: dict[int, float] = {}
        self._initial: dict[int, list[tuple[Any, torch.Tensor]]] = {}
        self.history: list[dict[str, Any]] = []
        self._zero3 = False

    # -- LoRA helpers -------------------------------------------------------------
    def _lora_modules(self, layer: Any) -> list[Any]:
        return [m for m in layer.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]

    def _trainable(self, layer: Any) -> list[Any]:
        return [p for p in layer.parameters() if p.requires_grad]

    def snapshot(self) -> None:
        for i, layer in self._layer_modules.items():
            params = self._trainable(layer)
            self._zero3 = self._zero3 or zero3_partitioned(params)
            if self.mode == "lora":
                sq = 0.0
                for m in self._lora_modules(layer):
                    w = m.base_layer.weight
                    with _gathered([w]):
                        sq += float(_dense_weight(m.base_layer).float().pow(2).sum())
                self._base_sq[i] = sq
            else:
                kept = []
                for p in params:
                    local = p.ds_tensor if hasattr(p, "ds_tensor") else p.data
                    kept.append((p, local.detach().float().clone()))
                self._initial[i] = kept
                local_sq = torch.tensor([sum(float(t.pow(2).sum()) for _, t in kept)], dtype=torch.float64)
                self._base_sq[i] = float(_all_reduce_sum(local_sq)[0]) if self._zero3 else float(local_sq[0])

    def weight_change(self) -> dict[int, float]:
        """Relative Frobenius change of each trained layer since :meth:`snapshot`."""
        out: dict[int, float] = {}
        for i, layer in self._layer_modules.items():
            if self.mode == "lora":
                sq = 0.0
                for m in self._lora_modules(layer):
                    for name in m.lora_A:
                        a, b = m.lora_A[name].weight, m.lora_B[name].weight
                        with _gathered([a, b]):
                            delta = (b.detach().float() @ a.detach().float()) * float(m.scaling[name])
                            sq += float(delta.pow(2).sum())
            else:
                local = torch.tensor([0.0], dtype=torch.float64)
                for p, init in self._initial[i]:
                    cur = p.ds_tensor if hasattr(p, "ds_tensor") else p.data
                    local += float((cur.detach().float() - init).pow(2).sum())
                sq = float(_all_reduce_sum(local)[0]) if self._zero3 else float(local[0])
            base = self._base_sq.get(i, 0.0)
            out[i] = math.sqrt(sq) / math.sqrt(base) if base > 0 else float("nan")
        return out

    def grad_norms(self) -> dict[int, float]:
        """L2 norm of the trained parameters' gradients per layer (after backward)."""
        out: dict[int, float] = {}
        for i, layer in self._layer_modules.items():
            sq = 0.0
            seen = False
            for p in self._trainable(layer):
                g = p.grad
                if g is None and hasattr(p, "ds_id"):
                    try:
                        from deepspeed.utils import safe_get_full_grad

                        g = safe_get_full_grad(p)
                    except Exception:  # the engine already stepped: no gradient to read
                        g = None
                if g is not None:
                    seen = True
                    sq += float(g.detach().float().pow(2).sum())
            if seen:
                out[i] = math.sqrt(sq)
        return out

    def record(self, step: int, grad_norms: dict[int, float] | None = None) -> dict[str, float]:
        """Append one history entry and return it as flat log keys."""
        change = self.weight_change()
        entry = {"step": step, "weight_change": change, "grad_norm": dict(grad_norms or {})}
        self.history.append(entry)
        logs = {f"midblock/weight_change/layer_{i:02d}": v for i, v in change.items()}
        logs.update({f"midblock/grad_norm/layer_{i:02d}": v for i, v in (grad_norms or {}).items()})
        return logs

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "mode": self.mode,
            "definition": "weight_change = ||W_t - W_0||_F / ||W_0||_F over the layer's trained matrices; "
            "grad_norm = L2 norm of the layer's trainable gradients at that step",
            "history": [
                {
                    "step": e["step"],
                    "weight_change": {str(k): v for k, v in e["weight_change"].items()},
                    "grad_norm": {str(k): v for k, v in e["grad_norm"].items()},
                }
                for e in self.history
            ],
        }
