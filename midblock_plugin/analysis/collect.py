"""The collector: forward hooks that reduce each decoder layer's output to streamed statistics.

Hidden states are taken with forward hooks on the decoder layers (the residual stream
each layer outputs) and reduced on the spot: each layer's B x T x D token states become
a mean-pooled B x D batch (fed to streaming D x D accumulators), per-sequence prompt
entropy and curvature, and the early-exit top-1 token of each position. Nothing of size
N x T x D or N x N is kept; memory grows with L * D^2, not with the number of prompts.

Where the layers, the final norm and the LM head are is asked of
:mod:`midblock_plugin.architecture`; the run that drives this collector is
:mod:`midblock_plugin.analysis.run`, the weight statistics are in
:mod:`midblock_plugin.analysis.weights`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Optional

from midblock_plugin import architecture


# --------------------------------------------------------------------------- model plumbing


def backbone_and_readout(model: Any) -> tuple[Any, Any, Any, str]:
    """``(backbone, final_norm, lm_head, layers_path)``: the module that runs the decoder
    stack (called instead of the full model so no full-vocabulary logits are built), its
    final norm (None if not found) and the output embedding (None for a bare model)."""
    path, _ = architecture.find_decoder_layers(model)
    base = architecture.unwrap(model)
    _, norm = architecture.final_norm(base)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    return architecture.backbone(base), norm, head, path


@dataclass
class Readout:
    """Early exit: the final norm and LM head applied to one layer's token states."""

    norm: Any
    head: Any
    chunk: int = 512

    def top1(self, hidden: Any, mask: Any) -> Any:
        """Top-1 token id at every unmasked position (1-D, row-major over the batch)."""
        import torch

        states = hidden[mask]
        out = []
        for part in states.split(self.chunk):
            out.append(self.head(self.norm(part)).argmax(-1))
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=hidden.device)


class _ModelStats:
    """Per-layer accumulators of one model."""

    def __init__(self, num_layers: int, dim: int, dtype: Any, device: Any) -> None:
        import torch

        from midblock_plugin.analysis.metrics import MomentStats

        self.moments = [MomentStats(dim, dtype=dtype, device=device) for _ in range(num_layers)]
        zeros = lambda: torch.zeros(num_layers, dtype=torch.float64, device=device)  # noqa: E731
        self.pe_sum, self.pe_n = zeros(), zeros()
        self.curv_sum, self.curv_n = zeros(), zeros()
        self.ee_agree, self.ee_total = zeros(), zeros()

    def add_token_metrics(self, layer: int, pe: Any, curv: Any) -> None:
        import torch

        for values, s, n in ((pe, self.pe_sum, self.pe_n), (curv, self.curv_sum, self.curv_n)):
            ok = ~torch.isnan(values)
            s[layer] += values[ok].double().sum().to(s.device)
            n[layer] += ok.sum().to(n.device)


