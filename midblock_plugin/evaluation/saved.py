"""Evaluation of a *saved* model in its own process: the ``hf`` and ``vllm`` backends.

In-memory evaluation (:func:`~midblock_plugin.evaluation.runner.evaluate_model`) reuses the
trained model as it is; at scale it is the wrong tool (a partitioned 32B model gathers
every parameter for every generated token). After the save, ``midblock eval MODEL
[--adapter A] --backend {hf,vllm}`` evaluates the saved model instead:

* ``hf``: lm-eval's ``HFLM`` on the loaded model (and adapter), exactly the in-memory
  evaluation's code path, so the results equal it; under ``torchrun`` or ``accelerate
  launch --num_processes N`` (GPUs) the ranks share the generation (:mod:`.distributed`),
  results unchanged.
* ``vllm``: lm-eval's own ``VLLM`` model (``lm_eval.models.vllm_causallms.VLLM``) on the
  saved model, with a LoRA adapter merged into a temporary full copy first
  (:func:`merged_model`); ``tensor_parallel_size``, ``data_parallel_size`` and any
  ``vllm_args`` are passed through to it (:func:`vllm_model_args`).

:func:`evaluate_after_save` is what a training script calls once the model is saved (the
TRL example, Axolotl's ``midblock_eval: {backend: ...}``): rank 0 starts ``midblock eval``
in a subprocess and reads back its JSON; the other ranks return at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

from midblock_plugin.evaluation.settings import EvalSettings, parse_model_args
from midblock_plugin.rules import check_dependency, install_hint


#: The pip extra that installs vLLM for ``--backend vllm`` (from :data:`midblock_plugin.rules.INSTALL_HINTS`).
VLLM_EXTRA = install_hint("vllm")


def check_backend(backend: str, settings: EvalSettings | None = None) -> None:
    """Refuse a backend whose packages are missing, before any work starts.

    ``vllm`` needs the ``vllm`` package (and ``ray`` for ``data_parallel_size > 1``, which
    lm-eval dispatches through Ray workers)."""
    if backend == "vllm":
        check_dependency(
            "vllm", "--backend vllm", "or pip install vllm; a CUDA GPU is required. Without it use --backend hf"
        )
        if settings is not None and settings.data_parallel_size > 1:
            check_dependency(
                "ray",
                f"--data-parallel-size {settings.data_parallel_size} with --backend vllm (lm-eval "
                "runs one vLLM engine per Ray worker)",
                "or use --data-parallel-size 1",
            )
    elif backend not in ("hf", "in-memory"):
        raise ValueError(f"--backend {backend!r} is not a backend; allowed: 'hf', 'vllm'.")


@contextlib.contextmanager
def merged_model(
    model_dir: str | os.PathLike,
    adapter: str | os.PathLike | None,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    tmp_root: str | os.PathLike | None = None,
) -> Iterator[Path]:
    """``model_dir`` itself without an adapter; otherwise a temporary directory holding the
    base model with ``adapter`` merged in (``merge_and_unload``) and the tokenizer, deleted
    on exit. vLLM then serves a plain model (no LoRA rank limits, no LoRA kernels)."""
    if adapter is None:
        yield Path(model_dir)
        return
    tmp = Path(tempfile.mkdtemp(prefix="midblock-merged-", dir=tmp_root))
    try:
        merge_adapter(model_dir, adapter, tmp, dtype=dtype, trust_remote_code=trust_remote_code)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def merge_adapter(
    model_dir: str | os.PathLike,
    adapter: str | os.PathLike,
    dest: str | os.PathLike,
    dtype: str = "auto",
    trust_remote_code: bool = False,
) -> Path:
    """Save ``model_dir`` + ``adapter`` merged into a full model at ``dest`` (with the tokenizer:
    the adapter's if it saved one, else the base model's); returns ``dest``."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = Path(adapter)
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch_dtype, trust_remote_code=trust_remote_code)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    dest = Path(dest)
    merged.save_pretrained(str(dest))
    tok_dir = adapter if (adapter / "tokenizer_config.json").is_file() else model_dir
    AutoTokenizer.from_pretrained(str(tok_dir), trust_remote_code=trust_remote_code).save_pretrained(str(dest))
    return dest


def vllm_model_args(
    pretrained: str | os.PathLike, settings: EvalSettings, dtype: str = "auto", trust_remote_code: bool = False
) -> dict[str, Any]:
    """The keyword arguments of lm-eval's ``VLLM`` for ``settings``: the model, its tokenizer,
    tensor / data parallel sizes, dtype, batch size, context length, plus ``vllm_args``
    (typed as lm-eval's ``--model_args`` parser types them; they override the others)."""
    args: dict[str, Any] = {
        "pretrained": str(pretrained),
        "tokenizer": str(pretrained),
        "tensor_parallel_size": settings.tensor_parallel_size,
        "data_parallel_size": settings.data_parallel_size,
        "dtype": dtype,
        "batch_size": settings.batch_size,
        "trust_remote_code": trust_remote_code,
    }
    if settings.max_length is not None:
        args["max_model_len"] = settings.max_length
    if settings.vllm_args:
        parse_model_args(settings.vllm_args)  # a clear error for a malformed entry
        from midblock_plugin.compat import parse_lm_eval_args

        args.update(parse_lm_eval_args(settings.vllm_args))
    return args


def make_vllm_lm(model_args: dict[str, Any]):
    """lm-eval's own vLLM model (``lm_eval.models.vllm_causallms.VLLM``)."""
    check_backend("vllm")
    from lm_eval.models.vllm_causallms import VLLM

    return VLLM(**model_args)


