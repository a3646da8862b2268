"""Every touch of a private or version-dependent API of transformers, DeepSpeed, accelerate or lm-eval.

Each function says what it reaches into, why no public API serves, and the versions it
was verified on; ``tests/test_compat.py`` exercises each one against the installed
libraries, so an upgrade that breaks one fails there, not silently in a training run.
Nothing else in the package touches these internals.

Verified on: transformers 5.16.1 (Axolotl 0.19 environment) and 5.24; DeepSpeed 0.18.9
and 0.19.8; accelerate 1.13 and 1.15; PEFT 0.20 and 0.21.2; lm-eval 0.4.
"""

from __future__ import annotations

import logging
from typing import Any, Callable


logger = logging.getLogger("midblock_plugin")

#: Names of the forward-hook functions that ``enable_input_require_grads`` (transformers)
#: and PEFT's gradient-checkpointing preparation register on the input embeddings.
INPUT_GRAD_HOOK_NAMES = frozenset({"make_inputs_require_grads", "make_inputs_require_grad"})


# --------------------------------------------------------------------------- transformers


def causal_lm_class(config: Any) -> Any:
    """The ``AutoModelForCausalLM`` class registered for ``config``'s type, or ``None``
    (custom-code models, which only ``from_config`` knows).

    Private: ``AutoModelForCausalLM._model_mapping``. Public ``from_config`` would do, but
    under an active ZeRO-3 config it partitions the model it builds; constructing the
    class directly keeps a shape-only meta copy whole.
    """
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM._model_mapping[type(config)]
    except KeyError:
        return None


def checkpointing_on(args: Any) -> bool:
    """Whether the training arguments enable gradient checkpointing (transformers 5.24
    renamed ``gradient_checkpointing`` to ``activation_checkpointing``)."""
    return bool(getattr(args, "activation_checkpointing", None) or getattr(args, "gradient_checkpointing", None))


def is_reentrant(args: Any, model: Any = None) -> bool:
    """Whether gradient checkpointing runs reentrant.

    With ``model`` (checkpointing already enabled, e.g. in ``on_train_begin``) the answer is
    read from what runs: the ``use_reentrant`` keyword bound into the layers' checkpoint
    function (:func:`model_checkpointing_reentrant`). The training arguments can disagree
    with it: transformers 5.24 enables checkpointing from ``activation_checkpointing_kwargs``,
    while TRL writes its PEFT + ZeRO-3 ``use_reentrant=True`` into the deprecated
    ``gradient_checkpointing_kwargs``, which is a separate dict when the user gave none.
    Without ``model`` (or when the function is not a ``functools.partial``), the arguments
    decide, the name the installed transformers reads first.
    """
    if model is not None:
        found = model_checkpointing_reentrant(model)
        if found is not None:
            return found
    kwargs = getattr(args, "activation_checkpointing_kwargs", None)
    if kwargs is None:
        kwargs = getattr(args, "gradient_checkpointing_kwargs", None)
    return bool((kwargs or {}).get("use_reentrant", False))


def model_checkpointing_reentrant(model: Any) -> bool | None:
    """The ``use_reentrant`` that ``model``'s checkpointed layers run with, or ``None`` when
    checkpointing is off or the function does not say (a wrapper that is not a partial).

    Private: ``GradientCheckpointingLayer._gradient_checkpointing_func``, a
    ``functools.partial(torch.utils.checkpoint.checkpoint, **kwargs)`` in transformers 5.16
    and 5.24; no public API reports the mode in force.
    """
    import functools

    for module in model.modules():
        func = getattr(module, "_gradient_checkpointing_func", None)
        if func is None or not getattr(module, "gradient_checkpointing", False):
            continue
        while hasattr(func, "__wrapped__") and not isinstance(func, functools.partial):
            func = func.__wrapped__
        if isinstance(func, functools.partial) and "use_reentrant" in (func.keywords or {}):
            return bool(func.keywords["use_reentrant"])
        return None
    return None


def remove_input_grad_hooks(model: Any) -> int:
    """Undo every ``enable_input_require_grads()`` on ``model``; return how many forward
    hooks were removed.

    Public part: ``disable_input_require_grads()``. Private part: transformers' and TRL's
    calls each register a hook, and the second call replaces ``_require_grads_hooks``
    without removing the first, so one hook is orphaned where no API reaches it; it is
    removed from ``module._forward_hooks`` by its function's name.
    """
    from transformers import PreTrainedModel

    for module in model.modules():
        if isinstance(module, PreTrainedModel) and getattr(module, "_require_grads_hooks", None):
            module.disable_input_require_grads()
    removed = 0
    for module in model.modules():
        for key, fn in list(module._forward_hooks.items()):
            if getattr(fn, "__name__", "") in INPUT_GRAD_HOOK_NAMES:
                del module._forward_hooks[key]
                removed += 1
    return removed


