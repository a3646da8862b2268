"""Issue 11 regressions on the TRL / HF Trainer path: a trainer whose adapter, mode or checkpoint
disagrees with the plan is refused before a step is taken, never trained silently."""

import json

import pytest

from midblock_plugin import MidBlockConfig
from midblock_plugin.integrations.trl import MidBlockCallback, build_plan
from midblock_plugin.testing import tiny_model, tiny_tokenizer
from midblock_plugin.training.resume import PlanMismatch
from tests.test_trl import L, _dataset


def _trainer(out, callback, peft_config=None, model=None, **kw):
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(out),
        per_device_train_batch_size=2,
        use_cpu=True,
        bf16=False,
        report_to=[],
        logging_steps=1,
        max_length=48,
        learning_rate=5e-3,
        seed=0,
        **{"max_steps": 2, "save_strategy": "no", **kw},
    )
    return SFTTrainer(
        model=model or tiny_model("llama", num_layers=L),
        args=args,
        train_dataset=_dataset(),
        processing_class=tiny_tokenizer(),
        peft_config=peft_config,
        callbacks=[callback],
    )


def test_full_mode_with_a_lora_peft_config_is_refused(tmp_path):
    model = tiny_model("llama", num_layers=L)
    lora = build_plan(model, MidBlockConfig()).lora_config()
    with pytest.raises(PlanMismatch, match="mode='full'.*save_model would write only the adapter"):
        _trainer(tmp_path, MidBlockCallback(MidBlockConfig(mode="full")), peft_config=lora, model=model)


@pytest.mark.parametrize("adapter_mask, callback_mask", [("01000", "01110"), ("01110", "01000")])
def test_lora_config_for_another_window_is_refused_in_both_directions(tmp_path, adapter_mask, callback_mask):
    model = tiny_model("llama", num_layers=L)
    lora = build_plan(model, MidBlockConfig(segments=adapter_mask)).lora_config()
    with pytest.raises(ValueError, match="layers_to_transform|outside the mid-block window"):
        _trainer(tmp_path, MidBlockCallback(MidBlockConfig(segments=callback_mask)), peft_config=lora, model=model)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"rank": 8}, "r:"),
        ({"lora_alpha": 3.0}, "lora_alpha:"),
        ({"target_modules": ["q_proj", "v_proj"]}, "target_modules:"),
    ],
)
def test_lora_config_with_another_rank_alpha_or_targets_is_refused(tmp_path, change, field):
    model = tiny_model("llama", num_layers=L)
    lora = build_plan(model, MidBlockConfig(**{"rank": 4, **change})).lora_config()
    with pytest.raises(PlanMismatch, match=field):
        _trainer(tmp_path, MidBlockCallback(MidBlockConfig(rank=4)), peft_config=lora, model=model)


def test_a_config_and_a_plan_of_another_config_are_refused():
    plan = build_plan(tiny_model("llama", num_layers=L), MidBlockConfig(segments="01110"))
    with pytest.raises(ValueError, match="plan built from a different config"):
        MidBlockCallback(MidBlockConfig(segments="01000"), plan=plan)


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory):
    """A 2-step LoRA run on window 1-3 at rank 4 that saved checkpoint-1 and checkpoint-2."""
    out = tmp_path_factory.mktemp("ckpt")
    model = tiny_model("llama", num_layers=L)
    plan = build_plan(model, MidBlockConfig(rank=4))
    trainer = _trainer(
        out,
        MidBlockCallback(plan=plan, verbose=False),
        peft_config=plan.lora_config(),
        model=model,
        save_strategy="steps",
        save_steps=1,
    )
    trainer.train()
    return out, plan


def test_every_checkpoint_carries_its_plan(checkpointed):
    out, plan = checkpointed
    for step in (1, 2):
        saved = json.loads((out / f"checkpoint-{step}" / "midblock" / "plan.json").read_text())
        assert saved["layers"] == plan.layers and saved["layer_rank"] == plan.layer_rank


@pytest.mark.parametrize(
    "config, field", [(MidBlockConfig(rank=4, segments="01000"), "layers"), (MidBlockConfig(rank=8), "r:")]
)
def test_resume_with_another_window_or_rank_is_refused_before_loading(checkpointed, tmp_path, config, field):
    out, _ = checkpointed
    model = tiny_model("llama", num_layers=L)
    plan = build_plan(model, config)
    with pytest.raises(PlanMismatch, match=f"cannot resume from .*checkpoint-2.*{field}"):
        _trainer(
            out,
            MidBlockCallback(plan=plan, verbose=False),
            peft_config=plan.lora_config(),
            model=model,
            resume_from_checkpoint=str(out / "checkpoint-2"),
            max_steps=3,
        )


def test_resume_through_train_with_another_window_stops_before_loading(checkpointed, tmp_path):
    out, _ = checkpointed
    model = tiny_model("llama", num_layers=L)
    plan = build_plan(model, MidBlockConfig(rank=4, layers="2-4"))  # same rank, other layers: the weights load
    callback = MidBlockCallback(plan=plan, verbose=False)
    # another output_dir: into `out` itself (which holds the layers 1-3 run) the trainer is refused at init
    trainer = _trainer(tmp_path, callback, peft_config=plan.lora_config(), model=model, max_steps=3)
    callback.bind(trainer)  # bind() checks a checkpoint given to trainer.train before it loads
    with pytest.raises(PlanMismatch, match="cannot resume from .*checkpoint-2"):
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    assert trainer.state.global_step == 0  # the checkpoint's state was not loaded, no step taken


def test_resume_with_the_same_plan_continues(checkpointed):
    out, _ = checkpointed
    model = tiny_model("llama", num_layers=L)
    plan = build_plan(model, MidBlockConfig(rank=4))
    trainer = _trainer(
        out,
        MidBlockCallback(plan=plan, verbose=False),
        peft_config=plan.lora_config(),
        model=model,
        max_steps=3,
        resume_from_checkpoint=str(out / "checkpoint-2"),
    )
    trainer.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    assert trainer.state.global_step == 3
