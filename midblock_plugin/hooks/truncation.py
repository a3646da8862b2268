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

from midblock_plugin.window import find_decoder_layers


#: Names of the forward-hook functions that ``enable_input_require_grads`` (transformers)
#: and PEFT's gradient-checkpointing preparation register on the input embeddings.
_INPUT_GRAD_HOOK_NAMES = frozenset({"make_inputs_require_grads", "make_inputs_require_grad"})


def _pretrained_modules(model: Any) -> list[Any]:
    from transformers import PreTrainedModel

    return [m for m in model.modules() if isinstance(m, PreTrainedModel)]


class BackwardTruncation:
    """Undo ``enable_input_require_grads`` and, if needed, start the graph at ``first_layer``."""

    def __init__(self, first_layer: int, reentrant: bool):
        self.first_layer = first_layer
        self.reentrant = reentrant
        self.handle = None
        self._wrapped = None
        self.removed_input_hooks = 0

    def applicable(self, model: Any) -> bool:
        """Truncation only helps if the window starts above layer 0 and no parameter
        below the window (e.g. embeddings) is trainable."""
        if self.first_layer <= 0:
            return False
        path, layers = find_decoder_layers(model)
        for layer in list(layers)[: self.first_layer]:
            if any(p.requires_grad for p in layer.parameters()):
                return False
        base_emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        if base_emb is not None and any(p.requires_grad for p in base_emb.parameters()):
            return False
        return True

    def install(self, model: Any) -> bool:
        if not self.applicable(model):
            return False
        for module in _pretrained_modules(model):
            if getattr(module, "_require_grads_hooks", None):
                module.disable_input_require_grads()
        # enable_input_require_grads() replaces its hook list without removing the old hooks, so
        # after Trainer + TRL both call it one hook is orphaned; no API can reach it, so we remove
        # the forward hooks whose function is that helper (transformers' or PEFT's) by name.
        for module in model.modules():
            for key, fn in list(module._forward_hooks.items()):
                if getattr(fn, "__name__", "") in _INPUT_GRAD_HOOK_NAMES:
                    del module._forward_hooks[key]
                    self.removed_input_hooks += 1
        if self.reentrant:
            _, layers = find_decoder_layers(model)
            layer = layers[self.first_layer]
            original = getattr(layer, "_gradient_checkpointing_func", None)
            if original is not None:
                # Wrap the layer's checkpoint function: it runs where the hidden states enter the
                # checkpoint whether transformers checkpoints `forward` (5.24) or `__call__` (5.16,
                # where a forward pre-hook would run inside the checkpoint with gradients off).
                def marked(function, *args, **kwargs):
                    if args and _needs_mark(args[0]):
                        args = (args[0].detach().requires_grad_(True), *args[1:])
                    return original(function, *args, **kwargs)

                layer._gradient_checkpointing_func = marked
                self._wrapped = (layer, original)
            else:
                self.handle = layer.register_forward_pre_hook(_mark_hidden_states, with_kwargs=True)
        return True

    def remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        if self._wrapped is not None:
            layer, original = self._wrapped
            layer._gradient_checkpointing_func = original
            self._wrapped = None


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


def is_reentrant(args: Any, model: Any = None) -> bool:
    """Whether the Trainer's checkpointing is reentrant (transformers 5 defaults to non-reentrant)."""
    kwargs = getattr(args, "activation_checkpointing_kwargs", None)
    if kwargs is None:
        kwargs = getattr(args, "gradient_checkpointing_kwargs", None)
    return bool((kwargs or {}).get("use_reentrant", False))


def checkpointing_on(args: Any) -> bool:
    return bool(getattr(args, "activation_checkpointing", None) or getattr(args, "gradient_checkpointing", None))