def has_input_grad_hooks(model: Any) -> bool:
    """Whether any ``enable_input_require_grads`` hook is still registered on ``model``."""
    return any(
        getattr(fn, "__name__", "") in INPUT_GRAD_HOOK_NAMES
        for module in model.modules()
        for fn in module._forward_hooks.values()
    )


def wrap_checkpoint_function(layer: Any, wrapper: Callable[[Callable], Callable]) -> Callable[[], None] | None:
    """Wrap the gradient-checkpointing function of one decoder layer; return an undo
    function, or ``None`` if the layer has none (checkpointing off).

    Private: ``GradientCheckpointingLayer._gradient_checkpointing_func``. It is where the
    hidden states enter the checkpoint, whether transformers checkpoints ``forward``
    (5.24) or ``__call__`` (5.16, where a forward pre-hook would run inside the
    checkpoint with gradients off); there is no public hook at that point.
    """
    original = getattr(layer, "_gradient_checkpointing_func", None)
    if original is None:
        return None
    layer._gradient_checkpointing_func = wrapper(original)

    def undo() -> None:
        layer._gradient_checkpointing_func = original

    return undo


def move_callback_to_front(trainer: Any, callback: Any) -> bool:
    """Make ``callback`` the first of ``trainer``'s callbacks; ``False`` if it is not there.

    Private: the order of ``trainer.callback_handler.callbacks``. Reporters (W&B,
    TensorBoard) are default callbacks placed before user callbacks, so metrics a user
    callback adds to ``logs`` in ``on_log`` would never reach them; transformers has no
    API to order callbacks.
    """
    callbacks = getattr(getattr(trainer, "callback_handler", None), "callbacks", None)
    if not isinstance(callbacks, list) or callback not in callbacks:
        return False
    callbacks.remove(callback)
    callbacks.insert(0, callback)
    return True


# --------------------------------------------------------------------------- DeepSpeed

#: The first DeepSpeed release whose ZeRO-3 keeps frozen parameters whole during a non-reentrant
#: checkpoint recompute (deepspeedai/DeepSpeed PR 8148, transformers issue 47254). Before it,
#: PEFT / frozen layers + ZeRO-3 + non-reentrant checkpointing fail on the first backward with
#: "CheckpointError: Recomputed values ... saved shape [64] vs recomputed shape [0]".
ZERO3_NONREENTRANT_MIN = (0, 19, 3)