# ------------------------------------------------------------------ after training
def eval_command(
    model_dir: str | os.PathLike,
    settings: EvalSettings,
    output: str | os.PathLike,
    adapter: str | os.PathLike | None = None,
    python: str | None = None,
) -> list[str]:
    """The ``midblock eval`` command line that evaluates the saved model as ``settings`` say
    (``torchrun --standalone --nproc-per-node N`` in front for ``backend="hf"`` with ``processes > 1``;
    ``midblock eval`` runs the same way under ``accelerate launch`` on GPUs)."""
    backend = "hf" if settings.backend == "in-memory" else settings.backend
    python = python or sys.executable
    if backend == "hf" and settings.processes > 1:
        # torchrun (standalone: its own rendezvous on a free port); works on CPU (gloo) and GPUs
        # alike, where accelerate launch only spreads over GPUs
        cmd = [
            python,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(settings.processes),
            "-m",
            "midblock_plugin.cli",
            "eval",
        ]
    else:
        cmd = [python, "-m", "midblock_plugin.cli", "eval"]
    cmd += [
        str(model_dir),
        "--backend",
        backend,
        "--output",
        str(output),
        "--protocol",
        settings.protocol,
        "--tasks",
        ",".join(settings.tasks),
        "--batch-size",
        str(settings.batch_size),
    ]
    if adapter is not None:
        cmd += ["--adapter", str(adapter)]
    data_dir = settings.resolved_data_dir()
    cmd += ["--data-dir", str(data_dir) if data_dir is not None else "hub"]
    for flag, value in (
        ("--limit", settings.limit),
        ("--num-fewshot", settings.num_fewshot),
        ("--max-gen-toks", settings.max_gen_toks),
        ("--max-length", settings.max_length),
        ("--system-instruction", settings.system_instruction),
    ):
        if value is not None:
            cmd += [flag, str(value)]
    if settings.apply_chat_template is True:
        cmd += ["--apply-chat-template"]
    elif settings.apply_chat_template:
        cmd += ["--apply-chat-template", str(settings.apply_chat_template)]
    if settings.fewshot_as_multiturn is not None:
        cmd += ["--fewshot-as-multiturn" if settings.fewshot_as_multiturn else "--no-fewshot-as-multiturn"]
    if settings.save_samples:
        cmd += ["--save-samples"]
    if backend == "vllm":
        cmd += [
            "--tensor-parallel-size",
            str(settings.tensor_parallel_size),
            "--data-parallel-size",
            str(settings.data_parallel_size),
        ]
        if settings.vllm_args:
            cmd += ["--vllm-args", settings.vllm_args]
    return cmd


def evaluate_after_save(
    model_dir: str | os.PathLike,
    settings: EvalSettings,
    output_dir: str | os.PathLike | None = None,
    adapter: str | os.PathLike | None = None,
    env: dict[str, str] | None = None,
    log=print,
) -> dict[str, Any] | None:
    """Evaluate the saved model in its own process (``midblock eval --backend ...``).

    Call it on every rank once the model is saved (``trainer.save_model(...)``). Rank 0
    frees its cached accelerator memory, runs :func:`eval_command` as a subprocess (its
    output streams through) and returns the per-task report it wrote to
    ``<output_dir>/<output_subdir>/<task>.json`` (``output_dir`` defaults to ``model_dir``);
    other ranks return ``None`` at once (they take no part). Raises ``RuntimeError`` with
    the command if it fails. ``model_dir`` may be a full model, or an adapter directory
    (then ``adapter`` is left ``None`` and the base model named inside is used).
    Free the trainer's model first on a GPU (``del trainer, model``): the subprocess needs
    the memory.
    """
    if not isinstance(settings, EvalSettings):
        raise ValueError(f"settings must be an EvalSettings, got {type(settings).__name__}.")
    if settings.backend == "in-memory":
        raise ValueError(
            "evaluate_after_save needs settings.backend 'hf' or 'vllm' (got 'in-memory': use evaluate_model)."
        )
    check_backend(settings.backend, settings)
    if _rank() != 0:
        return None
    import gc

    gc.collect()
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    out_dir = Path(output_dir if output_dir is not None else model_dir) / settings.output_subdir
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / f"{settings.tasks[0]}.json" if len(settings.tasks) == 1 else out_dir / "report.json"
    cmd = eval_command(model_dir, settings, output, adapter)
    log(f"midblock: evaluating the saved model in its own process ({settings.backend}): {' '.join(cmd)}")
    child_env = {k: v for k, v in (env or os.environ).items() if not _launcher_var(k)}
    proc = subprocess.run(cmd, env=child_env)
    if proc.returncode != 0:
        raise RuntimeError(f"`midblock eval` after the save failed (exit {proc.returncode}); command: {' '.join(cmd)}")
    return json.loads(output.read_text(encoding="utf-8"))


def _rank() -> int:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank()
    except Exception:  # pragma: no cover
        pass
    return int(os.environ.get("RANK", "0"))


_LAUNCHER_VARS = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "GROUP_RANK",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_RESTART_COUNT",
    "TORCHELASTIC_MAX_RESTARTS",
    "TORCHELASTIC_USE_AGENT_STORE",
    "OMP_NUM_THREADS_SET",
)


def _launcher_var(name: str) -> bool:
    """Variables of the training launcher (torchrun / accelerate / deepspeed) that would make
    the evaluation subprocess believe it is one rank of the training job."""
    return (
        name in _LAUNCHER_VARS
        or name.startswith(("ACCELERATE_", "TORCHELASTIC_"))
        or name == "ACCELERATE_USE_DEEPSPEED"
    )
