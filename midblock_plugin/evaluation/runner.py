"""Evaluate a model in memory with lm-eval's own tasks.

:func:`evaluate_model` wraps the model in lm-eval's ``HFLM`` and calls
``lm_eval.simple_evaluate`` with lm-eval's task (its prompt, few-shot examples, stop
sequences, filters and metrics); nothing of the task is re-implemented here. The other
concerns live beside it: the tasks and their data in :mod:`.tasks`, how ranks share the
work in :mod:`.distributed`, the report, its table and its files in :mod:`.results`.

Only the main process writes files and prints. Random-number state (Python, NumPy,
torch, CUDA) and the model's train/eval mode are restored afterwards, so an evaluation at
train start does not change the training run.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import os
import random
import time
from pathlib import Path
from typing import Any, Iterator

from midblock_plugin.data import gsm8k
from midblock_plugin.evaluation import results
from midblock_plugin.evaluation.distributed import (
    broadcast,
    distributed_context,
    release_after_inference,
    sharded_hflm,
)
from midblock_plugin.evaluation.preflight import EvaluationError  # noqa: F401  (its one home; re-exported)
from midblock_plugin.evaluation.settings import EvalSettings


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore the Python, NumPy, torch and CUDA random states on exit
    (``simple_evaluate`` reseeds all of them)."""
    import numpy as np
    import torch

    py, npy, cpu = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.random.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


#: lm-eval messages that mislead next to an evaluation of a model in memory, by logger: the gen_kwargs
#: notice ends "Ensure 'do_sample=True' for non-greedy decoding!" beside an evaluation that is greedy
#: (no gen_kwargs here sets do_sample; one that did keeps the notice), and HFLM's two notes on an
#: already-built model warn about launch modes (accelerate, parallelize=True) this code never uses.
MISLEADING_LM_EVAL_MESSAGES = {
    "lm_eval.evaluator": ("generation_kwargs: ",),
    "lm_eval.models.huggingface": (
        "`pretrained` model kwarg is not of type `str`",
        "Passed an already-initialized model through `pretrained`",
    ),
}


class _MisleadingMessages(logging.Filter):
    """Drops a record whose message starts with one of ``prefixes`` (a greedy gen_kwargs notice only)."""

    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefixes):
            return True
        args = record.args if isinstance(record.args, tuple) else (record.args,)  # one dict argument: the dict itself
        return any(isinstance(a, dict) and bool(a.get("do_sample")) for a in args)


@contextlib.contextmanager
def _misleading_lm_eval_messages_off() -> Iterator[None]:
    """:data:`MISLEADING_LM_EVAL_MESSAGES` filtered for one evaluation; every other lm-eval message is kept."""
    added = [(logging.getLogger(name), _MisleadingMessages(p)) for name, p in MISLEADING_LM_EVAL_MESSAGES.items()]
    for lg, f in added:
        lg.addFilter(f)
    try:
        yield
    finally:
        for lg, f in added:
            lg.removeFilter(f)


def _tokenizer_of(processing_class: Any) -> Any:
    """A text tokenizer from a tokenizer or a multimodal processor."""
    return getattr(processing_class, "tokenizer", None) or processing_class


def _make_lm(model: Any, tokenizer: Any, settings: EvalSettings, ctx: dict[str, Any]):
    """lm-eval's ``HFLM`` around the in-memory model (its work shared between ranks, its
    ``generate`` calls counted: :func:`~midblock_plugin.evaluation.distributed.sharded_hflm`)."""
    if tokenizer is None:
        raise ValueError(
            "tokenizer is None: pass the tokenizer the model was trained with (the trainer's processing_class)."
        )
    # lm-eval may add a pad token or change padding side: give it a copy, not the training tokenizer.
    tok = copy.deepcopy(_tokenizer_of(tokenizer))
    kwargs = dict(pretrained=model, tokenizer=tok, batch_size=settings.batch_size, max_length=settings.max_length)
    return sharded_hflm(
        rank=ctx["rank"],
        world_size=ctx["world_size"],
        partitioned=bool(ctx["partitioner"]),
        lockstep=ctx["mode"] == "lockstep",
        **kwargs,
    )


def _hub_failure(exc: BaseException) -> bool:
    mod = type(exc).__module__ or ""
    text = f"{type(exc).__name__} {exc}".lower()
    return (
        mod.split(".")[0] in {"datasets", "huggingface_hub", "requests", "urllib3", "httpx", "httpcore"}
        or isinstance(exc, (ConnectionError, TimeoutError))
        or any(w in text for w in ("offline", "connection", "couldn't reach", "could not reach", "resolve", "hub"))
    )


