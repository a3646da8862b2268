"""The standalone evaluation of a saved model: what ``midblock eval`` runs once its flags are parsed.

:func:`run` is the one entry: it checks every input before any weights load
(:func:`check_inputs`), loads the model (+ adapter) with ``--backend hf`` (under
``torchrun`` / ``accelerate launch`` it starts the process group first, and the ranks share
the generation) or evaluates with lm-eval's vLLM model with ``--backend vllm`` (an adapter
merged into a temporary copy, :mod:`.saved`), then writes the same JSON the in-memory
evaluation writes. The command's own inputs (model directory, adapter, output file,
device, dtype) are :class:`SavedEvalOptions`; what to evaluate is an
:class:`~midblock_plugin.evaluation.settings.EvalSettings`. Both generate the command's
flags (:mod:`midblock_plugin.cli.eval`).

Errors about the inputs name them as the command line spells them (``MODEL_DIR``,
``--adapter``, ``--output``, ``--device``), before any weights load: the model's
``config.json`` (a decoder; bitsandbytes installed for a quantized checkpoint), the adapter's
layers and widths against it, and GSM8K's whereabouts (:func:`~.preflight.preflight`).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional

from midblock_plugin.data import gsm8k
from midblock_plugin.evaluation.settings import EvalSettings
from midblock_plugin.io import to_json, write_jsonl, write_text_atomic


#: Weight dtypes a saved model may be loaded in.
Dtype = Literal["auto", "float32", "bfloat16", "float16"]


@dataclass
class SavedEvalOptions:
    """What ``midblock eval`` evaluates: the saved model, its adapter, where the JSON goes, and how to load it."""

    model_dir: str = field(
        metadata={
            "help": "A saved model directory (or an adapter directory, whose adapter_config.json "
            "names the base model).",
            "positional": True,
            "metavar": "MODEL_DIR",
        }
    )
    adapter: Optional[str] = field(
        default=None, metadata={"help": "A PEFT adapter directory to apply on MODEL_DIR.", "metavar": "ADAPTER_DIR"}
    )
    output: Optional[str] = field(
        default=None,
        metadata={"help": "Write the JSON here (default: stdout, with the table on stderr).", "metavar": "FILE"},
    )
    device: Optional[str] = field(
        default=None, metadata={"help": "Device for the model (default: cuda if available, else cpu)."}
    )
    dtype: Dtype = field(default="auto", metadata={"help": "Weights dtype when loading."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from MODEL_DIR."})


# --------------------------------------------------------------------------- checks


def _check_dirs(opts: SavedEvalOptions) -> tuple[Path | None, Path | None]:
    from midblock_plugin.checks import WEIGHT_FILES

    model_dir = Path(opts.model_dir).expanduser()
    if not model_dir.is_dir():
        raise FileNotFoundError(
            f"MODEL_DIR {str(model_dir)!r} is not a directory; give a directory written by "
            "save_pretrained / trainer.save_model."
        )
    adapter = Path(opts.adapter).expanduser() if opts.adapter else None
    has_weights = any((model_dir / name).is_file() for name in WEIGHT_FILES)
    if (
        adapter is None
        and (model_dir / "adapter_config.json").is_file()
        and not ((model_dir / "config.json").is_file() and has_weights)
    ):
        # an adapter directory (Axolotl also saves the base config.json next to the adapter): base model named inside
        adapter, model_dir = model_dir, None
    if model_dir is not None and not (model_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"MODEL_DIR {str(model_dir)!r} has no config.json (nor adapter_config.json); it is not a saved model. "
            "Give the directory trainer.save_model / save_pretrained wrote."
        )
    if adapter is not None and not (adapter / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"--adapter {str(adapter)!r} has no adapter_config.json; give a directory written by "
            "PeftModel.save_pretrained."
        )
    return model_dir, adapter


def _base_of(adapter: Path) -> str:
    """The base model an adapter directory names (``base_model_name_or_path``)."""
    from midblock_plugin.checks import read_adapter_config

    base = read_adapter_config(adapter, "MODEL_DIR").get("base_model_name_or_path")
    if not base or not isinstance(base, str):
        raise ValueError(
            f"{adapter}/adapter_config.json names no base_model_name_or_path; pass MODEL_DIR and --adapter {adapter}."
        )
    return base


def check_inputs(opts: SavedEvalOptions, settings: EvalSettings) -> tuple[str, Path | None]:
    """Everything that needs only the arguments, files and config.json, before any weights
    load: the output path, the optional packages, the device, the local GSM8K (every line,
    unless ``settings`` already checked it), the task names, the model (a decoder with
    weights) and the adapter against it. Returns ``(model, adapter)``: the model directory
    or the base model an adapter directory names."""
    from midblock_plugin import checks
    from midblock_plugin.evaluation.preflight import preflight
    from midblock_plugin.evaluation.saved import check_backend
    from midblock_plugin.evaluation.tasks import plan_tasks

    if opts.output is not None:
        checks.check_output_file(opts.output, "--output")
    checks.check_dependency("lm_eval", "midblock eval")
    check_backend(settings.backend, settings)  # vLLM missing: fail before any work
    if settings.backend == "vllm" and launched_world_size() > 1:
        raise ValueError(
            "--backend vllm runs in one process and spreads over GPUs itself: do not start it under "
            "accelerate launch / torchrun; use --tensor-parallel-size / --data-parallel-size."
        )
    if settings.backend == "vllm" and opts.device not in (None, "auto", "cuda"):
        raise ValueError(
            f"--device {opts.device} does not apply to --backend vllm (it uses the visible GPUs; set "
            "CUDA_VISIBLE_DEVICES)."
        )
    if settings.backend != "vllm":
        checks.check_device(opts.device, "--device")
    if settings.data_dir is None and os.environ.get(gsm8k.ENV):  # EvalSettings checked an explicit data_dir
        checks.check_gsm8k_dir(os.environ[gsm8k.ENV], gsm8k.ENV)
    plan_tasks(settings)  # unknown task names fail here
    preflight(settings, data_dir="--data-dir", needs="midblock eval")  # GSM8K nowhere (offline, no local copy)
    model_dir, adapter = _check_dirs(opts)
    if adapter is not None:
        checks.check_dependency("peft", "midblock eval --adapter")
    if model_dir is None:
        base = _base_of(adapter)
        flag = f"the base model named in {adapter}/adapter_config.json,"
    else:
        base, flag = str(model_dir), "MODEL_DIR"
    config = checks.check_model_dir(base, flag, weights=True, trust_remote_code=opts.trust_remote_code)
    if adapter is not None:
        checks.check_adapter(
            adapter, config, "--adapter", base_flag="MODEL_DIR" if model_dir is not None else "its base model"
        )
    return base, adapter


# --------------------------------------------------------------------------- loading and processes


def load_model(
    model_dir: Path | str,
    adapter: Path | None,
    device: str | None = None,
    dtype: str = "auto",
    trust_remote_code: bool = False,
):
    """Load the model (+ adapter) and tokenizer for evaluation; returns ``(model, tokenizer)``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=torch_dtype, trust_remote_code=trust_remote_code
    )
    tok_dir = adapter if adapter is not None and (adapter / "tokenizer_config.json").is_file() else model_dir
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), trust_remote_code=trust_remote_code)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    model.eval()
    return model, tokenizer


