"""``midblock eval``: evaluate a saved model (optionally with a LoRA adapter) with lm-eval,
exactly as :class:`~midblock_plugin.evaluation.callback.EvalCallback` does at train end.

    midblock eval MODEL_DIR [--adapter ADAPTER_DIR] [--backend {hf,vllm}] [--protocol {lm-eval,paper}]
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
"""

from __future__ import annotations

import argparse
import os
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
    p.add_argument("--backend", choices=["hf", "vllm"], default="hf",
                   help="hf: lm-eval's HFLM (data-parallel under accelerate launch / torchrun); vllm: lm-eval's vLLM "
                   "model on the saved model, an adapter merged into a temporary copy (pip install 'midblock-plugin[vllm]').")
    p.add_argument("--protocol", choices=["lm-eval", "paper"], default="lm-eval", help=h("protocol"))
    p.add_argument("--tensor-parallel-size", type=int, default=1, metavar="N", help=h("tensor_parallel_size"))
    p.add_argument("--data-parallel-size", type=int, default=1, metavar="N", help=h("data_parallel_size") + " Needs Ray when > 1.")
    p.add_argument("--vllm-args", metavar="K=V,...", help=h("vllm_args"))
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
    r"fewshot_as_multiturn|system_instruction|data_dir|protocol|backend|tensor_parallel_size|"
    r"data_parallel_size|vllm_args)(=|:)"
)


def _as_flags(exc: Exception) -> Exception:
    """The same error with settings field names shown as command-line flags."""
    text = _FLAG_NAMES.sub(lambda m: "--" + m.group(1).replace("_", "-") + (" " if m.group(2) == "=" else ":"), str(exc))
    text = text.replace("data_dir=DIR (EvalSettings / YAML) or ", "").replace("use --limit None for", "omit --limit for")
    text = re.sub(r"\bLeave (num_fewshot|max_gen_toks) unset", lambda m: "Leave --" + m.group(1).replace("_", "-") + " unset", text)
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
        protocol=args.protocol,
        backend=args.backend,
        tensor_parallel_size=args.tensor_parallel_size,
        data_parallel_size=args.data_parallel_size,
        vllm_args=args.vllm_args,
    )


def _check_dirs(args: argparse.Namespace) -> tuple[Path, Path | None]:
    model_dir = Path(args.model_dir).expanduser()
    if not model_dir.is_dir():
        raise FileNotFoundError(f"MODEL_DIR {str(model_dir)!r} is not a directory; give a directory written by save_pretrained / trainer.save_model.")
    adapter = Path(args.adapter).expanduser() if args.adapter else None
    from midblock_plugin.checks import WEIGHT_FILES

    has_weights = any((model_dir / name).is_file() for name in WEIGHT_FILES)
    if adapter is None and (model_dir / "adapter_config.json").is_file() and not ((model_dir / "config.json").is_file() and has_weights):
        # an adapter directory (Axolotl also saves the base config.json next to the adapter): base model named inside
        adapter, model_dir = model_dir, None
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
    from midblock_plugin.evaluation.saved import check_backend

    check_backend(settings.backend, settings)  # vLLM missing: fail before any work
    if settings.backend == "vllm" and _launched_world_size() > 1:
        raise ValueError(
            "--backend vllm runs in one process and spreads over GPUs itself: do not start it under "
            "accelerate launch / torchrun; use --tensor-parallel-size / --data-parallel-size."
        )
    if settings.backend == "vllm" and args.device not in (None, "auto", "cuda"):
        raise ValueError(f"--device {args.device} does not apply to --backend vllm (it uses the visible GPUs; set CUDA_VISIBLE_DEVICES).")
    if settings.backend == "hf":
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


def _launched_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def _init_distributed(device: str | None) -> tuple[int, str | None]:
    """Under ``accelerate launch`` / ``torchrun`` (``WORLD_SIZE > 1``): start the process group
    (gloo on CPU, nccl on CUDA) and pick this rank's device; returns ``(rank, device)``."""
    import torch
    import torch.distributed as dist

    if _launched_world_size() <= 1:
        return 0, device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    if cuda:
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), device


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

    rank = 0
    try:
        if settings.backend == "vllm":
            report = _evaluate_vllm(model_dir, adapter, settings, args)
        else:
            rank, device = _init_distributed(args.device)
            model, tokenizer = load_model(model_dir, adapter, device, args.dtype, args.trust_remote_code)
            report = evaluate_model(model, tokenizer, settings, label="final", print_table=False)
    except EvaluationError as exc:
        print(f"midblock eval: error: {exc}", file=sys.stderr)
        return 1
    finally:
        _finish_distributed()
    report["backend"] = settings.backend
    if rank != 0:  # data-parallel: rank 0 writes and prints
        return 0
    document: dict[str, Any]
    if len(report["tasks"]) == 1:
        document = task_report(report, report["tasks"][0])
    else:
        document = {k: v for k, v in report.items() if k not in ("samples", "files")}
    document["backend"] = settings.backend
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


def _finish_distributed() -> None:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    except Exception:  # pragma: no cover - best effort at exit
        pass


def _evaluate_vllm(model_dir: Path | str, adapter: Path | None, settings: EvalSettings, args: argparse.Namespace) -> dict[str, Any]:
    """lm-eval's vLLM model on the saved model (an adapter merged into a temporary copy)."""
    from midblock_plugin.evaluation.runner import evaluate_model
    from midblock_plugin.evaluation.saved import make_vllm_lm, merged_model, vllm_model_args

    base = model_dir if model_dir is not None else None
    if base is None:
        base = _base_of(adapter)
    with merged_model(base, adapter, dtype=args.dtype, trust_remote_code=args.trust_remote_code) as path:
        lm = make_vllm_lm(vllm_model_args(path, settings, dtype=args.dtype, trust_remote_code=args.trust_remote_code))
        report = evaluate_model(lm, None, settings, label="final", print_table=False)
    report["model"] = {"class": "VLLM", "name_or_path": str(model_dir), "adapter": str(adapter) if adapter else None,
                       "merged_adapter": adapter is not None, "lm_eval_lm": True}
    return report
