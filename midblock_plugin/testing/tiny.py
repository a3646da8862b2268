"""Builders for tiny random decoders of many architectures and a tiny BPE tokenizer."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from midblock_plugin.data import gsm8k


#: The GSM8K directory the tests and benchmarks use: ``$MIDBLOCK_GSM8K_DIR`` (set by
#: ``tests/conftest.py`` and ``scripts/test.sh``); a path that does not exist when unset.
GSM8K_DIR = Path(os.environ.get(gsm8k.ENV) or "MIDBLOCK_GSM8K_DIR-is-unset")

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|im_start|>assistant\n{% generation %}{{ message['content'] }}<|im_end|>{% endgeneration %}\n"
    "{% else %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = (
    """Question: Natalia sold clips to 48 of her friends in April, and then she sold half as
many clips in May. How many clips did Natalia sell altogether in April and May?
Answer: Natalia sold 48/2 = 24 clips in May. Natalia sold 48+24 = 72 clips altogether. #### 72
Question: Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of
babysitting. How much did she earn? Answer: Weng earns 12/60 = $0.2 per minute. #### 10
The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9 + - * / = $ % . , ? !
user assistant system <|im_start|> <|im_end|> the a an of to in is was for on that with
"""
    * 4
)

#: The architectures the test-suite covers, with the transformers config class name.
ARCHITECTURES = {
    "llama": "LlamaConfig",
    "qwen2": "Qwen2Config",
    "qwen3": "Qwen3Config",
    "olmo2": "Olmo2Config",
    "mistral": "MistralConfig",
    "gemma2": "Gemma2Config",
    "phi3": "Phi3Config",
    "gpt2": "GPT2Config",
    "gpt_neox": "GPTNeoXConfig",
}


@functools.lru_cache(maxsize=4)
def _tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    return tok.to_str()


def tiny_tokenizer(vocab_size: int = 512):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with a chat template (with
    ``{% generation %}`` blocks, so TRL's ``assistant_only_loss`` works)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(vocab_size)),
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<pad>",
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.model_max_length = 2048
    return tok


def tiny_config(arch: str = "llama", num_layers: int = 5, hidden: int = 64, vocab_size: int = 512, **overrides: Any):
    """A config of ``arch`` (a key of :data:`ARCHITECTURES`) with tiny dimensions."""
    import transformers

    if arch not in ARCHITECTURES:
        raise ValueError(f"arch={arch!r} is not one of {sorted(ARCHITECTURES)}")
    cls = getattr(transformers, ARCHITECTURES[arch])
    heads = max(2, hidden // 16)
    common = dict(vocab_size=vocab_size, bos_token_id=0, eos_token_id=2, pad_token_id=3)
    if arch == "gpt2":
        kw = dict(n_embd=hidden, n_layer=num_layers, n_head=heads, n_positions=512)
    elif arch == "gpt_neox":
        kw = dict(
            hidden_size=hidden,
            num_hidden_layers=num_layers,
            num_attention_heads=heads,
            intermediate_size=hidden * 2,
            max_position_embeddings=512,
        )
    else:
        kw = dict(
            hidden_size=hidden,
            num_hidden_layers=num_layers,
            num_attention_heads=heads,
            num_key_value_heads=max(1, heads // 2),
            intermediate_size=hidden * 2,
            max_position_embeddings=512,
        )
        if arch in ("gemma2", "qwen3"):
            kw["head_dim"] = hidden // heads
        if arch == "phi3":
            kw["pad_token_id"] = 3
    kw.update(common)
    kw.update(overrides)
    return cls(**kw)


def tiny_model(arch: str = "llama", num_layers: int = 5, hidden: int = 64, seed: int = 0, **overrides: Any):
    """A randomly initialised ``AutoModelForCausalLM`` of ``arch`` (float32)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = tiny_config(arch, num_layers=num_layers, hidden=hidden, **overrides)
    model = AutoModelForCausalLM.from_config(cfg)
    return model.float()


def save_tiny(
    path: str | os.PathLike,
    arch: str = "llama",
    num_layers: int = 5,
    hidden: int = 64,
    seed: int = 0,
    **overrides: Any,
) -> Path:
    """Save a tiny model and tokenizer to ``path`` (a directory loadable with from_pretrained)."""
    path = Path(path)
    tiny_model(arch, num_layers=num_layers, hidden=hidden, seed=seed, **overrides).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def gsm8k_rows(split: str = "train", n: int | None = None, data_dir: str | os.PathLike | None = None) -> list[dict]:
    """The first ``n`` rows of a local GSM8K split (``data_dir``, else :data:`GSM8K_DIR`)."""
    return gsm8k.read_rows(split, n=n, data_dir=data_dir or GSM8K_DIR)


def main(argv: list[str] | None = None) -> int:
    """``python -m midblock_plugin.testing DIR``: save a tiny random model and its tokenizer to ``DIR``
    (what ``examples/axolotl/tiny-cpu.yml`` and the README's TRL program train; no download)."""
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m midblock_plugin.testing",
        description="Save a tiny random decoder and a tiny BPE tokenizer to DIR (no download): a model for trying "
        "midblock on a CPU, e.g. examples/axolotl/tiny-cpu.yml (base_model: runs/tiny-llama).",
    )
    p.add_argument("dir", help="the directory to write (created; from_pretrained loads it)")
    p.add_argument("--arch", default="llama", choices=sorted(ARCHITECTURES), help="architecture (default: llama)")
    p.add_argument("--num-layers", type=int, default=5, help="decoder layers (default: 5)")
    p.add_argument("--hidden", type=int, default=64, help="hidden size (default: 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")
    args = p.parse_args(argv)
    if args.num_layers < 1:
        p.error(f"--num-layers {args.num_layers}: give at least 1 layer")
    if args.hidden < 16 or args.hidden % 16:
        p.error(f"--hidden {args.hidden}: give a multiple of 16 (the heads are 16 wide), e.g. 64")
    path = save_tiny(args.dir, arch=args.arch, num_layers=args.num_layers, hidden=args.hidden, seed=args.seed)
    print(
        f"saved a tiny random {args.arch} ({args.num_layers} layers, hidden {args.hidden}) and its tokenizer to {path}"
    )
    return 0