def launched_world_size() -> int:
    """``WORLD_SIZE`` set by ``torchrun`` / ``accelerate launch`` (1 when not launched)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init_distributed(device: str | None) -> tuple[int, str | None]:
    """Under ``accelerate launch`` / ``torchrun`` (``WORLD_SIZE > 1``): start the process group
    (gloo on CPU, nccl on CUDA) and pick this rank's device; returns ``(rank, device)``."""
    import torch
    import torch.distributed as dist

    if launched_world_size() <= 1:
        return 0, device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    if cuda:
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), device


def finish_distributed() -> None:
    """End the process group :func:`init_distributed` started (best effort)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    except Exception:  # pragma: no cover - best effort at exit
        pass


def evaluate_vllm(
    model: Path | str, adapter: Path | None, settings: EvalSettings, opts: SavedEvalOptions
) -> dict[str, Any]:
    """lm-eval's vLLM model on the saved model (an adapter merged into a temporary copy)."""
    from midblock_plugin.evaluation.runner import evaluate_model
    from midblock_plugin.evaluation.saved import make_vllm_lm, merged_model, vllm_model_args

    with merged_model(model, adapter, dtype=opts.dtype, trust_remote_code=opts.trust_remote_code) as path:
        lm = make_vllm_lm(vllm_model_args(path, settings, dtype=opts.dtype, trust_remote_code=opts.trust_remote_code))
        report = evaluate_model(lm, None, settings, label="final", print_table=False)
    report["model"] = {
        "class": "VLLM",
        "name_or_path": str(model),
        "adapter": str(adapter) if adapter else None,
        "merged_adapter": adapter is not None,
        "lm_eval_lm": True,
    }
    return report


