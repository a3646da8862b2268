"""TRL SFTTrainer with MidBlockCallback on tiny models of nine architectures, both modes.

Each run trains a few real SFTTrainer steps; then: only the window's layers changed, the
plan and drift files exist, and the saved LoRA adapter loads with plain PEFT in a
process that never imports midblock_plugin.
"""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from midblock_plugin import MidBlockConfig
from midblock_plugin.integrations.trl import MidBlockCallback, midblock_lora_config
from midblock_plugin.testing import ARCHITECTURES, gsm8k_rows, tiny_model, tiny_tokenizer


L = 6  # window 0.2:0.8 -> layers 1..3


def _dataset(n=8):
    from datasets import Dataset

    return Dataset.from_list(
        [{"text": f"Question: {r['question']}\nAnswer: {r['answer']}"} for r in gsm8k_rows("train", n)]
    )


def train(
    arch,
    mode,
    out,
    mb=None,
    gradient_checkpointing=False,
    steps=2,
    extra_callbacks=(),
    seed=0,
    bind=True,
    **sft_kwargs,
):
    from trl import SFTConfig, SFTTrainer

    mb = mb or MidBlockConfig(mode=mode, rank=4)
    model = tiny_model(arch, num_layers=L, seed=seed)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = SFTConfig(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=2,
        use_cpu=True,
        bf16=False,
        report_to=[],
        logging_steps=1,
        max_length=48,
        gradient_checkpointing=gradient_checkpointing,
        save_strategy="no",
        learning_rate=5e-3,
        seed=seed,
        **sft_kwargs,
    )
    cb = MidBlockCallback(mb, verbose=False)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=_dataset(),
        processing_class=tiny_tokenizer(),
        peft_config=midblock_lora_config(model, mb) if mb.mode == "lora" else None,
        callbacks=[*extra_callbacks, cb],
    )
    if bind:
        cb.bind(trainer)
    trainer.train()
    return trainer, cb, before


def changed_params(model, before):
    return {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}


def layer_of(name, pattern):
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part == pattern and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None


@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory):
    runs = {}
    for arch in sorted(ARCHITECTURES):
        out = tmp_path_factory.mktemp(f"lora-{arch}")
        trainer, cb, before = train(arch, "lora", out)
        trainer.save_model(str(out))
        base_dir = out / "base"
        tiny_model(arch, num_layers=L, seed=0).save_pretrained(base_dir)
        merged = trainer.model.merge_and_unload()
        ids = torch.arange(3, 40).unsqueeze(0)
        with torch.no_grad():
            logits = merged.eval()(ids).logits
        torch.save(logits, out / "expected_logits.pt")
        runs[arch] = dict(out=out, cb=cb, before=before, merged=merged, trainer=trainer)
    return runs


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_lora_trains_only_window_layers(arch, lora_runs):
    run = lora_runs[arch]
    plan = run["cb"].plan
    assert plan.layers == [1, 2, 3]
    changed = changed_params(run["merged"], run["before"])
    assert changed, "training changed nothing"
    assert {layer_of(n, plan.layers_pattern) for n in changed} == set(plan.layers)
    assert all(any(t.split(".")[-1] in n for t in plan.target_modules) for n in changed)
    cfg = json.loads((run["out"] / "adapter_config.json").read_text())
    assert cfg["layers_to_transform"] == [1, 2, 3] and cfg["r"] == 8  # floor(4 * 6 / 3)
    assert cfg["layers_pattern"] == plan.layers_pattern
    assert run["cb"].trainable_params == plan.trainable_params


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_full_mode_trains_only_window_layers(arch, tmp_path):
    trainer, cb, before = train(arch, "full", tmp_path)
    plan = cb.plan
    changed = changed_params(trainer.model, before)
    layers = {layer_of(n, plan.layers_pattern) for n in changed}
    assert layers == set(plan.layers), changed
    # every parameter of the window layers that has a gradient path moved; none outside
    frozen_outside = [
        n
        for n, p in trainer.model.named_parameters()
        if layer_of(n, plan.layers_pattern) not in plan.layers and p.requires_grad
    ]
    assert frozen_outside == []
    assert cb.trainable_params == plan.trainable_params


