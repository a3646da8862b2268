#!/usr/bin/env python
"""Fine-tune a Hugging Face decoder with Mid-Block Efficient Tuning through TRL's SFTTrainer.

    .venv/bin/python examples/trl/sft_midblock.py --model tiny --data ../shared/data/gsm8k/train.jsonl \
        --segments 01110 --rank 16 --max-steps 20 --output-dir runs/tiny-midblock

``--model tiny`` builds a tiny random Llama (no download); any other value is passed to
``from_pretrained`` (a local directory or a hub id). ``--data`` is a JSONL of GSM8K
``question``/``answer`` rows (trained as "Question: ...\\nAnswer: ..." text, as in the paper)
or chat ``messages`` rows.

The run owns ``--output-dir`` (``midblock-run.json``, ``.midblock.lock``): another run there at the
same time, or a finished run trained with another window or rank, is refused before anything loads
(``--overwrite`` replaces that run). Exit status: 0 trained and saved; 2 bad input, nothing loaded;
3 the evaluation after training (``--eval-limit``) failed, the trained model is saved.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

from midblock_plugin import checks
from midblock_plugin.cli.fields import add_dataclass_arguments
from midblock_plugin.cli.options import add_config_arguments, config_from_args, join_dash_values
from midblock_plugin.data import gsm8k
from midblock_plugin.evaluation.preflight import EVAL_FAILED_EXIT, preflight
from midblock_plugin.evaluation.settings import EvalSettings
from midblock_plugin.rules import respell
from midblock_plugin.training.model_card import write_model_card


TINY_LAYERS = 8  # --model tiny: a random 8-layer Llama
#: The EvalSettings fields this script takes, and their flags (dest ``eval_<field>``).
_EVAL_FLAGS = {
    "limit": "--eval-limit",
    "num_fewshot": "--eval-fewshot",
    "max_gen_toks": "--eval-max-gen-toks",
    "data_dir": "--eval-data-dir",
    "baseline": "--eval-baseline",
    "protocol": "--eval-protocol",
    "backend": "--eval-backend",
    "tensor_parallel_size": "--eval-tensor-parallel-size",
}


class _EvalFlags:
    """An argument group that files each generated EvalSettings flag under its ``--eval-*`` name."""

    def __init__(self, group):
        self.group = group

    def add_argument(self, *names, dest, **kw):
        flag = _EVAL_FLAGS[dest]
        if kw.get("action") is argparse.BooleanOptionalAction:
            kw["action"] = "store_true"  # --eval-baseline: on when given
        return self.group.add_argument(flag, dest="eval_" + dest, **kw)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model", default="tiny", help="'tiny' (a random 8-layer Llama, no download), a model directory or a hub id"
    )
    p.add_argument("--data", required=True, help="JSONL of {question, answer} or {messages} rows")
    p.add_argument(
        "--num-examples",
        type=int,
        default=None,
        help="use the first N rows (default: with --max-steps, the rows those steps train on; else all)",
    )
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--optim", default="adamw_torch", help="an HF optimizer name (adamw_torch, sgd, ...)")
    p.add_argument("--max-length", type=int, default=128, help="sequence length (the paper truncated to 128)")
    p.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="recompute activations in the backward (what the 32B recipe uses)",
    )
    p.add_argument(
        "--reentrant",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="checkpointing mode with --gradient-checkpointing (default: midblock chooses; non-reentrant "
        "unless ZeRO-3 runs on a DeepSpeed too old for it)",
    )
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=False, help="bf16 training (GPU)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--sequential", action="store_true", help="iterate the data in file order (reproducible comparisons)"
    )
    p.add_argument("--logging-steps", type=int, default=1)
    p.add_argument("--output-dir", required=True)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a previous midblock run in --output-dir that was trained with another plan (its files are "
        "removed when training starts); without it such a directory is refused before any weights load",
    )
    p.add_argument(
        "--deepspeed", help="ZeRO-3: 'zero3', 'zero3_offload' (configs shipped with midblock) or a JSON path"
    )
    g = p.add_argument_group(
        "GSM8K evaluation at the end of training (lm-eval; off unless --eval-limit is given)",
        "GSM8K that cannot be found (no --eval-data-dir / $MIDBLOCK_GSM8K_DIR, offline) is refused before "
        f"training; an evaluation that still fails after training keeps the saved model and exits {EVAL_FAILED_EXIT}.",
    )
    # generated from EvalSettings' fields (help, default, choices), under this script's --eval-* names
    add_dataclass_arguments(_EvalFlags(g), EvalSettings, only=list(_EVAL_FLAGS))
    p.add_argument(
        "--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS
    )  # the deepspeed launcher adds it
    add_config_arguments(p)
    # "--layers -4--1": a value that starts with "-" is joined to its flag, as in the midblock CLI
    return p.parse_args(join_dash_values(list(sys.argv[1:] if argv is None else argv)))


def check_numbers(args) -> None:
    """Degenerate training values (zero, negative, infinite, NaN) are errors naming the flag."""

    def bad(flag, value, allowed):
        raise ValueError(f"{flag} {value}: {allowed}.")

    if args.num_examples is not None and args.num_examples < 1:
        bad("--num-examples", args.num_examples, "give a positive number of rows, or omit it for all rows")
    if args.max_steps == 0 or args.max_steps < -1:
        bad("--max-steps", args.max_steps, "give a positive number of steps, or -1 to train for --epochs")
    if args.max_steps == -1 and not (math.isfinite(args.epochs) and args.epochs > 0):
        bad("--epochs", args.epochs, "give a positive, finite number of epochs (or --max-steps N)")
    if not (math.isfinite(args.lr) and args.lr > 0):
        bad("--lr", args.lr, "give a positive, finite learning rate, e.g. 1e-4")
    for flag, value in (
        ("--batch-size", args.batch_size),
        ("--grad-accum", args.grad_accum),
        ("--logging-steps", args.logging_steps),
    ):
        if value < 1:
            bad(flag, value, "must be an integer >= 1")
    if args.max_length < 2:
        bad("--max-length", args.max_length, "must be an integer >= 2 (tokens per training sequence)")
    if not 0 <= args.seed < 2**32:
        bad("--seed", args.seed, "must be an integer in [0, 2**32)")


def rows_needed(args) -> int | None:
    """How many rows to read and tokenize: ``--num-examples``, else with ``--max-steps N`` the first
    N x batch size x grad-accum x processes rows (20 steps read 80 rows, not the whole file), else all."""
    if args.num_examples is not None:
        return args.num_examples
    if args.max_steps > 0:
        return args.max_steps * args.batch_size * args.grad_accum * int(os.environ.get("WORLD_SIZE", "1"))
    return None


def check_setup(args) -> None:
    """Packages, the output directory, the DeepSpeed config, the optimizer and the model
    directory: everything else that can be checked before any weights load."""
    for module in ("torch", "transformers", "trl", "datasets", "accelerate"):
        checks.check_dependency(module, "examples/trl/sft_midblock.py")
    if args.mode == "lora":
        checks.check_dependency("peft", "--mode lora")
    if args.eval_limit is not None:
        checks.check_dependency("lm_eval", "--eval-limit")
    checks.check_output_dir(args.output_dir, "--output-dir")
    if args.deepspeed:
        from midblock_plugin.deepspeed_configs import NAMES, config_path

        checks.check_dependency("deepspeed", "--deepspeed")
        if args.deepspeed not in NAMES:
            if not os.path.isfile(args.deepspeed):
                raise FileNotFoundError(
                    f"--deepspeed {args.deepspeed!r}: not a shipped config ({', '.join(NAMES)}) and no such JSON file."
                )
            checks.read_json_object(args.deepspeed, "--deepspeed")
        config_path(args.deepspeed)
    if args.optim != "adamw_torch":
        from transformers.training_args import OptimizerNames

        names = [o.value for o in OptimizerNames]
        if args.optim not in names:
            raise ValueError(
                f"--optim {args.optim!r} is not an optimizer the HF Trainer knows; choose one of {', '.join(names)}."
            )
    if args.model != "tiny":
        checks.check_model_dir(args.model, "--model", weights=True)


def eval_settings_from_args(args):
    """The end-of-training evaluation (``None`` without --eval-limit); errors name the flags."""
    if args.eval_limit is None:
        return None
    try:
        settings = EvalSettings(**{name: getattr(args, "eval_" + name) for name in _EVAL_FLAGS}, save_samples=True)
    except ValueError as exc:
        raise respell(exc, lambda field: _EVAL_FLAGS.get(field, "--eval-" + field.replace("_", "-"))) from None
    from midblock_plugin.evaluation.saved import check_backend

    check_backend(settings.backend, settings)  # vLLM missing: fail now, not after training
    preflight(
        settings,
        data_dir="--eval-data-dir",
        needs="--eval-limit (the evaluation after training)",
        fix="drop --eval-limit",
    )
    return settings


def load_rows(path: str, n: int | None) -> list[dict]:
    """The first ``n`` training rows of a JSONL file; every line is parsed and checked, and an
    error names the file and the line."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"--data {path!r} does not exist; give a JSONL of question/answer or messages rows.")
    if not os.path.isfile(path):
        raise ValueError(f"--data {path!r} is a directory, not a JSONL file of question/answer or messages rows.")
    rows = []
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                row = _parse_row(line, f"--data {path}:{lineno}")
                if n is None or len(rows) < n:
                    rows.append(row)
    except UnicodeDecodeError:
        raise ValueError(f"--data {path!r} is not UTF-8 text; give a JSONL file.") from None
    if not rows:
        raise ValueError(f"--data {path!r} holds no rows.")
    return rows


