"""``midblock eval``: evaluate a saved model (optionally with a LoRA adapter) with lm-eval,
exactly as :class:`~midblock_plugin.evaluation.callback.EvalCallback` does at train end.

    midblock eval MODEL_DIR [--adapter ADAPTER_DIR] [--tasks gsm8k] [--data-dir DIR]
                  [--limit N] [--num-fewshot K] [--output FILE] ...

With ``--output FILE`` the JSON (the same object as ``<output_dir>/eval/<task>.json``)
goes to FILE and the table to stdout; without it the JSON goes to stdout and the table
to stderr. ``MODEL_DIR`` may also be an adapter directory (its ``adapter_config.json``
names the base model). Options are checked before any model is loaded.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from midblock_plugin.data import gsm8k
from midblock_plugin.evaluation.settings import EvalSettings
from midblock_plugin.io import to_json, write_jsonl, write_text_atomic


def _limit(text: str) -> int | float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--limit {text!r} is not a number; give rows per task (e.g. 100) or a fraction (e.g. 0.1)") from None
    return int(value) if value.is_integer() else value


def _batch(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``eval`` subcommand (cheap: imports nothing heavy)."""
    d = EvalSettings.__dataclass_fields__
    h = lambda name: d[name].metadata["help"]  # noqa: E731
    p = subparsers.add_parser(
        "eval",
        help="Evaluate a saved model with lm-eval's GSM8K (or other) task; writes the same JSON as training.",
        description=(
            "Evaluate a saved model (optionally with a PEFT adapter) with lm-eval's own task, exactly as "
            "EvalCallback does at the end of training, and print / write the same JSON."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", help="A saved model directory (or an adapter directory).")
    p.add_argument("--adapter", metavar="ADAPTER_DIR", help="A PEFT adapter directory to apply on MODEL_DIR.")
    p.add_argument("--tasks", default="gsm8k", help=h("tasks"))
    p.add_argument("--data-dir", metavar="DIR", help=h("data_dir"))
    p.add_argument("--limit", type=_limit, help=h("limit"))
    p.add_argument("--num-fewshot", type=int, metavar="K", help=h("num_fewshot"))
    p.add_argument("--batch-size", type=_batch, default=8, help=h("batch_size"))
    p.add_argument("--max-gen-toks", type=int, metavar="N", help=h("max_gen_toks"))
    p.add_argument("--max-length", type=int, metavar="N", help=h("max_length"))
    p.add_argument("--apply-chat-template", nargs="?", const=True, default=False, metavar="NAME", help=h("apply_chat_template"))
    p.add_argument("--fewshot-as-multiturn", action=argparse.BooleanOptionalAction, default=None, help=h("fewshot_as_multiturn"))
    p.add_argument("--system-instruction", help=h("system_instruction"))
    p.add_argument("--save-samples", action="store_true", help="Also write every scored sample next to --output as <task>.samples.jsonl.")
    p.add_argument("--output", metavar="FILE", help="Write the JSON here (default: stdout, with the table on stderr).")
    p.add_argument("--device", default=None, help="Device for the model (default: cuda if available, else cpu).")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"], help="Weights dtype when loading.")
    p.add_argument("--trust-remote-code", action="store_true", help="Allow custom model code from MODEL_DIR.")
    p.set_defaults(func=run)
    return p


_FLAG_NAMES = re.compile(
    r"\b(tasks|num_fewshot|limit|batch_size|max_gen_toks|max_length|apply_chat_template|"
    r"fewshot_as_multiturn|system_instruction|data_dir)(=|:)"
)


def _as_flags(exc: Exception) -> Exception:
    """The same error with settings field names shown as command-line flags."""
    text = _FLAG_NAMES.sub(lambda m: "--" + m.group(1).replace("_", "-") + (" " if m.group(2) == "=" else ":"), str(exc))
    text = text.replace("data_dir=DIR (EvalSettings / YAML) or ", "").replace("use --limit None for", "omit --limit for")
    return type(exc)(text)


def settings_from_args(args: argparse.Namespace) -> EvalSettings:
    """The :class:`EvalSettings` the command line asks for (validated)."""
    if args.save_samples and not args.output:
        raise ValueError("--save-samples needs --output FILE (samples are written next to it).")
    try:
        return _settings(args)
    except (ValueError, FileNotFoundError) as exc:
        raise _as_flags(exc) from None


def _settings(args: argparse.Namespace) -> EvalSettings:
    return EvalSettings(
        tasks=args.tasks,
        num_fewshot=args.num_fewshot,
        limit=args.limit,
        batch_size=args.batch_size,
        max_gen_toks=args.max_gen_toks,
        max_length=args.max_length,
        apply_chat_template=args.apply_chat_template,
        fewshot_as_multiturn=args.fewshot_as_multiturn,
        system_instruction=args.system_instruction,
        data_dir=args.data_dir,
        save_samples=args.save_samples,
    )


def _check_dirs(args: argparse.Namespace) -> tuple[Path, Path | None]:
    model_dir = Path(args.model_dir).expanduser()
    if not model_dir.is_dir():
        raise FileNotFoundError(f"MODEL_DIR {str(model_dir)!r} is not a directory; give a directory written by save_pretrained / trainer.save_model.")
    adapter = Path(args.adapter).expanduser() if args.adapter else None
    if adapter is None and not (model_dir / "config.json").is_file() and (model_dir / "adapter_config.json").is_file():
        adapter, model_dir = model_dir, None  # an adapter directory: base model named inside
    if model_dir is not None and not (model_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"MODEL_DIR {str(model_dir)!r} has no config.json (nor adapter_config.json); it is not a saved model. "
            "Give the directory trainer.save_model / save_pretrained wrote."
        )
    if adapter is not None and not (adapter / "adapter_config.json").is_file():
        raise FileNotFoundError(f"--adapter {str(adapter)!r} has no adapter_config.json; give a directory written by PeftModel.save_pretrained.")
    return model_dir, adapter


def _base_of(adapter: Path) -> str:
    """The base model an adapter directory names (``base_model_name_or_path``)."""
    from midblock_plugin.checks import read_adapter_config

    base = read_adapter_config(adapter, "MODEL_DIR").get("base_model_name_or_path")
    if not base or not isinstance(base, str):
        raise ValueError(f"{adapter}/adapter_config.json names no base_model_name_or_path; pass MODEL_DIR and --adapter {adapter}.")
    return base


def check_inputs(args: argparse.Namespace, settings: EvalSettings) -> tuple[Path | str, Path | None]:
    """Everything that needs only the arguments, files and config.json, before any weights
    load: the output path, the optional packages, the device, every line of the local GSM8K,
    the task names, the model (a decoder with weights) and the adapter against it.
    Returns ``(model, adapter)``."""
    from midblock_plugin import checks

    if args.output is not None:
        checks.check_output_file(args.output, "--output")
    checks.check_dependency("lm_eval", "midblock eval")
    checks.check_device(args.device, "--device")
    data_dir = settings.resolved_data_dir()
    if data_dir is not None:
        checks.check_gsm8k_dir(data_dir, "data_dir")
    from midblock_plugin.evaluation.tasks import plan_tasks

    plan_tasks(settings)  # unknown task names fail here
    model_dir, adapter = _check_dirs(args)
    if adapter is not None:
        checks.check_dependency("peft", "midblock eval --adapter")
    if model_dir is None:
        base = _base_of(adapter)
        flag = f"the base model named in {adapter}/adapter_config.json,"
    else:
        base, flag = str(model_dir), "MODEL_DIR"
    config = checks.check_model_dir(base, flag, weights=True, trust_remote_code=args.trust_remote_code)
    if adapter is not None:
        checks.check_adapter(adapter, config, "--adapter", base_flag="MODEL_DIR" if model_dir is not None else "its base model")
    return (model_dir if model_dir is not None else base), adapter


def load_model(model_dir: Path | str | None, adapter: Path | None, device: str | None = None, dtype: str = "auto", trust_remote_code: bool = False):
    """Load the model (+ adapter) and tokenizer for evaluation; returns ``(model, tokenizer)``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if model_dir is None:
        model_dir = _base_of(adapter)
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch_dtype, trust_remote_code=trust_remote_code)
    tok_dir = adapter if adapter is not None and (adapter / "tokenizer_config.json").is_file() else model_dir
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), trust_remote_code=trust_remote_code)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    model.eval()
    return model, tokenizer


def run(args: argparse.Namespace) -> int:
    """Run ``midblock eval``; returns the exit status."""
    settings = settings_from_args(args)
    if settings.data_dir is None and settings.resolved_data_dir() is None:
        print(
            f"midblock eval: no local GSM8K given (--data-dir DIR, or ${gsm8k.ENV}); using the hub "
            f"({gsm8k.HUB_DATASET[0]}). Offline, pass --data-dir DIR (or --data-dir {gsm8k.HUB} to silence this).",
            file=sys.stderr,
        )
    try:
        model_dir, adapter = check_inputs(args, settings)
    except (ValueError, FileNotFoundError) as exc:
        raise _as_flags(exc) from None
    from midblock_plugin.evaluation.results import format_table, task_report
    from midblock_plugin.evaluation.runner import EvaluationError, evaluate_model

    model, tokenizer = load_model(model_dir, adapter, args.device, args.dtype, args.trust_remote_code)
    try:
        report = evaluate_model(model, tokenizer, settings, label="final", print_table=False)
    except EvaluationError as exc:
        print(f"midblock eval: error: {exc}", file=sys.stderr)
        return 1
    document: dict[str, Any]
    if len(report["tasks"]) == 1:
        document = task_report(report, report["tasks"][0])
    else:
        document = {k: v for k, v in report.items() if k not in ("samples", "files")}
    text = to_json(document)
    table = format_table(report)
    if args.output:
        out = write_text_atomic(args.output, text + "\n")
        for task, rows in (report.get("samples") or {}).items():
            name = f"{out.stem}.samples.jsonl" if len(report["tasks"]) == 1 else f"{out.stem}.{task}.samples.jsonl"
            write_jsonl(out.with_name(name), rows)
        print(table)
        print(f"wrote {out}")
    else:
        print(table, file=sys.stderr)
        print(text)
    return 0