class LayerCollector:
    """Forward hooks that reduce each decoder layer's output as it is produced.

    Use :meth:`attach` on every layer stack involved, then per batch :meth:`begin_batch`,
    one forward per model under :meth:`pass_of`, and :meth:`end_batch`.
    """

    def __init__(
        self,
        num_layers: int,
        dim: int,
        *,
        pair: bool,
        stats_dtype: Any,
        device: Any,
        readouts: dict[str, Optional[Readout]],
    ) -> None:
        import torch

        from midblock_plugin.analysis.metrics import CrossStats, MomentStats

        self.num_layers, self.dim, self.pair = num_layers, dim, pair
        self.device = device
        keys = ("base", "tuned") if pair else ("base",)
        self.stats = {k: _ModelStats(num_layers, dim, stats_dtype, device) for k in keys}
        self.cross = [CrossStats() for _ in range(num_layers)]
        self.input_moments = (
            None if pair else MomentStats(dim, dtype=stats_dtype, device=device, track_normalized=False)
        )
        self.readouts = readouts
        self.ee_cross = torch.zeros(num_layers, dtype=torch.float64, device=device)
        self.current: Optional[str] = None
        self.mask: Any = None
        self._pooled: dict[str, list] = {}
        self._preds: dict[str, list] = {}
        self._prev: Any = None
        self._handles: list = []

    # hooks ------------------------------------------------------------------
    def attach(self, layers: Any) -> None:
        """Register the hooks on a decoder ``nn.ModuleList``."""
        for idx, layer in enumerate(layers):
            self._handles.append(layer.register_forward_hook(self._make_hook(idx)))
        if not self.pair:
            self._handles.append(layers[0].register_forward_pre_hook(self._input_hook, with_kwargs=True))

    def detach(self) -> None:
        """Remove every hook."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _make_hook(self, idx: int):
        def hook(module, args, output):
            if self.current is not None:
                self.observe(idx, output[0] if isinstance(output, tuple) else output)

        return hook

    def _input_hook(self, module, args, kwargs):
        from midblock_plugin.analysis.metrics import mean_pool

        if self.current is None:
            return None
        hidden = args[0] if args else kwargs.get("hidden_states")
        pooled = mean_pool(hidden, self.mask)
        self.input_moments.update(pooled)
        self._prev = pooled
        return None

    # batch protocol ------------------------------------------------------------
    def begin_batch(self, mask: Any) -> None:
        """Start a batch with its (right-padded) attention mask, B x T."""
        self.mask = mask.bool()
        self._pooled = {k: [None] * self.num_layers for k in self.stats}
        self._preds = {k: [None] * self.num_layers for k in self.stats}

    @contextlib.contextmanager
    def pass_of(self, key: str) -> Iterator[None]:
        """Context manager: forward passes inside it are recorded as model ``key``."""
        self.current = key
        try:
            yield
        finally:
            self.current = None
        self._finish_pass(key)

    def observe(self, layer: int, hidden: Any) -> None:
        """Reduce one layer's output (B x T x D) of the current model."""
        from midblock_plugin.analysis.metrics import curvature, mean_pool, prompt_entropy

        key = self.current
        stats = self.stats[key]
        mask = self.mask.to(hidden.device)
        pooled = mean_pool(hidden, mask)
        stats.moments[layer].update(pooled)
        stats.add_token_metrics(layer, prompt_entropy(hidden, mask), curvature(hidden, mask))
        readout = self.readouts.get(key)
        if readout is not None:
            self._preds[key][layer] = readout.top1(hidden, mask)
        if self.pair:
            if key == "base":
                self._pooled["base"][layer] = pooled
            else:
                base = self._pooled["base"][layer]
                if base is None:
                    raise RuntimeError("LayerCollector: the tuned pass ran before the base pass of this batch")
                self.cross[layer].update(base, pooled, self.stats["base"].moments[layer], stats.moments[layer])
        else:
            prev_moments = self.input_moments if layer == 0 else stats.moments[layer - 1]
            self.cross[layer].update(self._prev, pooled, prev_moments, stats.moments[layer])
            self._prev = pooled

    def _finish_pass(self, key: str) -> None:
        preds = self._preds[key]
        if self.readouts.get(key) is None or preds[-1] is None:
            return
        final = preds[-1]
        stats = self.stats[key]
        for layer, p in enumerate(preds):
            stats.ee_agree[layer] += (p == final).sum().to(stats.ee_agree.device)
            stats.ee_total[layer] += final.numel()
        if key == "tuned" and self._preds.get("base") and self._preds["base"][-1] is not None:
            for layer, (pb, pt) in enumerate(zip(self._preds["base"], preds)):
                self.ee_cross[layer] += (pb == pt).sum().to(self.ee_cross.device)

    def end_batch(self) -> None:
        """Drop the batch's stored pooled states and predictions."""
        self._pooled, self._preds, self._prev, self.mask = {}, {}, None, None

    # results -------------------------------------------------------------------
    def rows(self) -> list[dict]:
        """Per-layer metric values (floats or None)."""
        from midblock_plugin.analysis.metrics import cka_from_stats, mean_shift

        def ratio(a, b, i):
            return float(a[i] / b[i]) if float(b[i]) > 0 else None

        out = []
        for i in range(self.num_layers):
            row: dict[str, Any] = {}
            if self.pair:
                b, t = self.stats["base"], self.stats["tuned"]
                row["cka"] = cka_from_stats(b.moments[i], t.moments[i], self.cross[i])
                row["cosine"] = self.cross[i].mean_cosine()
                row["mean_shift"] = mean_shift(b.moments[i], t.moments[i])
                row["early_exit_cross"] = ratio(self.ee_cross, b.ee_total, i)
            else:
                prev = self.input_moments if i == 0 else self.stats["base"].moments[i - 1]
                row["adjacent_cka"] = cka_from_stats(prev, self.stats["base"].moments[i], self.cross[i])
            for key, st in self.stats.items():
                sfx = f"_{key}" if self.pair else ""
                row[f"effective_rank{sfx}"] = st.moments[i].effective_rank(normalize=True)
                row[f"dataset_entropy{sfx}"] = st.moments[i].dataset_entropy()
                row[f"prompt_entropy{sfx}"] = ratio(st.pe_sum, st.pe_n, i)
                row[f"curvature{sfx}"] = ratio(st.curv_sum, st.curv_n, i)
                row[f"early_exit{sfx}"] = ratio(st.ee_agree, st.ee_total, i)
            out.append(row)
        return out