def _parse_row(line: str, where: str) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{where}: not valid JSON ({exc.msg}, column {exc.colno}); write one JSON object per line."
        ) from None
    if not isinstance(row, dict):
        raise ValueError(
            f"{where}: a row must be a JSON object with 'question'+'answer', 'messages' or 'text' "
            f"(got a JSON {type(row).__name__})."
        )
    if "messages" in row:
        msgs = row["messages"]
        if not (
            isinstance(msgs, list)
            and msgs
            and all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs)
        ):
            raise ValueError(
                f'{where}: \'messages\' must be a non-empty list of {{"role": ..., "content": ...}} objects.'
            )
        return {"messages": msgs}
    if "question" in row and "answer" in row:
        if not (isinstance(row["question"], str) and isinstance(row["answer"], str)):
            raise ValueError(f"{where}: 'question' and 'answer' must be strings.")
        return {"text": gsm8k.training_text(row)}
    if "text" in row:
        if not isinstance(row["text"], str) or not row["text"].strip():
            raise ValueError(f"{where}: 'text' must be a non-empty string.")
        return {"text": row["text"]}
    raise ValueError(f"{where}: a row needs 'question'+'answer', 'messages' or 'text' (got {sorted(row)}).")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        # Everything that needs only the arguments, files and config.json, before any weights load.
        mb = config_from_args(args)
        check_numbers(args)
        rows = load_rows(args.data, rows_needed(args))
        eval_settings = eval_settings_from_args(args)
        check_setup(args)
        if args.reentrant is not None and not args.gradient_checkpointing:
            raise ValueError(
                f"--{'' if args.reentrant else 'no-'}reentrant chooses the gradient checkpointing mode; "
                "add --gradient-checkpointing or drop it."
            )
        from midblock_plugin.integrations.trl import build_plan

        # The plan is built once, from config.json only: the window is checked against the model here.
        if args.model == "tiny":
            from midblock_plugin.testing import tiny_config

            plan = build_plan(tiny_config("llama", num_layers=TINY_LAYERS), mb)
        else:
            plan = build_plan(args.model, mb)
        # Another run holding --output-dir, or a finished run there with another plan: refused now.
        from midblock_plugin.integrations.trl import check_output_dir

        check_output_dir(args.output_dir, plan, overwrite=args.overwrite, overwrite_hint="--overwrite")
    except (ValueError, OSError, ImportError) as exc:
        print(f"sft_midblock.py: error: {exc}", file=sys.stderr)
        return 2

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from midblock_plugin.integrations import trl as midblock_trl

    cpu = not torch.cuda.is_available()
    extra = {}
    if args.deepspeed:
        from midblock_plugin.deepspeed_configs import config_path

        extra["deepspeed"] = config_path(args.deepspeed)
    deepspeed_on = bool(args.deepspeed) or os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true"
    if deepspeed_on:
        if cpu:
            # DeepSpeed on CPU (tests, laptops): gloo and accelerate's configured state, else the
            # HF batch-size arithmetic assumes world size 1 (README: "DeepSpeed ZeRO-3 and multi-node").
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
    try:  # the checkpointing mode this DeepSpeed can run (--reentrant / --no-reentrant, else midblock's choice)
        checkpointing = midblock_trl.checkpointing_mode(sft, args.reentrant)
    except ValueError as exc:
        print(f"sft_midblock.py: error: --no-reentrant: {exc}", file=sys.stderr)
        return 2
    if checkpointing is not None and sft.process_index == 0:
        print(
            f"sft_midblock.py: gradient checkpointing: {midblock_trl.describe_mode(*checkpointing)}", file=sys.stderr
        )
    if args.model == "tiny":
        from midblock_plugin.testing import tiny_model, tiny_tokenizer

        model, tok = tiny_model("llama", num_layers=TINY_LAYERS, seed=args.seed), tiny_tokenizer()
    else:
        tok = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16 if args.bf16 else torch.float32)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token

    peft_config = plan.lora_config() if plan.mode == "lora" else None
    callback = midblock_trl.MidBlockCallback(plan=plan, overwrite=args.overwrite, overwrite_hint="--overwrite")
    trainer = SFTTrainer(
        model=model,
        args=sft,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=peft_config,
        callbacks=[callback],
    )
    callback.bind(trainer)
    if checkpointing is not None and midblock_trl.keep_checkpointing_mode(trainer, checkpointing[0]):
        if trainer.is_world_process_zero():
            print(
                f"sft_midblock.py: gradient checkpointing: kept {midblock_trl.describe_mode(*checkpointing)}; "
                "TRL switches PEFT + ZeRO-3 to reentrant, a workaround only DeepSpeed < 0.19.3 needs",
                file=sys.stderr,
            )
    eval_callback = None
    if eval_settings is not None:
        from midblock_plugin.evaluation import EvalCallback

        eval_callback = EvalCallback(eval_settings, trainer=trainer)
        trainer.add_callback(eval_callback)
    trainer.train()
    trainer.save_model(args.output_dir)
    if trainer.is_world_process_zero():
        tok.save_pretrained(args.output_dir)
        if peft_config:  # what was trained, and how to serve it (the rsLoRA trap)
            write_model_card(args.output_dir, plan)
    print(f"saved {'LoRA adapter' if peft_config else 'model'} to {args.output_dir}", file=sys.stderr)
    # All ranks done (rank 0 wrote the tokenizer), then leave the process group explicitly
    # rather than at interpreter exit (PyTorch warns about a group left to the exit).
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    if eval_callback is not None and eval_settings.backend != "in-memory":
        eval_callback.run_after_save(args.output_dir)  # rank 0: midblock eval on the saved model, its own process
    if eval_callback is not None and eval_callback.errors:  # the model is saved; only the evaluation is missing
        failed = "; ".join(f"{label}: {error}" for label, error in eval_callback.errors.items())
        print(
            f"sft_midblock.py: the evaluation failed after training ({failed}); the "
            f"{'LoRA adapter' if peft_config else 'model'} is saved in {args.output_dir}; exit {EVAL_FAILED_EXIT}",
            file=sys.stderr,
        )
        return EVAL_FAILED_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