# --------------------------------------------------------------------------- the run


def run(opts: SavedEvalOptions, settings: EvalSettings, log: Callable[[str], Any] | None = None) -> int:
    """Evaluate the saved model ``opts`` names as ``settings`` say; returns the exit status
    (0, or :data:`~midblock_plugin.evaluation.preflight.EVAL_FAILED_EXIT` when lm-eval failed).
    Input errors raise before any weights load."""
    from midblock_plugin.evaluation.preflight import EVAL_FAILED_EXIT
    from midblock_plugin.evaluation.results import format_table, task_report
    from midblock_plugin.evaluation.runner import EvaluationError, evaluate_model

    log = log or (lambda text: print(text, file=sys.stderr))
    if settings.save_samples and not opts.output:
        raise ValueError("--save-samples needs --output FILE (samples are written next to it).")
    if settings.data_dir is None and not os.environ.get(gsm8k.ENV):
        log(
            f"midblock eval: no local GSM8K given (--data-dir DIR, or ${gsm8k.ENV}); using the hub "
            f"({gsm8k.HUB_DATASET[0]}). Offline, pass --data-dir DIR (or --data-dir {gsm8k.HUB} to silence this)."
        )
    model, adapter = check_inputs(opts, settings)
    rank = 0
    try:
        if settings.backend == "vllm":
            report = evaluate_vllm(model, adapter, settings, opts)
        else:
            rank, device = init_distributed(opts.device)
            loaded, tokenizer = load_model(model, adapter, device, opts.dtype, opts.trust_remote_code)
            report = evaluate_model(loaded, tokenizer, settings, label="final", print_table=False)
    except EvaluationError as exc:
        log(f"midblock eval: the evaluation failed: {exc}")
        return EVAL_FAILED_EXIT
    finally:
        finish_distributed()
    report["backend"] = settings.backend
    if rank != 0:  # data-parallel: rank 0 writes and prints
        return 0
    write_report(report, settings, opts.output, format_table(report), task_report)
    return 0


def write_report(report: dict[str, Any], settings: EvalSettings, output: str | None, table: str, task_report) -> None:
    """The JSON (one task: the same object as ``<output_dir>/eval/<task>.json``) to ``output`` with the
    table on stdout, or the JSON to stdout with the table on stderr; samples next to ``output``."""
    document: dict[str, Any]
    if len(report["tasks"]) == 1:
        document = task_report(report, report["tasks"][0])
    else:
        document = {k: v for k, v in report.items() if k not in ("samples", "files")}
    document["backend"] = settings.backend
    text = to_json(document)
    if output:
        out = write_text_atomic(output, text + "\n")
        for task, rows in (report.get("samples") or {}).items():
            name = f"{out.stem}.samples.jsonl" if len(report["tasks"]) == 1 else f"{out.stem}.{task}.samples.jsonl"
            write_jsonl(out.with_name(name), rows)
        print(table)
        print(f"wrote {out}")
    else:
        print(table, file=sys.stderr)
        print(text)
