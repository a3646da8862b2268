"""Weight statistics per decoder layer: relative weight change (two models, or a PEFT
adapter against its base) and Spectrum-style spectral SNR (one model).

Parameters are put into the attention / MLP groups by
:func:`midblock_plugin.architecture.projection_group`.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from midblock_plugin.architecture import projection_group


def _change_row(sq_delta: dict, sq_base: dict) -> dict:
    from midblock_plugin.analysis.metrics import relative_change

    total_d = sum(sq_delta.values())
    total_b = sum(sq_base.values())
    return {
        "weight_change_attn": relative_change(sq_delta.get("attn", 0.0), sq_base.get("attn", 0.0)),
        "weight_change_mlp": relative_change(sq_delta.get("mlp", 0.0), sq_base.get("mlp", 0.0)),
        "weight_change": relative_change(total_d, total_b),
    }


def weight_change_models(base_layers: Any, tuned_layers: Any) -> list[dict]:
    """Relative weight change per layer between two full models (attention, MLP, all)."""
    rows = []
    for i, (lb, lt) in enumerate(zip(base_layers, tuned_layers)):
        tuned = dict(lt.named_parameters())
        sq_delta: dict[str, float] = {}
        sq_base: dict[str, float] = {}
        for name, pb in lb.named_parameters():
            pt = tuned.get(name)
            if pt is None or pt.shape != pb.shape:
                raise ValueError(
                    f"layer {i} parameter {name!r} differs in name or shape between BASE and TUNED; "
                    "give two checkpoints of the same architecture."
                )
            g = projection_group(name)
            wb = pb.detach().float()
            sq_delta[g] = sq_delta.get(g, 0.0) + float((pt.detach().float().to(wb.device) - wb).pow(2).sum())
            sq_base[g] = sq_base.get(g, 0.0) + float(wb.pow(2).sum())
        rows.append(_change_row(sq_delta, sq_base))
    return rows


def weight_change_adapter(peft_layers: Any) -> list[dict]:
    """Relative weight change per layer of BASE + adapter vs BASE, from each tuner module's
    ``get_delta_weight`` (no merged copy of the model is made)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    rows = []
    unsupported: set[str] = set()
    for layer in peft_layers:
        tuners = {n: m for n, m in layer.named_modules() if isinstance(m, BaseTunerLayer)}
        sq_delta: dict[str, float] = {}
        sq_base: dict[str, float] = {}
        for name, p in layer.named_parameters():
            owner = next((t for t in tuners if name.startswith(t + ".")), None)
            if owner is not None and not name[len(owner) + 1 :].startswith("base_layer."):
                continue  # an adapter parameter, not a base weight
            g = projection_group(owner if owner is not None else name)
            sq_base[g] = sq_base.get(g, 0.0) + float(p.detach().float().pow(2).sum())
        broken = False
        for name, mod in tuners.items():
            base_w = mod.get_base_layer().weight
            for adapter in mod.active_adapters:
                try:
                    delta = mod.get_delta_weight(adapter)
                except (KeyError, ValueError):
                    continue  # this module does not hold that adapter
                except (AttributeError, NotImplementedError):
                    unsupported.add(type(mod).__name__)
                    broken = True
                    continue
                if delta.shape != base_w.shape and delta.T.shape == base_w.shape:
                    delta = delta.T
                g = projection_group(name)
                sq_delta[g] = sq_delta.get(g, 0.0) + float(delta.detach().float().pow(2).sum())
        row = _change_row(sq_delta, sq_base)
        if broken:
            row = dict.fromkeys(row)
        rows.append(row)
    if unsupported:
        print(
            f"midblock analyze: warning: cannot compute weight deltas of {', '.join(sorted(unsupported))} "
            "(no get_delta_weight); weight change is left empty for those layers.",
            file=sys.stderr,
        )
    return rows


def weight_snr(layers: Any, progress: bool = False) -> list[dict]:
    """Mean Spectrum-style spectral SNR of the attention and MLP matrices of each layer."""
    from tqdm.auto import tqdm

    from midblock_plugin.analysis.metrics import spectral_snr

    rows = []
    for layer in tqdm(layers, desc="weight SNR", unit="layer", disable=not progress, file=sys.stderr):
        groups: dict[str, list[float]] = {"attn": [], "mlp": []}
        for name, p in layer.named_parameters():
            g = projection_group(name)
            if p.ndim == 2 and g in groups:
                v = spectral_snr(p)
                if math.isfinite(v):
                    groups[g].append(v)
        rows.append({f"snr_{g}": (sum(v) / len(v) if v else None) for g, v in groups.items()})
    return rows
