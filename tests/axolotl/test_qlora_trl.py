"""QLoRA through TRL: a model loaded with ``BitsAndBytesConfig(load_in_4bit=True)`` and prepared
with ``prepare_model_for_kbit_training``, trained by TRL's ``SFTTrainer`` with the plan's LoRA
config and ``MidBlockCallback``, on the CPU.

It runs in the Axolotl environment (``.venv-axolotl``), the one that has bitsandbytes (and TRL).
``prepare_model_for_kbit_training`` and TRL each register an ``enable_input_require_grads`` hook
under gradient checkpointing; backward truncation removes them, so the hidden states entering
the decoder stack do not require grad and no gradient reaches the layers below the window. The
same run with ``truncate_backward=False`` shows what the probe sees when the hooks stay.
"""

from __future__ import annotations

import pytest
import torch


pytestmark = pytest.mark.axolotl
pytest.importorskip("bitsandbytes")
pytest.importorskip("trl")

NUM_LAYERS = 5
WINDOW = [1, 2, 3]  # 01110 on 5 layers
CONFIG = {"segments": "01110", "rank": 4, "target_modules": ["q_proj", "v_proj"]}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from midblock_plugin.testing import save_tiny, tiny_tokenizer

    path = save_tiny(tmp_path_factory.mktemp("qlora-trl") / "tiny-llama", arch="llama", num_layers=NUM_LAYERS)
    tiny_tokenizer().save_pretrained(path)
    return path


def _quantized(model_dir, prepare=True):
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    bnb = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=bnb, device_map="cpu")
    # as the QLoRA recipes do; with checkpointing it registers the input-grad hook (reentrant default)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=True) if prepare else model


def _dataset():
    from datasets import Dataset

    from midblock_plugin.testing import gsm8k_rows

    return Dataset.from_list(
        [{"text": f"Question: {r['question']}\nAnswer: {r['answer']}"} for r in gsm8k_rows("train", 8)]
    )


class _Probe:
    """Whether the hidden states entering layer 0 require grad, and gradients reaching its output."""

    def __init__(self, model):
        from midblock_plugin.architecture import decoder_layers

        self.entering, self.grads = [], 0
        layer = decoder_layers(model)[0]
        layer.register_forward_pre_hook(self._enter, with_kwargs=True)
        layer.register_forward_hook(self._out)

    def _enter(self, module, args, kwargs):
        hs = args[0] if args else kwargs.get("hidden_states")
        if module.training:
            self.entering.append(bool(hs.requires_grad))

    def _out(self, module, args, output):
        out = output[0] if isinstance(output, tuple) else output
        if out.requires_grad:
            out.register_hook(self._grad)

    def _grad(self, grad):
        self.grads += 1


def _train(model_dir, out, **config):
    from trl import SFTConfig, SFTTrainer

    from midblock_plugin import MidBlockConfig
    from midblock_plugin.compat import has_input_grad_hooks
    from midblock_plugin.integrations.trl import MidBlockCallback, build_plan

    model = _quantized(model_dir)
    hooks_after_prepare = has_input_grad_hooks(model)
    plan = build_plan(model, MidBlockConfig(**CONFIG, **config))
    callback = MidBlockCallback(plan=plan, verbose=False)
    args = SFTConfig(
        output_dir=str(out),
        max_steps=2,
        per_device_train_batch_size=2,
        use_cpu=True,
        bf16=False,
        report_to=[],
        logging_steps=1,
        max_length=48,
        save_strategy="no",
        learning_rate=1e-2,
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": True},
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=_dataset(), peft_config=plan.lora_config(), callbacks=[callback]
    )
    callback.bind(trainer)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    probe = _Probe(trainer.model)
    trainer.train()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach(), before[n])}
    return dict(
        plan=plan,
        callback=callback,
        probe=probe,
        changed=changed,
        model=trainer.model,
        hooks_after_prepare=hooks_after_prepare,
        hooks_left=has_input_grad_hooks(trainer.model),
    )


@pytest.fixture(scope="module")
def truncated(model_dir, tmp_path_factory):
    return _train(model_dir, tmp_path_factory.mktemp("trl-qlora"))