def evaluate_model(
    model: Any,
    tokenizer: Any,
    settings: EvalSettings | None = None,
    output_dir: str | os.PathLike | None = None,
    label: str = "final",
    is_main_process: bool | None = None,
    baseline: dict[str, Any] | None = None,
    print_table: bool = True,
    engine: Any = None,
) -> dict[str, Any]:
    """Evaluate ``model`` (in memory) with lm-eval and return a JSON-safe report.

    Args:
        model: a ``transformers`` causal LM or ``peft.PeftModel`` (used as is: no reload, no
            copy), or any ``lm_eval.api.model.LM`` (then ``tokenizer`` is ignored).
        tokenizer: its tokenizer (or processor); a copy is handed to lm-eval.
        settings: :class:`EvalSettings` (default: GSM8K with lm-eval's defaults).
        output_dir: if given, the main process writes ``<output_dir>/<settings.output_subdir>/<task>.json``.
        label: ``"final"``, ``"baseline"``, ...; non-final files are named ``<task>.<label>.json``.
        is_main_process: who writes and prints; default: global rank 0.
        baseline: an earlier report (e.g. ``label="baseline"``) to show the change against.
        print_table: print the summary table on the main process.
        engine: under DeepSpeed ZeRO-3, the engine wrapping ``model`` (``trainer.model_wrapped``);
            its ``empty_partition_cache()`` re-partitions the parameters the evaluation gathered.
            Without it they are re-partitioned one by one.

    Returns:
        The report (:mod:`midblock_plugin.evaluation.results`) on every rank, plus ``files``
        (the paths written) and ``samples`` (with ``save_samples``).

    Raises:
        ValueError / FileNotFoundError: bad settings (before any forward pass).
        EvaluationError: lm-eval failed once it ran (e.g. GSM8K could not be fetched from the hub,
            or its data vanished); the cause is chained.

    >>> from midblock_plugin.testing import tiny_model, tiny_tokenizer
    >>> rep = evaluate_model(tiny_model(), tiny_tokenizer(), EvalSettings(limit=2, max_gen_toks=8))  # doctest: +SKIP
    >>> rep["results"]["gsm8k"]["metrics"]["strict-match"]["exact_match"]  # doctest: +SKIP
    0.0
    """
    settings = settings or EvalSettings()
    if settings.protocol == "authors":  # the authors' own scoring with HF generate, not lm-eval's task
        from midblock_plugin.evaluation.authors import evaluate_authors

        return evaluate_authors(
            model,
            tokenizer,
            settings,
            output_dir=output_dir,
            label=label,
            is_main_process=is_main_process,
            baseline=baseline,
            print_table=print_table,
            engine=engine,
        )
    t0 = time.perf_counter()
    created = results.now()
    from midblock_plugin.evaluation.tasks import plan_tasks

    plan = plan_tasks(settings)
    t_setup = time.perf_counter() - t0
    ctx = distributed_context(model, settings.partitioned_mode)
    main = (ctx["rank"] == 0) if is_main_process is None else bool(is_main_process)

    import lm_eval
    from lm_eval.api.model import LM

    gen_kwargs = settings.gen_kwargs
    was_training = getattr(model, "training", None)
    raw: dict[str, Any] | None = None
    t1 = time.perf_counter()
    try:
        with preserved_rng(), _misleading_lm_eval_messages_off():
            lm = None
            try:
                lm = model if isinstance(model, LM) else _make_lm(model, tokenizer, settings, ctx)
                raw = lm_eval.simple_evaluate(
                    model=lm,
                    tasks=plan.names,
                    task_manager=plan.task_manager,
                    num_fewshot=settings.effective_num_fewshot,
                    limit=settings.limit,
                    gen_kwargs=gen_kwargs,
                    apply_chat_template=settings.apply_chat_template,
                    fewshot_as_multiturn=settings.multiturn,
                    system_instruction=settings.system_instruction,
                    log_samples=settings.save_samples,
                    bootstrap_iters=settings.bootstrap_iters,
                )
            except Exception as exc:
                if plan.uses_hub_gsm8k and _hub_failure(exc):
                    raise EvaluationError(
                        f"lm-eval could not load GSM8K from the hub ({gsm8k.HUB_DATASET[0]}): {type(exc).__name__}: {exc}. "
                        "Offline or air-gapped? Pass a local GSM8K directory holding train.jsonl and test.jsonl: "
                        f"data_dir=DIR (EvalSettings / YAML) or --data-dir DIR (midblock eval), or set {gsm8k.ENV}."
                    ) from exc
                if lm is None and isinstance(exc, ValueError):
                    raise  # the inputs (e.g. no tokenizer), before any work
                raise EvaluationError(f"lm-eval failed: {type(exc).__name__}: {exc}") from exc
            finally:
                stats = getattr(lm, "stats", None) or {}
                ctx["rows_per_rank"] = stats.get("rows_per_rank")
                ctx["generate_calls_per_rank"] = stats.get("generate_calls_per_rank")
                del lm
    finally:
        restore_after_inference(model, was_training, ctx, engine)
    t_eval = time.perf_counter() - t1

    payload = None
    if ctx["rank"] == 0:
        try:
            if raw is None:
                raise EvaluationError("lm_eval.simple_evaluate returned no results on rank 0.")
            payload = {
                "results": results.summarize(raw, plan),
                "samples": results.collect_samples(raw) if settings.save_samples else None,
            }
        except Exception as exc:  # keep other ranks from waiting forever on the broadcast
            payload = {"error": f"{type(exc).__name__}: {exc}"}
    payload = broadcast(payload, ctx)
    if payload is None or "error" in payload:
        raise EvaluationError(f"summarising lm-eval's results failed: {payload and payload['error']}")

    timings = {
        "task_setup_s": round(t_setup, 3),
        "evaluate_s": round(t_eval, 3),
        "total_s": round(time.perf_counter() - t0, 3),
    }
    report = results.new_report(label, plan.names, payload["results"], settings, timings, model, ctx, created)
    results.add_baseline(report, baseline)
    report["files"] = []
    if output_dir is not None and main:
        out = Path(output_dir) / settings.output_subdir
        report["files"] = [str(p) for p in results.write_report(report, out, payload["samples"])]
    if main and print_table:
        print(results.format_table(report), flush=True)
    report["samples"] = payload["samples"]
    return report


def restore_after_inference(model: Any, was_training: bool | None, ctx: dict, engine: Any) -> None:
    """After an evaluation, whatever it raised: the model's train mode back, ZeRO-3 gathered
    parameters released (:func:`~.distributed.release_after_inference`), memory returned."""
    if was_training is not None and hasattr(model, "train"):
        model.train(was_training)
    release_after_inference(model, ctx, engine)
    gc.collect()
    _empty_device_cache()


def _empty_device_cache() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover
        pass