def test_adapters_load_with_plain_peft(lora_runs):
    """One fresh process, no midblock_plugin import: PeftModel.from_pretrained + merge equals our merge."""
    dirs = {arch: str(run["out"]) for arch, run in lora_runs.items()}
    script = textwrap.dedent(
        """
        import json, sys, torch
        from transformers import AutoModelForCausalLM
        from peft import PeftModel
        dirs = json.loads(sys.argv[1])
        for arch, d in dirs.items():
            base = AutoModelForCausalLM.from_pretrained(d + "/base", dtype=torch.float32)
            model = PeftModel.from_pretrained(base, d).merge_and_unload().eval()
            with torch.no_grad():
                got = model(torch.arange(3, 40).unsqueeze(0)).logits
            want = torch.load(d + "/expected_logits.pt")
            assert torch.allclose(got, want, atol=1e-5), (arch, (got - want).abs().max())
            print("ok", arch)
        assert not any(m.startswith("midblock_plugin") for m in sys.modules), "midblock_plugin was imported"
        """
    )
    r = subprocess.run(
        [sys.executable, "-c", script, json.dumps(dirs)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(next(iter(lora_runs.values()))["out"]),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("ok ") == len(ARCHITECTURES)


def test_plan_and_drift_files(lora_runs, tmp_path):
    run = lora_runs["llama"]
    plan = json.loads((run["out"] / "midblock" / "plan.json").read_text())
    assert plan["layers"] == [1, 2, 3] and plan["trainable_params_on_model"] == plan["trainable_params"]
    drift = json.loads((run["out"] / "midblock" / "drift.json").read_text())
    assert [e["step"] for e in drift["history"]] == [1, 2]
    assert set(drift["history"][-1]["weight_change"]) == {"1", "2", "3"}
    assert all(v > 0 for v in drift["history"][-1]["weight_change"].values())
    png = (run["out"] / "midblock" / "drift.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_lora_mode_without_peft_config_is_an_error(tmp_path):
    from trl import SFTConfig, SFTTrainer

    model = tiny_model("llama", num_layers=L)
    with pytest.raises(ValueError, match="mode='lora' but the model has no LoRA parameters|nothing would be trained"):
        SFTTrainer(
            model=model,
            args=SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], max_steps=1),
            train_dataset=_dataset(),
            processing_class=tiny_tokenizer(),
            callbacks=[MidBlockCallback(MidBlockConfig())],
        )


def test_foreign_lora_config_outside_window_is_rejected(tmp_path):
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    model = tiny_model("llama", num_layers=L)
    uniform = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    with pytest.raises(ValueError, match=r"outside the mid-block window 1-3.*layers\.0\."):
        SFTTrainer(
            model=model,
            args=SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], max_steps=1),
            train_dataset=_dataset(),
            processing_class=tiny_tokenizer(),
            peft_config=uniform,
            callbacks=[MidBlockCallback(MidBlockConfig())],
        )


@pytest.fixture
def deepspeed_at(monkeypatch):
    """Pretend another DeepSpeed version is installed (the choice depends only on it)."""
    from midblock_plugin import compat

    for name in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_CONFIG_FILE", "ACCELERATE_DEEPSPEED_ZERO_STAGE"):
        monkeypatch.delenv(name, raising=False)
    return lambda version: monkeypatch.setattr(compat, "deepspeed_version", lambda: version)


def test_checkpointing_mode_follows_deepspeed_version_and_launch(tmp_path, monkeypatch, deepspeed_at):
    """ZeRO-3 is read from ``deepspeed=`` or from accelerate's DeepSpeed plugin; the mode is
    written under both argument names transformers reads."""
    from transformers import TrainingArguments

    from midblock_plugin.deepspeed_configs import config_path
    from midblock_plugin.integrations.trl import checkpointing_mode, zero3_enabled

    def args(**kw):
        return TrainingArguments(output_dir=str(tmp_path), report_to=[], gradient_checkpointing=True, **kw)

    deepspeed_at((0, 19, 2))
    assert checkpointing_mode(TrainingArguments(output_dir=str(tmp_path), report_to=[])) is None  # off
    plain = args()
    assert checkpointing_mode(plain) == (False, "non-reentrant (the default)")
    assert plain.activation_checkpointing_kwargs == plain.gradient_checkpointing_kwargs == {"use_reentrant": False}
    z3 = args(deepspeed=config_path("zero3"))
    assert zero3_enabled(z3)
    use, why = checkpointing_mode(z3)
    assert use is True and "DeepSpeed 0.19.2 < 0.19.3" in why and z3.activation_checkpointing_kwargs["use_reentrant"]
    with pytest.raises(ValueError, match=r"deepspeed>=0.19.3 \(installed: 0.19.2\).*use_reentrant: true"):
        checkpointing_mode(args(deepspeed=config_path("zero3")), use_reentrant=False)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # accelerate launch with a ZeRO-2 plugin
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    assert not zero3_enabled(args()) and checkpointing_mode(args())[0] is False
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    assert zero3_enabled(args()) and checkpointing_mode(args())[0] is True
    deepspeed_at((0, 19, 8))
    assert checkpointing_mode(args(), use_reentrant=False) == (False, "as configured")
    with pytest.raises(ValueError, match="gradient_checkpointing is off"):
        checkpointing_mode(TrainingArguments(output_dir=str(tmp_path), report_to=[]), use_reentrant=True)


def test_keep_checkpointing_mode_undoes_trls_zero3_switch(tmp_path):
    """After TRL's PEFT + ZeRO-3 switch (simulated on the arguments exactly as TRL 1.16 writes
    it), the chosen non-reentrant mode is what the model runs with once training enables it."""
    from types import SimpleNamespace

    from transformers import TrainingArguments

    from midblock_plugin import compat
    from midblock_plugin.integrations.trl import checkpointing_mode, keep_checkpointing_mode

    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, gradient_checkpointing=True)
    use, _ = checkpointing_mode(args)
    trainer = SimpleNamespace(args=args)
    assert not keep_checkpointing_mode(trainer, use)  # nothing changed it
    args.gradient_checkpointing_kwargs["use_reentrant"] = True  # TRL: shared dict, so both names switch
    assert args.activation_checkpointing_kwargs["use_reentrant"] is True
    assert keep_checkpointing_mode(trainer, use)
    model = tiny_model("llama", num_layers=2)
    model.train()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs=dict(args.activation_checkpointing_kwargs))
    assert compat.model_checkpointing_reentrant(model) is False