# --------------------------------------------------------------------------- batching


def tokenize_prompts(tokenizer: Any, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids of each text, truncated to ``max_length``; empty results are dropped."""
    enc = tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=True)
    return [ids for ids in enc["input_ids"] if len(ids) > 0]


def padded_batches(ids: list[list[int]], batch_size: int, pad_id: int) -> Iterator[tuple[Any, Any]]:
    """Right-padded (input_ids, attention_mask) batches of length-sorted sequences."""
    import torch

    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for start in range(0, len(order), batch_size):
        chunk = [ids[i] for i in order[start : start + batch_size]]
        width = max(len(x) for x in chunk)
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, x in enumerate(chunk):
            input_ids[r, : len(x)] = torch.tensor(x, dtype=torch.long)
            mask[r, : len(x)] = 1
        yield input_ids, mask


# --------------------------------------------------------------------------- own change


class OwnChange:
    """Each layer's *own* change: the base and the tuned layer run on the same base input.

    During the base pass (inside :meth:`capture`) a forward hook keeps each base layer's
    input (args and kwargs) and output; :meth:`measure` then runs the tuned layer ``l`` on
    that same input, so change passed up from the layers below cannot enter. With ``h`` the
    input, ``y = h + f(h)`` the output (residual stream) and masked tokens only::

        own_change[l] = sqrt(sum ||y_tuned - y_base||^2 / sum ||y_base - h||^2)
                      = ||f_tuned(h) - f_base(h)|| / ||f_base(h)||

    i.e. the relative change of the layer's own residual update. For a PEFT adapter the
    "tuned layer" is the same module with the adapter enabled (the base pass runs with it
    disabled). The stored inputs cost one batch of L x B x T x D activations.
    """

    def __init__(self, num_layers: int) -> None:
        self.num_layers = num_layers
        self.sq_diff = [0.0] * num_layers
        self.sq_update = [0.0] * num_layers
        self.capturing = False
        self._saved: dict[int, tuple] = {}
        self._handles: list = []

    def attach(self, base_layers: Any) -> None:
        """Hook every base decoder layer."""
        for idx, layer in enumerate(base_layers):
            self._handles.append(layer.register_forward_hook(self._make_hook(idx), with_kwargs=True))

    def detach(self) -> None:
        """Remove the hooks and drop stored inputs."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._saved.clear()

    def _make_hook(self, idx: int):
        def hook(module, args, kwargs, output):
            if self.capturing:
                self._saved[idx] = (args, dict(kwargs), output[0] if isinstance(output, tuple) else output)

        return hook

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        """Context manager around the base pass: keep each layer's input and output."""
        self.capturing = True
        try:
            yield
        finally:
            self.capturing = False

    def measure(self, tuned_layers: Any, mask: Any) -> None:
        """Run each tuned layer on its stored base input; accumulate the sums; drop the inputs."""
        try:
            for idx in sorted(self._saved):
                args, kwargs, out_b = self._saved[idx]
                hidden = args[0] if args else kwargs["hidden_states"]
                out_t = tuned_layers[idx](*args, **kwargs)
                out_t = out_t[0] if isinstance(out_t, tuple) else out_t
                m = mask.to(out_b.device).bool()
                diff = (out_t.float() - out_b.float())[m]
                update = (out_b.float() - hidden.float())[m]
                self.sq_diff[idx] += float(diff.double().pow(2).sum())
                self.sq_update[idx] += float(update.double().pow(2).sum())
        finally:
            self._saved.clear()

    def values(self) -> list[Optional[float]]:
        """``own_change`` per layer (0 where nothing changed; None where the base layer's update
        is exactly zero but the tuned one is not)."""
        import math

        return [math.sqrt(d / u) if u > 0 else (0.0 if d == 0 else None) for d, u in zip(self.sq_diff, self.sq_update)]
