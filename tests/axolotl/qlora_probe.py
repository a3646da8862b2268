"""A test-only Axolotl plugin for the QLoRA tests (tests/axolotl/test_qlora.py), listed after
``MidBlockPlugin``: it appends to ``$MIDBLOCK_QLORA_LOG`` (JSON Lines) what the quantized model
looks like after the plugin prepared it, and, during training, whether the hidden states that
enter the decoder stack require grad. They do when an ``enable_input_require_grads`` hook is
left (from ``prepare_model_for_kbit_training``, Axolotl or the Trainer); then every layer below
the window runs a backward. A tensor hook on the output of the first decoder layer below the
window also records whether any gradient reached it."""

from __future__ import annotations

import json
import os

from axolotl.integrations.base import BasePlugin


def _record(hook: str, **info) -> None:
    path = os.environ.get("MIDBLOCK_QLORA_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"hook": hook, **info}) + "\n")


class QloraProbePlugin(BasePlugin):
    def __init__(self) -> None:
        super().__init__()
        self.entering_requires_grad: list[bool] = []
        self.below_window_grads = 0

    def post_model_build(self, cfg, model):
        from midblock_plugin.compat import has_input_grad_hooks

        layer = model.model.layers[0]
        _record(
            "post_model_build",
            q_proj=type(layer.self_attn.q_proj).__name__,
            weight=type(layer.self_attn.q_proj.weight).__name__,
            input_grad_hooks=has_input_grad_hooks(model),
        )

    def post_trainer_create(self, cfg, trainer):
        from midblock_plugin.architecture import decoder_layers

        layers = decoder_layers(trainer.model)

        def entering(module, args, kwargs):
            hs = args[0] if args else kwargs.get("hidden_states")
            if module.training and hs is not None:
                self.entering_requires_grad.append(bool(hs.requires_grad))

        def below(module, args, output):
            out = output[0] if isinstance(output, tuple) else output
            if out.requires_grad:
                out.register_hook(self._count_grad)

        layers[0].register_forward_pre_hook(entering, with_kwargs=True)
        layers[0].register_forward_hook(below)  # layer 0 lies below the window (layers 1-3)

    def _count_grad(self, grad):
        self.below_window_grads += 1

    def post_train(self, cfg, model):
        from midblock_plugin.compat import has_input_grad_hooks

        _record(
            "post_train",
            entering_requires_grad=self.entering_requires_grad,
            below_window_grads=self.below_window_grads,
            input_grad_hooks=has_input_grad_hooks(model),
        )
