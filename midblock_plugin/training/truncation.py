"""Backward truncation: no backward work below the window's first layer.

Without gradient checkpointing autograd already stops where nothing below requires
grad. With checkpointing, transformers (``activation_checkpointing_enable``) and TRL
(for PEFT models) register ``enable_input_require_grads()``: a forward hook on the input
embeddings that makes their output require grad, which drags the backward through
every layer. :class:`BackwardTruncation` removes those hooks. Reentrant checkpointing
needs *some* input of each checkpointed layer to require grad, so in that case a
wrapper around the window's first layer's checkpoint function marks the hidden states
entering it (detached: nothing below is trainable, so no gradient is lost).

Gradients of the trained parameters are unchanged; ``tests/test_truncation.py``
compares them with the untruncated run.
"""

from __future__ import annotations

from typing import Any

import torch

from midblock_plugin.architecture import decoder_layers
from midblock_plugin.compat import checkpointing_on, is_reentrant, remove_input_grad_hooks, wrap_checkpoint_function


__all__ = ["BackwardTruncation", "checkpointing_on", "is_reentrant"]


class BackwardTruncation:
    """Undo ``enable_input_require_grads`` and, if needed, start the graph at ``first_layer``."""

    def __init__(self, first_layer: int, reentrant: bool):
        self.first_layer = first_layer
        self.reentrant = reentrant
        self.handle = None
        self._undo = None
        self.removed_input_hooks = 0

    def applicable(self, model: Any) -> bool:
        """Truncation only helps if the window starts above layer 0 and no parameter
        below the window (e.g. embeddings) is trainable."""
        if self.first_layer <= 0:
            return False
        for layer in list(decoder_layers(model))[: self.first_layer]:
            if any(p.requires_grad for p in layer.parameters()):
                return False
        base_emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        if base_emb is not None and any(p.requires_grad for p in base_emb.parameters()):
            return False
        return True

    def install(self, model: Any) -> bool:
        if not self.applicable(model):
            return False
        self.removed_input_hooks = remove_input_grad_hooks(model)
        if self.reentrant:
            layer = decoder_layers(model)[self.first_layer]

            def marking(original):
                # mark the hidden states entering the window (detached: nothing below trains)
                def marked(function, *args, **kwargs):
                    if args and _needs_mark(args[0]):
                        args = (args[0].detach().requires_grad_(True), *args[1:])
                    return original(function, *args, **kwargs)

                marked.__wrapped__ = original  # compat.model_checkpointing_reentrant reads the mode through it
                return marked

            self._undo = wrap_checkpoint_function(layer, marking)
            if self._undo is None:
                self.handle = layer.register_forward_pre_hook(_mark_hidden_states, with_kwargs=True)
        return True

    def remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        if self._undo is not None:
            self._undo()
            self._undo = None


def _needs_mark(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.is_floating_point() and not x.requires_grad and torch.is_grad_enabled()


def _mark_hidden_states(module: Any, args: tuple, kwargs: dict):
    if not torch.is_grad_enabled():
        return None
    if args and _needs_mark(args[0]):
        return (args[0].detach().requires_grad_(True), *args[1:]), kwargs
    hs = kwargs.get("hidden_states")
    if isinstance(hs, torch.Tensor) and hs.is_floating_point() and not hs.requires_grad:
        kwargs = dict(kwargs, hidden_states=hs.detach().requires_grad_(True))
        return args, kwargs
    return None