def test_plan_of_the_quantized_model_counts_like_the_unquantized_one(model_dir):
    from transformers import AutoModelForCausalLM

    from midblock_plugin import MidBlockConfig
    from midblock_plugin.architecture import ModelLayout
    from midblock_plugin.plan import build_plan

    quantized, plain = _quantized(model_dir, prepare=False), AutoModelForCausalLM.from_pretrained(model_dir)
    q, p = build_plan(quantized, MidBlockConfig(**CONFIG)), build_plan(plain, MidBlockConfig(**CONFIG))
    assert type(quantized.model.layers[1].self_attn.q_proj.weight).__name__ == "Params4bit"
    assert q.trainable_params == p.trainable_params == 3 * 6 * (128 + 96)  # rank 6: the matched budget of r=4
    assert (q.full_params, q.uniform_lora_params, q.largest_module_params) == (
        p.full_params,
        p.uniform_lora_params,
        p.largest_module_params,
    )
    assert q.full_params == sum(x.numel() for x in plain.parameters())
    layout = q.layout
    assert layout.linears == p.layout.linears and layout.layer_params == p.layout.layer_params
    # the decoder's linear weights are quantized, the embeddings, norms and lm_head are not
    linear = sum(
        m.weight.numel() for layer in plain.model.layers for m in layer.modules() if isinstance(m, torch.nn.Linear)
    )
    assert (layout.quantization, layout.quantized_params) == ("bnb-4bit", linear)
    # the meta-device layout of the quantized model's config says the same (PEFT-wrapped models use it)
    assert ModelLayout.from_config(quantized.config).quantized_params == linear


def test_only_the_windows_lora_trains(truncated):
    from midblock_plugin.architecture import ModelLayout

    layers = {ModelLayout.bare(NUM_LAYERS).layer_index(n) for n in truncated["changed"]}
    assert truncated["changed"] and layers == set(WINDOW), sorted(truncated["changed"])
    assert all("lora_" in n for n in truncated["changed"]), sorted(truncated["changed"])
    assert {n for n in truncated["changed"] if "lora_B" in n}  # B moved off zero


def test_truncation_removes_the_input_grad_hooks_of_kbit_preparation_and_trl(truncated):
    assert truncated["hooks_after_prepare"] is True  # prepare_model_for_kbit_training registered one
    truncation = truncated["callback"].truncation
    assert truncation is not None and truncation.reentrant is True
    assert truncation.removed_input_hooks >= 2  # prepare_model_for_kbit_training's and TRL's
    assert truncated["hooks_left"] is False
    probe = truncated["probe"]
    assert probe.entering and not any(probe.entering)  # the input of layer 0 never required grad
    assert probe.grads == 0  # no gradient reached the layers below the window


def test_without_truncation_the_layers_below_the_window_run_a_backward(model_dir, tmp_path):
    """The control: the probe sees the backward below the window when the hooks stay."""
    run = _train(model_dir, tmp_path, truncate_backward=False)
    assert run["callback"].truncation is None and run["hooks_left"] is True
    assert run["probe"].entering and all(run["probe"].entering)
    assert run["probe"].grads > 0
    assert run["changed"] and all("lora_" in n for n in run["changed"])


def test_drift_of_a_quantized_base_is_relative_to_the_dequantized_weights(truncated):
    change = truncated["callback"].monitor.weight_change()
    assert set(change) == set(WINDOW)
    assert all(1e-4 < v < 1 for v in change.values()), change  # not NaN (packed 4-bit bytes)


def test_full_mode_on_a_quantized_model_is_refused_before_training(model_dir):
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from midblock_plugin import MidBlockConfig
    from midblock_plugin.adapters import apply_full_mode
    from midblock_plugin.integrations.trl import MidBlockCallback
    from midblock_plugin.plan import build_plan

    model = _quantized(model_dir, prepare=False)
    config = MidBlockConfig(mode="full", segments="01110")
    plan = build_plan(AutoModelForCausalLM.from_pretrained(model_dir), config)  # the same window, unquantized
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(
        ValueError,
        match=r"mode='full' trains the base weights of layers 1-3, but this model is "
        r"loaded quantized \(bitsandbytes 4bit\)",
    ) as info:
        apply_full_mode(model, plan)  # what MidBlockCallback.on_init_end and Axolotl's load_adapter call
    assert "Use mode='lora' (QLoRA" in str(info.value)
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}  # nothing was frozen or unfrozen
    # through TRL: refused when the trainer is built (transformers' own check on a quantized model
    # without an adapter comes first), never after training started
    args = SFTConfig(output_dir=str(model_dir.parent / "full"), max_steps=1, use_cpu=True, bf16=False, report_to=[])
    with pytest.raises(ValueError, match="quantized"):
        SFTTrainer(
            model=model, args=args, train_dataset=_dataset(), callbacks=[MidBlockCallback(config, verbose=False)]
        )
