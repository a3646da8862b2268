"""A cheap per-layer signal *before* training: the gradient probe (``midblock analyze --probe``).

A few calibration batches go forward and backward through the base model (next-token loss
on the prompts, no optimiser step, no weight is changed). Each decoder layer is scored by the
relative size of the gradient on its projection weights (the matrices LoRA would adapt:
the attention and MLP linears of :func:`midblock_plugin.architecture.projection_group`)::

    score[l] = sqrt(mean over batches of sum_W ||dLoss/dW||_F^2) / sqrt(sum_W ||W||_F^2)

The numerator is the square root of the trace of the layer's empirical (batch-level)
diagonal Fisher, as in FIM-LoRA-style layer selection; dividing by the weight norm makes it
the relative size of the update a plain gradient step would make, the pre-training
counterpart of the ``weight`` own-change signal. The same window search as the two-model
analysis (:func:`midblock_plugin.analysis.recommend.recommend_window`) turns the scores into
a window, so the two can be compared.

>>> from midblock_plugin.analysis import gradient_probe  # doctest: +SKIP
>>> probe = gradient_probe(model, tokenizer, ["Question: 2+2?\\nAnswer: 4"] * 8, num_batches=2)  # doctest: +SKIP
>>> probe.recommendation.window  # doctest: +SKIP
'6-11'
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from midblock_plugin import architecture
from midblock_plugin.analysis.recommend import MIN_OBJECTIVE, Recommendation, recommend_window


#: Score name recorded in the JSON.
PROBE_SIGNAL = "gradient_probe"


@dataclass
class ProbeResult:
    """Per-layer gradient-probe scores and the window the search picks from them.

    Attributes:
        signal: the per-layer score (relative gradient norm), one per decoder layer.
        grad_norm: sqrt(mean over batches of the layer's squared gradient norm).
        weight_norm: the Frobenius norm of the layer's projection weights.
        recommendation: the window :func:`recommend_window` picks from ``signal``.
        num_batches: calibration batches used.
        sequences: calibration sequences used.
        tokens: predicted tokens the loss was taken over.
        seconds: wall time of the probe.
    """

    signal: list[float]
    grad_norm: list[float]
    weight_norm: list[float]
    recommendation: Recommendation
    num_batches: int
    sequences: int
    tokens: int
    seconds: float

    def to_dict(self) -> dict:
        """The JSON ``probe`` object: the scores, the window, and how it was measured."""
        rec = self.recommendation
        return {
            "signal_name": PROBE_SIGNAL,
            "signal": self.signal,
            "grad_norm": self.grad_norm,
            "weight_norm": self.weight_norm,
            "layers": rec.layers,
            "window": rec.window,
            "segments": rec.segments,
            "nearest_mask": rec.nearest_mask,
            "captured_share": rec.captured_share,
            "objective": rec.objective,
            "fallback": rec.fallback,
            "num_batches": self.num_batches,
            "sequences": self.sequences,
            "tokens": self.tokens,
            "seconds": round(self.seconds, 3),
        }


def _is_adapter_part(name: str) -> bool:
    return any(part.startswith("lora_") or part in ("lora_A", "lora_B") for part in name.split("."))


def layer_projection_weights(layer: Any) -> list[Any]:
    """The attention / MLP projection weight matrices of one decoder layer (PEFT adapter
    matrices excluded: under a LoRA wrapper the base ``base_layer`` weight is taken)."""
    out = []
    for name, module in layer.named_modules():
        if not name or _is_adapter_part(name) or not architecture.is_linear(module):
            continue
        if architecture.projection_group(name) in ("attn", "mlp"):
            out.append(module.weight)
    return out


def gradient_probe(
    model: Any,
    tokenizer: Any,
    rows: Sequence[Any],
    *,
    num_batches: int = 4,
    batch_size: int = 4,
    max_length: int = 128,
    device: Optional[Any] = None,
    min_objective: float = MIN_OBJECTIVE,
) -> ProbeResult:
    """Score every decoder layer of ``model`` by a few calibration backward passes.

    ``rows`` are prompt texts (or chat ``messages`` rows, rendered with the tokenizer's chat
    template); the first ``num_batches * batch_size`` are used. Nothing is trained: gradients
    are taken with :func:`torch.autograd.grad`, no ``.grad`` is left behind, and the
    ``requires_grad`` flags and train/eval mode of the model are restored. A PEFT model is
    probed as it stands: disable its adapter first to probe the base.
    """
    import torch

    from midblock_plugin.analysis.collect import padded_batches, tokenize_prompts
    from midblock_plugin.analysis.prompts import render_prompts

    for name, value, low in (
        ("num_batches", num_batches, 1),
        ("batch_size", batch_size, 1),
        ("max_length", max_length, 2),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"gradient_probe: {name}={value!r}: need an integer >= {low}.")
    t0 = time.perf_counter()
    _, layers = architecture.find_decoder_layers(model)
    weights = [layer_projection_weights(layer) for layer in layers]
    empty = [i for i, w in enumerate(weights) if not w]
    if empty:
        raise ValueError(
            f"gradient_probe: decoder layer(s) {empty} have no attention / MLP projection weights to score; "
            "the probe needs a decoder whose layers hold linear projections."
        )
    if device is None:
        device = next(model.parameters()).device
    texts = render_prompts(list(rows)[: num_batches * batch_size], tokenizer)
    ids = [x for x in tokenize_prompts(tokenizer, texts, max_length) if len(x) >= 2]
    if not ids:
        raise ValueError("gradient_probe: no calibration prompt has 2 or more tokens; give longer prompts.")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("gradient_probe: the tokenizer has neither a pad nor an eos token; set one.")

    flat = [w for ws in weights for w in ws]
    flags = [w.requires_grad for w in flat]
    was_training = model.training
    sq_grad = [0.0] * len(layers)
    used = tokens = sequences = 0
    try:
        model.eval()
        for w in flat:
            w.requires_grad_(True)
        with torch.enable_grad():
            for input_ids, mask in padded_batches(ids, batch_size, pad_id):
                input_ids, mask = input_ids.to(device), mask.to(device)
                labels = input_ids.masked_fill(mask == 0, -100)
                out = model(input_ids=input_ids, attention_mask=mask, labels=labels, use_cache=False)
                loss = out.loss
                if loss is None or not torch.isfinite(loss):
                    continue
                grads = torch.autograd.grad(loss, flat, allow_unused=True)
                k = 0
                for li, ws in enumerate(weights):
                    for _ in ws:
                        g = grads[k]
                        k += 1
                        if g is not None:
                            sq_grad[li] += float(g.detach().float().pow(2).sum())
                used += 1
                sequences += int(input_ids.shape[0])
                tokens += int(mask[:, 1:].sum())
    finally:
        for w, f in zip(flat, flags):
            w.requires_grad_(f)
        model.train(was_training)
    if used == 0:
        raise ValueError(
            "gradient_probe: every calibration batch gave an undefined loss; check the prompts and model."
        )
    with torch.no_grad():
        w_norm = [math.sqrt(sum(float(w.detach().float().pow(2).sum()) for w in ws)) for ws in weights]
    g_norm = [math.sqrt(s / used) for s in sq_grad]
    signal = [g / w if w > 0 else 0.0 for g, w in zip(g_norm, w_norm)]
    rec = recommend_window(signal, signal_name=PROBE_SIGNAL, min_objective=min_objective)
    return ProbeResult(
        signal=signal,
        grad_norm=g_norm,
        weight_norm=w_norm,
        recommendation=rec,
        num_batches=used,
        sequences=sequences,
        tokens=tokens,
        seconds=time.perf_counter() - t0,
    )
