#!/usr/bin/env python
"""Fine-tune a Hugging Face decoder with Mid-Block Efficient Tuning through TRL's SFTTrainer.

    python examples/trl/sft_midblock.py --model tiny --data ../shared/data/gsm8k/train.jsonl \
        --segments 01110 --rank 16 --max-steps 20 --output-dir runs/tiny-midblock

``--model tiny`` builds a tiny random Llama (no download); any other value is passed to
``from_pretrained`` (a local directory or a hub id). ``--data`` is a JSONL of GSM8K
``question``/``answer`` rows (trained as "Question: ...\\nAnswer: ..." text, as in the paper)
or chat ``messages`` rows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from midblock_plugin.cli.options import add_config_arguments, config_from_args
from midblock_plugin.data import gsm8k


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="'tiny' (a random 8-layer Llama, no download), a model directory or a hub id")
    p.add_argument("--data", required=True, help="JSONL of {question, answer} or {messages} rows")
    p.add_argument("--num-examples", type=int, default=None, help="use the first N rows (default: all)")
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--optim", default="adamw_torch", help="an HF optimizer name (adamw_torch, sgd, ...)")
    p.add_argument("--max-length", type=int, default=128, help="sequence length (the paper truncated to 128)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--bf16", action="store_true", help="bf16 training (GPU)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--sequential", action="store_true", help="iterate the data in file order (reproducible comparisons)")
    p.add_argument("--logging-steps", type=int, default=1)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--deepspeed", help="ZeRO-3: 'zero3', 'zero3_offload' (configs shipped with midblock) or a JSON path")
    g = p.add_argument_group("GSM8K evaluation at the end of training (lm-eval; off unless --eval-limit is given)")
    g.add_argument("--eval-limit", type=int, help="GSM8K test questions to score after training")
    g.add_argument("--eval-fewshot", type=int, help="few-shot examples (default: the task's 5)")
    g.add_argument("--eval-max-gen-toks", type=int, default=None)
    g.add_argument("--eval-data-dir", help="local GSM8K dir (train.jsonl/test.jsonl); default: ../shared/data/gsm8k, else the hub")
    g.add_argument("--eval-baseline", action="store_true", help="also evaluate the untrained model at train start")
    p.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)  # the deepspeed launcher adds it
    add_config_arguments(p)
    return p.parse_args(argv)


def load_rows(path: str, n: int | None) -> list[dict]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"--data {path!r} does not exist; give a JSONL of question/answer or messages rows.")
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if "messages" in row:
                rows.append({"messages": row["messages"]})
            elif "question" in row and "answer" in row:
                rows.append({"text": gsm8k.training_text(row)})
            elif "text" in row:
                rows.append({"text": row["text"]})
            else:
                raise ValueError(f"--data {path}:{lineno}: a row needs 'question'+'answer', 'messages' or 'text' (got {sorted(row)}).")
            if n is not None and len(rows) >= n:
                break
    if not rows:
        raise ValueError(f"--data {path!r} holds no rows.")
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        mb = config_from_args(args)  # bad windows / options fail here, before any weights load
        rows = load_rows(args.data, args.num_examples)
        eval_settings = None
        if args.eval_limit is not None:
            from midblock_plugin.evaluation import EvalSettings

            eval_settings = EvalSettings(limit=args.eval_limit, num_fewshot=args.eval_fewshot, max_gen_toks=args.eval_max_gen_toks,
                                         data_dir=args.eval_data_dir, baseline=args.eval_baseline, save_samples=True)
    except (ValueError, FileNotFoundError) as exc:
        print(f"sft_midblock.py: error: {exc}", file=sys.stderr)
        return 2

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from midblock_plugin.integrations.trl import MidBlockCallback, build_plan

    # The plan is built once, from config.json only: the window is checked before the weights load.
    plan = build_plan(args.model, mb) if args.model != "tiny" else None
    cpu = not torch.cuda.is_available()
    extra = {}
    if args.deepspeed:
        from midblock_plugin.deepspeed_configs import config_path

        extra["deepspeed"] = config_path(args.deepspeed)
    deepspeed_on = bool(args.deepspeed) or os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true"
    if deepspeed_on:
        if cpu:
            # DeepSpeed on CPU (tests, laptops): gloo and accelerate's configured state, else the
            # HF batch-size arithmetic assumes world size 1 (see docs/deepspeed.md).
            from accelerate import PartialState

            os.environ.setdefault("ACCELERATE_USE_DEEPSPEED", "true")
            PartialState(backend="gloo")
            extra["accelerator_config"] = {"use_configured_state": True}
    # The training arguments come first: under ZeRO-3 they make from_pretrained partition the model.
    sft = SFTConfig(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.lr,
        optim=args.optim,
        max_length=args.max_length,
        gradient_checkpointing=args.gradient_checkpointing,
        bf16=args.bf16,
        use_cpu=cpu and not deepspeed_on,
        seed=args.seed,
        train_sampling_strategy="sequential" if args.sequential else "random",
        logging_steps=args.logging_steps,
        save_strategy="no",
        report_to=[],
        **extra,
    )
    if args.model == "tiny":
        from midblock_plugin.testing import tiny_model, tiny_tokenizer

        model, tok = tiny_model("llama", num_layers=8, seed=args.seed), tiny_tokenizer()
    else:
        tok = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16 if args.bf16 else torch.float32)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token

    if plan is None:
        plan = build_plan(model, mb)
    peft_config = plan.lora_config() if plan.mode == "lora" else None
    callback = MidBlockCallback(plan=plan)
    trainer = SFTTrainer(
        model=model,
        args=sft,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=peft_config,
        callbacks=[callback],
    )
    callback.bind(trainer)
    if eval_settings is not None:
        from midblock_plugin.evaluation import EvalCallback

        trainer.add_callback(EvalCallback(eval_settings, trainer=trainer))
    trainer.train()
    trainer.save_model(args.output_dir)
    if trainer.is_world_process_zero():
        tok.save_pretrained(args.output_dir)
    print(f"saved {'LoRA adapter' if peft_config else 'model'} to {args.output_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
