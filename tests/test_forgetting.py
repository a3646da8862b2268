"""The forgetting measure (midblock_plugin.experiments.forgetting) on a tiny model with real PEFT:
0 for an untouched model, growing with the learning rate, and its general text checked up front."""

import pytest

from midblock_plugin.experiments import forgetting


@pytest.fixture(scope="module")
def tok():
    from midblock_plugin.testing import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture(scope="module")
def blocks(tok):
    text, what = forgetting.general_text()  # the default: Python's own English docs
    assert "pydoc_data" in what and len(text) > 100_000
    b = forgetting.blocks(tok, text, block_tokens=32, num_blocks=6)
    assert len(b) == 6 and all(len(x) == 32 for x in b)
    assert b == forgetting.blocks(tok, text, block_tokens=32, num_blocks=6)  # deterministic
    return b


def _lora(seed=0):
    import torch
    from peft import LoraConfig, get_peft_model

    from midblock_plugin.testing import tiny_model

    model = tiny_model("llama", num_layers=4, seed=0)
    torch.manual_seed(seed)
    return get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    )


def test_untouched_model_forgets_nothing(blocks):
    from midblock_plugin.testing import tiny_model

    model = tiny_model("llama", num_layers=4, seed=0)
    same = forgetting.measure(model, blocks, base=model)
    assert same["delta_loss"] == 0.0 and same["kl"] == 0.0 and same["loss_base"] == same["loss_tuned"] > 0
    fresh = forgetting.measure(_lora(), blocks)  # a new LoRA adapter (B = 0) against its own disabled adapter
    assert fresh["delta_loss"] == 0.0 and fresh["kl"] == 0.0
    assert fresh["blocks"] == 6 and fresh["block_tokens"] == 32 and len(fresh["per_block"]["kl"]) == 6


def _trained(lr, tok, steps=3):
    import torch

    from midblock_plugin.data import gsm8k
    from midblock_plugin.testing import gsm8k_rows

    model = _lora(seed=1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    rows = gsm8k_rows("train", n=steps * 2)
    model.train()
    for i in range(steps):
        batch = tok(
            [gsm8k.training_text(r) for r in rows[2 * i : 2 * i + 2]],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=48,
        )
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["input_ids"])
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    return model


def test_forgetting_grows_with_the_learning_rate(tok, blocks):
    kls = [forgetting.measure(_trained(lr, tok), blocks)["kl"] for lr in (1e-4, 1e-3, 1e-2)]
    assert 0 < kls[0] < kls[1] < kls[2], kls


def test_general_text_is_checked_before_any_work(tmp_path):
    assert forgetting.check_source(None) == forgetting.check_source("python-docs") == "python-docs"
    with pytest.raises(FileNotFoundError, match="--general-text .*no such file"):
        forgetting.check_source(tmp_path / "missing.txt")
    short = tmp_path / "short.txt"
    short.write_text("too short")
    with pytest.raises(ValueError, match="at least 2000 characters"):
        forgetting.check_source(short)
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe" * 2000)
    with pytest.raises(ValueError, match="not UTF-8"):
        forgetting.check_source(binary)
    mine = tmp_path / "mine.txt"
    mine.write_text("The quick brown fox jumps over the lazy dog. " * 100)
    text, what = forgetting.general_text(str(mine))
    assert text.startswith("The quick") and str(mine.resolve()) in what
