"""Every private or version-dependent touch in ``midblock_plugin.compat``, against the
installed transformers / PEFT / DeepSpeed: an upgrade that breaks one fails here.

The ZeRO-3 release path with a real engine is exercised end to end by the ZeRO-3
evaluation tests (``tests/test_evaluation_distributed.py``, 2 gloo processes).
"""

import logging

import pytest
import torch

from midblock_plugin import compat
from midblock_plugin.testing import tiny_config, tiny_model, tiny_tokenizer


def test_causal_lm_class_is_the_registered_class_and_builds_no_weights():
    from transformers import LlamaForCausalLM, PretrainedConfig

    assert compat.causal_lm_class(tiny_config("llama")) is LlamaForCausalLM
    assert compat.causal_lm_class(PretrainedConfig()) is None


def test_checkpointing_flags_of_real_training_arguments(tmp_path):
    from transformers import TrainingArguments

    off = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    on = TrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to=[],
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": True},
    )
    assert not compat.checkpointing_on(off) and compat.checkpointing_on(on)
    assert compat.is_reentrant(on) and not compat.is_reentrant(off)


@pytest.mark.parametrize("given", [None, {}, {"use_reentrant": False}], ids=["unset", "empty", "false"])
def test_is_reentrant_reads_the_mode_that_runs_not_the_deprecated_alias(tmp_path, given):
    """TRL forces ``use_reentrant=True`` for PEFT + ZeRO-3 by writing the deprecated
    ``gradient_checkpointing_kwargs``. Given no kwargs, that is a new dict and transformers 5.24
    still checkpoints non-reentrant (it reads ``activation_checkpointing_kwargs``); given a dict,
    the two names share it and the switch takes effect. The model's checkpoint function is the
    truth in both cases."""
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to=[],
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs=given,
        max_steps=1,
    )
    args.gradient_checkpointing_kwargs = args.gradient_checkpointing_kwargs or {}  # what TRL 1.16 does
    args.gradient_checkpointing_kwargs["use_reentrant"] = True
    model = tiny_model("llama", num_layers=2)
    assert compat.model_checkpointing_reentrant(model) is None  # off
    trainer = Trainer(model=model, args=args)
    gc_kwargs = dict(args.activation_checkpointing_kwargs or {})  # what Trainer.train() enables
    model.train()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs=gc_kwargs or None)
    runs_reentrant = bool(given)  # only a shared dict carries TRL's switch
    assert compat.model_checkpointing_reentrant(model) is runs_reentrant
    assert compat.is_reentrant(trainer.args, model) is runs_reentrant


def test_remove_input_grad_hooks_removes_the_orphaned_hook_too():
    from peft import get_peft_model

    from midblock_plugin.plan import build_plan

    model = tiny_model("llama", num_layers=4)
    model.enable_input_require_grads()  # the Trainer's call ...
    model = get_peft_model(model, build_plan(model).lora_config())
    model.enable_input_require_grads()  # ... and TRL's, which orphans the first hook
    ids = torch.arange(4, 12).unsqueeze(0)
    emb = model.get_input_embeddings()
    assert compat.has_input_grad_hooks(model) and emb(ids).requires_grad
    assert compat.remove_input_grad_hooks(model) >= 1
    assert not compat.has_input_grad_hooks(model)
    assert not emb(ids).requires_grad


def test_wrap_checkpoint_function_wraps_and_undoes():
    model = tiny_model("llama", num_layers=2)
    layer = model.model.layers[1]
    assert compat.wrap_checkpoint_function(layer, lambda f: f) is None  # checkpointing off: nothing to wrap
    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    original = layer._gradient_checkpointing_func
    calls = []

    def wrapper(fn):
        def wrapped(*args, **kwargs):
            calls.append(1)
            return fn(*args, **kwargs)

        return wrapped

    undo = compat.wrap_checkpoint_function(layer, wrapper)
    ids = torch.arange(4, 12).unsqueeze(0)
    model(input_ids=ids, labels=ids).loss.backward()
    assert calls, "the wrapped checkpoint function was not called by transformers"
    undo()
    assert layer._gradient_checkpointing_func is original