def deepspeed_version() -> tuple[int, ...] | None:
    """The installed DeepSpeed version as a tuple, or ``None`` when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        text = version("deepspeed")
    except PackageNotFoundError:
        return None
    parts = []
    for piece in text.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def zero3_nonreentrant_ok(version: tuple[int, ...] | None = None) -> bool:
    """Whether non-reentrant checkpointing works with frozen parameters under ZeRO-3 on this DeepSpeed."""
    version = deepspeed_version() if version is None else version
    return version is not None and tuple(version) >= ZERO3_NONREENTRANT_MIN


def checkpointing_mode(
    zero3: bool, requested: bool | None, version: tuple[int, ...] | None = None
) -> tuple[bool, str]:
    """``(use_reentrant, reason)`` for gradient checkpointing of a run with frozen parameters.

    ``requested`` is the user's ``use_reentrant`` (``None``: not set). Non-reentrant is the
    default (backward truncation then needs no marker at the window's entry); under ZeRO-3 on
    a DeepSpeed older than :data:`ZERO3_NONREENTRANT_MIN` it crashes, so the default becomes
    reentrant there, and an explicit non-reentrant request is refused before any work.
    """
    version = deepspeed_version() if version is None else version
    shown = ".".join(map(str, version)) if version else "not installed"
    need = ".".join(map(str, ZERO3_NONREENTRANT_MIN))
    broken = zero3 and not zero3_nonreentrant_ok(version)
    if requested is None:
        if broken:
            return True, (
                f"reentrant: DeepSpeed {shown} < {need} cannot recompute frozen parameters under ZeRO-3 "
                "with non-reentrant checkpointing"
            )
        return False, "non-reentrant (the default)"
    if requested is False and broken:
        raise ValueError(
            f"use_reentrant: false with DeepSpeed ZeRO-3 needs deepspeed>={need} (installed: {shown}); it fails on "
            "the first backward with 'CheckpointError: Recomputed values ... different metadata'. Upgrade DeepSpeed "
            "(pip install 'deepspeed>=" + need + "'), or set use_reentrant: true, or leave it unset."
        )
    return bool(requested), "as configured"


def zero3_partitioned(params: Any) -> bool:
    """Whether any of ``params`` is a ZeRO-3 partitioned parameter (``ds_id`` is set)."""
    return any(hasattr(p, "ds_id") for p in params)


def zero3_parameter_offload(model: Any, engine: Any = None) -> Any:
    """DeepSpeed's ZeRO-3 parameter-offload object for ``model`` (it owns the parameter
    coordinator), or ``None``.

    Public route: ``engine.optimizer.parameter_offload``. Without the engine (an
    evaluation handed only the module), the object is found in the closure of the forward
    pre-hook DeepSpeed registers on the top module: private, and checked by duck typing.
    """
    optimizer = getattr(engine, "optimizer", None)
    offload = getattr(optimizer, "parameter_offload", None)
    if offload is not None:
        return offload
    for hook in list(getattr(model, "_forward_pre_hooks", {}).values()):
        for cell in getattr(hook, "__closure__", None) or ():
            try:
                obj = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if hasattr(obj, "get_param_coordinator") and hasattr(obj, "empty_partition_cache"):
                return obj
    return None


def release_partitioned_parameters(model: Any, engine: Any = None) -> bool:
    """Return a ZeRO-3 model to its training state after inference.

    Forwards outside the training step (``generate`` on the module) leave DeepSpeed's
    parameter coordinator with an inference-only trace, which breaks the next backward
    ("size of tensor a (0) must match ..."), and leave parameters gathered. As TRL does
    after generation, the trace is invalidated (private ``_invalidate_trace``; re-recorded
    on the next training step) and all parameters are re-partitioned. Returns ``False``
    if the offload object was not found: parameters are then re-partitioned one by one
    (private ``ds_active_sub_modules``) and the trace is left as is.
    """
    offload = zero3_parameter_offload(model, engine)
    if offload is not None:
        coordinator = offload.get_param_coordinator()
        if hasattr(coordinator, "is_invalid_trace") and not coordinator.is_invalid_trace():
            coordinator._invalidate_trace()
        offload.empty_partition_cache()
        return True
    logger.warning(
        "ZeRO-3: DeepSpeed's parameter coordinator was not found; re-partitioning parameters one by one. "
        "Bind the EvalCallback to its trainer (EvalCallback(settings, trainer=trainer)) to release them through the engine."
    )
    params = getattr(model, "parameters", None)
    for param in params() if callable(params) else ():
        status = getattr(param, "ds_status", None)
        if status is not None and status.name == "AVAILABLE" and not getattr(param, "ds_persist", False):
            param.ds_active_sub_modules.clear()  # no forward is running any more
            param.partition()
    return False


# --------------------------------------------------------------------------- lm-eval


def lm_eval_collator() -> Any:
    """lm-eval's ``Collator`` (``lm_eval.models.utils``, internal): the batching ``HFLM.generate_until``
    uses, so a data-parallel split reproduces its batches exactly (no public API exposes them).
    Verified on lm-eval 0.4."""
    from lm_eval.models.utils import Collator

    return Collator


def parse_lm_eval_args(text: str) -> dict[str, Any]:
    """``"k=v,k=v"`` typed as lm-eval's ``--model_args`` parser types it (``lm_eval.utils.simple_parse_args_string``,
    internal: no public parser). Verified on lm-eval 0.4."""
    from lm_eval.utils import simple_parse_args_string

    return simple_parse_args_string(text)


def count_generate_calls(hflm_class: Any) -> Any:
    """A subclass of lm-eval's ``HFLM`` that counts its ``generate`` calls in ``generate_calls``
    (overrides the private ``HFLM._model_generate``, the one method every generation goes through).
    Verified on lm-eval 0.4."""

    class Counting(hflm_class):
        generate_calls = 0

        def _model_generate(self, *args: Any, **kwargs: Any) -> Any:
            self.generate_calls += 1
            return super()._model_generate(*args, **kwargs)

    Counting.__name__ = Counting.__qualname__ = f"Counting{hflm_class.__name__}"
    return Counting
