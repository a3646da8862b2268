"""``midblock eval``: evaluate a saved model (optionally with a LoRA adapter) with lm-eval,
exactly as :class:`~midblock_plugin.evaluation.callback.EvalCallback` does at train end.

    midblock eval MODEL_DIR [--adapter ADAPTER_DIR] [--backend {hf,vllm}] [--protocol {lm-eval,paper,authors}]
                  [--tasks gsm8k] [--data-dir DIR] [--limit N] [--num-fewshot K] [--output FILE] ...

``--backend hf`` (default) runs lm-eval's ``HFLM`` on the loaded model, the in-memory
evaluation's code path; under ``torchrun --nproc-per-node N -m midblock_plugin.cli
eval ...`` (or ``accelerate launch`` on GPUs) the ranks share the generation with unchanged results.
``--backend vllm`` runs lm-eval's own vLLM model on the saved model (an adapter is merged
into a temporary copy first; ``--tensor-parallel-size``, ``--data-parallel-size`` and
``--vllm-args`` are passed through). ``--protocol paper`` is the paper's GSM8K protocol
(zero-shot, greedy, 64 new tokens, last number), ``lm-eval`` (default) lm-eval's task defaults.

With ``--output FILE`` the JSON (the same object as ``<output_dir>/eval/<task>.json``)
goes to FILE and the table to stdout; without it the JSON goes to stdout and the table
to stderr. ``MODEL_DIR`` may also be an adapter directory (its ``adapter_config.json``
names the base model). Options are checked before any model is loaded.

This module only parses: the flags are generated from the fields of
:class:`~midblock_plugin.evaluation.settings.EvalSettings` (what to evaluate) and
:class:`~midblock_plugin.evaluation.standalone.SavedEvalOptions` (the command's own inputs),
and :func:`midblock_plugin.evaluation.standalone.run` does the rest.
"""

from __future__ import annotations

import argparse

from midblock_plugin.cli.fields import add_dataclass_arguments, values_from_args
from midblock_plugin.evaluation.settings import EvalSettings
from midblock_plugin.evaluation.standalone import SavedEvalOptions
from midblock_plugin.rules import flag_spelling, respell


#: The ``EvalSettings`` fields ``midblock eval`` takes as flags (the others are training-time options).
EVAL_FLAGS = (
    "backend",
    "protocol",
    "tensor_parallel_size",
    "data_parallel_size",
    "vllm_args",
    "tasks",
    "data_dir",
    "limit",
    "num_fewshot",
    "batch_size",
    "max_gen_toks",
    "max_length",
    "fewshot_as_multiturn",
    "system_instruction",
    "save_samples",
)
#: The backends of a saved model (``in-memory`` is the trainer's).
SAVED_BACKENDS = ("hf", "vllm")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``eval`` subcommand (cheap: imports nothing heavy)."""
    from midblock_plugin.cli import EXIT_STATUSES

    p = subparsers.add_parser(
        "eval",
        help="Evaluate a saved model with lm-eval's GSM8K (or other) task; writes the same JSON as training.",
        description=(
            "Evaluate a saved model (optionally with a PEFT adapter) with lm-eval's own task, exactly as "
            "EvalCallback does at the end of training, and print / write the same JSON."
        ),
        epilog=EXIT_STATUSES,
    )
    add_dataclass_arguments(p, SavedEvalOptions, only=["model_dir", "adapter"])
    add_dataclass_arguments(
        p,
        EvalSettings,
        only=EVAL_FLAGS,
        defaults={"backend": "hf"},
        help={
            "backend": "hf: lm-eval's HFLM (data-parallel under accelerate launch / torchrun); vllm: lm-eval's vLLM model "
            "on the saved model, an adapter merged into a temporary copy (default: hf).",
        },
    )
    _restrict_choices(p, "backend", SAVED_BACKENDS)
    chat = EvalSettings.__dataclass_fields__["apply_chat_template"]
    p.add_argument(
        "--apply-chat-template", nargs="?", const=True, default=False, metavar="NAME", help=chat.metadata["help"]
    )  # a bool or a name: the one flag of its own shape
    add_dataclass_arguments(p, SavedEvalOptions, skip=["model_dir", "adapter"])
    p.set_defaults(func=run)
    return p


def _restrict_choices(parser: argparse.ArgumentParser, dest: str, allowed: tuple[str, ...]) -> None:
    for action in parser._actions:
        if action.dest == dest:
            action.choices = allowed


def settings_from_args(args: argparse.Namespace) -> EvalSettings:
    """The :class:`EvalSettings` the command line asks for (validated; errors name the flags)."""
    try:
        return EvalSettings(**values_from_args(args, EvalSettings))
    except ValueError as exc:
        raise respell(exc, flag_spelling) from None


def run(args: argparse.Namespace) -> int:
    """Run ``midblock eval``; returns the exit status."""
    from midblock_plugin.evaluation import standalone

    settings = settings_from_args(args)
    try:
        return standalone.run(SavedEvalOptions(**values_from_args(args, SavedEvalOptions)), settings)
    except ValueError as exc:
        raise respell(exc, flag_spelling) from None