def test_move_callback_to_front_of_a_real_trainer(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Mine(TrainerCallback):
        pass

    mine = Mine()
    trainer = Trainer(
        model=tiny_model("llama", num_layers=2),
        processing_class=tiny_tokenizer(),
        args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[]),
        train_dataset=Dataset.from_list([{"input_ids": [1, 2, 3]}]),
        callbacks=[mine],
    )
    assert trainer.callback_handler.callbacks[0] is not mine
    assert compat.move_callback_to_front(trainer, mine)
    assert trainer.callback_handler.callbacks[0] is mine
    assert not compat.move_callback_to_front(trainer, Mine())


def test_zero3_helpers_on_a_plain_model(caplog):
    model = tiny_model("llama", num_layers=2)
    assert not compat.zero3_partitioned(model.parameters())
    assert compat.zero3_parameter_offload(model) is None

    class Engine:  # the public route: engine.optimizer.parameter_offload
        class optimizer:  # noqa: N801
            parameter_offload = object()

    assert compat.zero3_parameter_offload(model, Engine()) is Engine.optimizer.parameter_offload
    with caplog.at_level(logging.WARNING, logger="midblock_plugin"):
        assert compat.release_partitioned_parameters(model) is False
    assert "parameter coordinator was not found" in caplog.text


@pytest.mark.parametrize("name", sorted(compat.INPUT_GRAD_HOOK_NAMES))
def test_input_grad_hook_names_exist_in_the_installed_libraries(name):
    import inspect

    import peft.utils.other
    import transformers.modeling_utils

    sources = inspect.getsource(transformers.modeling_utils) + inspect.getsource(peft.utils.other)
    assert f"def {name}(" in sources


def test_checkpointing_mode_follows_the_deepspeed_version():
    old, new = (0, 18, 9), (0, 19, 8)
    assert compat.checkpointing_mode(zero3=True, requested=None, version=old)[0] is True
    assert compat.checkpointing_mode(zero3=True, requested=None, version=new) == (False, "non-reentrant (the default)")
    assert compat.checkpointing_mode(zero3=False, requested=None, version=old)[0] is False
    assert compat.checkpointing_mode(zero3=True, requested=True, version=old) == (True, "as configured")
    with pytest.raises(
        ValueError,
        match=r"use_reentrant: false with DeepSpeed ZeRO-3 needs deepspeed>=0\.19\.3 \(installed: 0\.18\.9\)",
    ):
        compat.checkpointing_mode(zero3=True, requested=False, version=old)
    # the installed DeepSpeed is read from its metadata
    import deepspeed

    assert compat.deepspeed_version()[:2] == tuple(int(x) for x in deepspeed.__version__.split(".")[:2])


# --------------------------------------------------------------------------- lm-eval
def test_lm_eval_internals_still_answer():
    """The lm-eval internals compat.py touches: the Collator's batching, the model_args parser, HFLM's _model_generate."""
    pytest.importorskip("lm_eval")
    from lm_eval.models.huggingface import HFLM

    from midblock_plugin import compat

    Collator = compat.lm_eval_collator()
    items = [("bb", {"k": 1}, 0), ("a", {"k": 1}, 1), ("ccc", {"k": 1}, 2)]
    collator = Collator(items, sort_fn=lambda x: (-len(x[0]), x[0]), group_by="gen_kwargs", group_fn=lambda x: x[1])
    batches = [[x[2] for x in batch] for batch in collator.get_batched(n=2)]
    assert batches == [[2, 0], [1]]  # longest first, two per batch
    assert compat.parse_lm_eval_args("gpu_memory_utilization=0.8,enforce_eager=True,name=x") == {
        "gpu_memory_utilization": 0.8,
        "enforce_eager": True,
        "name": "x",
    }
    counting = compat.count_generate_calls(HFLM)
    assert issubclass(counting, HFLM) and "_model_generate" in vars(counting) and hasattr(HFLM, "_model_generate")
