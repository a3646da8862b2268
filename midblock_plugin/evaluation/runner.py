"""Evaluate a model in memory with lm-eval's own tasks and write a JSON report.

:func:`evaluate_model` wraps the model in lm-eval's ``HFLM`` and calls
``lm_eval.simple_evaluate`` with lm-eval's task (its prompt, few-shot examples, stop
sequences, filters and metrics); nothing of the task is re-implemented here. The result
is turned into a JSON-safe report, written to ``<output_dir>/<output_subdir>/<task>.json``
by the main process, and summarised in a short table.

Distributed runs (``torch.distributed`` initialised, world size > 1):

* **DDP / plain data parallel** ("sharded"): lm-eval builds the same prompts on every
  rank (exactly those of a single-process run), but the model calls are split: rank
  ``r`` generates for requests ``r, r+W, ...`` and the answers are all-gathered, so no
  rank repeats another's generation and the scores equal a single-process run's.
  Rank 0's report is broadcast so every rank returns (and logs) the same numbers.
* **DeepSpeed ZeRO-3 / FSDP** ("lockstep"): parameters are partitioned and gathered
  inside every forward, so all ranks must run the same forwards in the same order: each
  rank evaluates all rows on the partitioned model (``generate`` syncs ranks itself), and
  rank 0's report is broadcast.

Only the main process writes files and prints. Random-number state (Python, NumPy,
torch, CUDA) and the model's train/eval mode are restored afterwards, so an evaluation at
train start does not change the training run.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import functools
import gc
import json
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Iterator

from midblock_plugin.evaluation.settings import EvalSettings

logger = logging.getLogger(__name__)

SCHEMA = "midblock.eval/1"

_VERSION_PACKAGES = ("midblock_plugin", "lm_eval", "transformers", "torch", "peft", "datasets", "accelerate", "trl", "deepspeed")
_DIST_NAMES = {"midblock_plugin": "midblock-plugin"}


class EvaluationError(RuntimeError):
    """An evaluation failed for a reason the user can fix (the message says how)."""


# --------------------------------------------------------------------------- helpers
def versions() -> dict[str, str | None]:
    """Installed versions of the packages that determine an evaluation's result."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in _VERSION_PACKAGES:
        try:
            out[name] = version(_DIST_NAMES.get(name, name))
        except PackageNotFoundError:
            out[name] = None
    if out["midblock_plugin"] is None:
        import midblock_plugin

        out["midblock_plugin"] = getattr(midblock_plugin, "__version__", None)
    return out


def to_jsonable(obj: Any) -> Any:
    """Recursively convert lm-eval / numpy / torch values to plain JSON types
    (numpy floats -> float, NaN/inf and lm-eval's ``"N/A"`` stderr -> ``None``)."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    item = getattr(obj, "item", None)  # numpy / torch scalars
    if callable(item) and getattr(obj, "shape", None) in ((), None):
        try:
            return to_jsonable(item())
        except (TypeError, ValueError):
            pass
    if hasattr(obj, "tolist"):
        return to_jsonable(obj.tolist())
    return str(obj)


def _number(value: Any) -> float | None:
    value = to_jsonable(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


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


def distributed_context(model: Any = None) -> dict[str, Any]:
    """``{"mode", "rank", "world_size", "partitioner"}``: mode ``single``, ``sharded`` (DDP:
    each rank generates for a share of the requests) or ``lockstep`` (ZeRO-3 / FSDP, named
    by ``partitioner``: all ranks run every forward together)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return {"mode": "single", "rank": 0, "world_size": 1, "partitioner": None}
    rank, world = dist.get_rank(), dist.get_world_size()
    partitioner = None
    try:
        from transformers.integrations import is_deepspeed_zero3_enabled

        if is_deepspeed_zero3_enabled():
            partitioner = "deepspeed-zero3"
    except Exception:  # pragma: no cover - transformers without deepspeed helpers
        pass
    if partitioner is None and model is not None:
        try:
            from transformers.integrations.fsdp import is_fsdp_managed_module

            if is_fsdp_managed_module(model):
                partitioner = "fsdp"
        except Exception:  # pragma: no cover
            pass
    if partitioner is None and os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
        partitioner = "fsdp"
    mode = "lockstep" if partitioner else "sharded"
    return {"mode": mode, "rank": rank, "world_size": world, "partitioner": partitioner}


def _zero3_offload(model: Any, engine: Any = None) -> Any:
    """DeepSpeed's ZeRO-3 parameter-offload object for ``model`` (it owns the parameter
    coordinator): from the engine if given, else from the forward pre-hook DeepSpeed
    registered on the top module."""
    optimizer = getattr(engine, "optimizer", None)
    offload = getattr(optimizer, "parameter_offload", None)
    if offload is not None:
        return offload
    for hook in list(getattr(model, "_forward_pre_hooks", {}).values()):
        for cell in getattr(hook, "__closure__", None) or ():
            try:
                obj = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if hasattr(obj, "get_param_coordinator") and hasattr(obj, "empty_partition_cache"):
                return obj
    return None


def release_partitioned_parameters(model: Any, engine: Any = None) -> bool:
    """Return a ZeRO-3 model to its training state after inference.

    Forwards outside the training step (``generate`` on the module) leave DeepSpeed's
    parameter coordinator with an inference-only trace, which breaks the next backward
    ("size of tensor a (0) must match ..."), and leave parameters gathered (every rank
    would hold the full model). As TRL does after generation, the trace is invalidated
    (re-recorded on the next training step) and all parameters are re-partitioned.
    Returns ``False`` if DeepSpeed's offload object was not found (parameters are then
    re-partitioned one by one, and the trace is left as is).
    """
    offload = _zero3_offload(model, engine)
    if offload is not None:
        coordinator = offload.get_param_coordinator()
        if hasattr(coordinator, "is_invalid_trace") and not coordinator.is_invalid_trace():
            coordinator._invalidate_trace()
        offload.empty_partition_cache()
        return True
    logger.warning(
        "ZeRO-3: DeepSpeed's parameter coordinator was not found; re-partitioning parameters one by one. "
        "Bind the EvalCallback to its trainer (EvalCallback(settings, trainer=trainer)) to release them through the engine."
    )
    params = getattr(model, "parameters", None)
    for param in params() if callable(params) else ():
        status = getattr(param, "ds_status", None)
        if status is not None and status.name == "AVAILABLE" and not getattr(param, "ds_persist", False):
            param.ds_active_sub_modules.clear()  # no forward is running any more
            param.partition()
    return False


def _broadcast(obj: Any, ctx: dict[str, Any]) -> Any:
    if ctx["world_size"] == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _tokenizer_of(processing_class: Any) -> Any:
    """A text tokenizer from a tokenizer or a multimodal processor."""
    return getattr(processing_class, "tokenizer", None) or processing_class


def _make_lm(model: Any, tokenizer: Any, settings: EvalSettings, ctx: dict[str, Any]):
    """lm-eval's ``HFLM`` around the in-memory model (sharded across ranks under DDP)."""
    from lm_eval.models.huggingface import HFLM

    if tokenizer is None:
        raise ValueError(
            "tokenizer is None: pass the tokenizer the model was trained with (the trainer's processing_class)."
        )
    # lm-eval may add a pad token or change padding side: give it a copy, not the training tokenizer.
    tok = copy.deepcopy(_tokenizer_of(tokenizer))
    kwargs = dict(pretrained=model, tokenizer=tok, batch_size=settings.batch_size, max_length=settings.max_length)
    if ctx["mode"] == "sharded":
        return _ShardedHFLM(rank=ctx["rank"], world_size=ctx["world_size"], **kwargs)
    return HFLM(**kwargs)


@functools.lru_cache(maxsize=1)
def _sharded_hflm_class():
    from lm_eval.models.huggingface import HFLM

    class ShardedHFLM(HFLM):
        """HFLM over an in-memory model whose forward work is split across DDP ranks.

        lm-eval itself runs as a single process on every rank (same documents, same
        few-shot draws, same prompts as a one-process run); only the model calls are
        sharded: rank ``r`` answers requests ``r, r+W, ...`` and the answers are
        all-gathered back into lm-eval's order. (lm-eval's own data-parallel mode shards
        documents before drawing few-shot examples, so its prompts would differ from a
        single-process run's.)
        """

        def __init__(self, *, rank: int, world_size: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.shard_rank, self.shard_world_size = rank, world_size

        def _sharded(self, method, requests, **kwargs):
            import torch.distributed as dist

            r, w = self.shard_rank, self.shard_world_size
            mine = requests[r::w]
            answers = method(mine, **kwargs) if mine else []
            parts: list[Any] = [None] * w
            dist.all_gather_object(parts, list(answers))
            out: list[Any] = [None] * len(requests)
            for k, part in enumerate(parts):
                out[k::w] = part
            return out

        def generate_until(self, requests, disable_tqdm: bool = False):
            return self._sharded(super().generate_until, requests, disable_tqdm=disable_tqdm)

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return self._sharded(super().loglikelihood, requests, disable_tqdm=disable_tqdm)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return self._sharded(super().loglikelihood_rolling, requests, disable_tqdm=disable_tqdm)

    return ShardedHFLM


def _ShardedHFLM(**kwargs: Any):  # noqa: N802 - a factory standing in for the class
    return _sharded_hflm_class()(**kwargs)


def _model_info(model: Any) -> dict[str, Any]:
    from lm_eval.api.model import LM

    if isinstance(model, LM):
        return {"class": type(model).__name__, "lm_eval_lm": True}
    cfg = getattr(model, "config", None)
    info = {
        "class": type(model).__name__,
        "name_or_path": getattr(cfg, "_name_or_path", None) or None,
        "model_type": getattr(cfg, "model_type", None),
        "peft": hasattr(model, "peft_config"),
    }
    try:
        info["dtype"] = str(next(model.parameters()).dtype).replace("torch.", "")
    except (StopIteration, AttributeError, TypeError):
        info["dtype"] = None
    return info


# ------------------------------------------------------------------ result shaping
def parse_metrics(task_results: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """lm-eval's flat ``{"exact_match,strict-match": v, "exact_match_stderr,strict-match": s}``
    -> ``{"strict-match": {"exact_match": v, "exact_match_stderr": s}}``."""
    out: dict[str, dict[str, float | None]] = {}
    for key, value in task_results.items():
        if "," not in key:
            continue
        metric, filt = key.split(",", 1)
        out.setdefault(filt, {})[metric] = _number(value)
    return out


def _summarize(raw: dict[str, Any], plan) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    n_shot = raw.get("n-shot", {})
    n_samples = raw.get("n-samples", {})
    configs = raw.get("configs", {})
    for name, task_res in raw.get("results", {}).items():
        counts = n_samples.get(name, {})
        scored = task_res.get("sample_len", counts.get("effective"))
        entry: dict[str, Any] = {
            "metrics": parse_metrics(task_res),
            "n_samples": int(scored) if scored is not None else None,
            "n_samples_total": counts.get("original"),
            "num_fewshot": n_shot.get(name),
            "version": raw.get("versions", {}).get(name),
            "higher_is_better": raw.get("higher_is_better", {}).get(name),
            "source": plan.sources.get(name) or _parent_source(name, raw, plan),
        }
        if name in raw.get("group_subtasks", {}) and raw["group_subtasks"][name]:
            entry["subtasks"] = list(raw["group_subtasks"][name])
        if name in configs:
            entry["lm_eval_config"] = configs[name]
        results[name] = entry
    return to_jsonable(results)


def _parent_source(name: str, raw: dict[str, Any], plan) -> dict[str, Any]:
    for group, subs in raw.get("group_subtasks", {}).items():
        if name in subs and group in plan.sources:
            return plan.sources[group]
    return {"kind": "hub", "gsm8k_family": False}


def _samples(raw: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """lm-eval's logged samples, one record per test row with every filter's answer."""
    out: dict[str, list[dict[str, Any]]] = {}
    for task, rows in (raw.get("samples") or {}).items():
        by_doc: dict[int, dict[str, Any]] = {}
        for s in rows:
            rec = by_doc.setdefault(
                s["doc_id"],
                {
                    "doc_id": s["doc_id"],
                    "prompt": s["arguments"][0][0] if s.get("arguments") else None,
                    "target": s.get("target"),
                    "response": s["resps"][0][0] if s.get("resps") and s["resps"][0] else None,
                    "filtered": {},
                    "scores": {},
                },
            )
            rec["filtered"][s["filter"]] = s["filtered_resps"][0] if s.get("filtered_resps") else None
            rec["scores"][s["filter"]] = {m: s.get(m) for m in s.get("metrics", [])}
        out[task] = [to_jsonable(by_doc[k]) for k in sorted(by_doc)]
    return out


def add_baseline(report: dict[str, Any], baseline: dict[str, Any] | None) -> dict[str, Any]:
    """Attach a baseline report's metrics to ``report`` with the change (final - baseline)."""
    if not baseline:
        return report
    report["baseline_label"] = baseline.get("label")
    for name, entry in report["results"].items():
        base = baseline.get("results", {}).get(name)
        if not base:
            continue
        entry["baseline"] = base["metrics"]
        change: dict[str, dict[str, float | None]] = {}
        for filt, metrics in entry["metrics"].items():
            for metric, value in metrics.items():
                old = base["metrics"].get(filt, {}).get(metric)
                if metric.endswith("_stderr") or value is None or old is None:
                    continue
                change.setdefault(filt, {})[metric] = value - old
        entry["change"] = change
    return report


def task_report(report: dict[str, Any], name: str) -> dict[str, Any]:
    """The per-task JSON written to ``<task>.json``: one task's results at the top level
    (``task``, ``metrics``, ``n_samples``, ...) plus the run's shared fields."""
    entry = report["results"][name]
    out: dict[str, Any] = {"schema": report["schema"], "task": name, "label": report["label"]}
    out.update({k: v for k, v in entry.items() if k != "lm_eval_config"})
    out["limit"] = report["limit"]
    subtasks = {s: report["results"][s] for s in entry.get("subtasks", []) if s in report["results"]}
    if subtasks:
        out["subtask_results"] = {s: {k: v for k, v in e.items() if k != "lm_eval_config"} for s, e in subtasks.items()}
    for key in ("settings", "timings", "versions", "model", "distributed", "created_at", "baseline_label"):
        if key in report:
            out[key] = report[key]
    if "lm_eval_config" in entry:
        out["lm_eval_config"] = entry["lm_eval_config"]
    return out


def flat_metrics(report: dict[str, Any], prefix: str | None = None) -> dict[str, float]:
    """Scalar metrics for a trainer's log: ``lm_eval/gsm8k/strict-match/exact_match`` etc.
    (``lm_eval_<label>/...`` for labels other than ``final``)."""
    label = report.get("label", "final")
    prefix = prefix or ("lm_eval" if label == "final" else f"lm_eval_{label}")
    out: dict[str, float] = {}
    for name, entry in report["results"].items():
        for filt, metrics in entry["metrics"].items():
            for metric, value in metrics.items():
                if value is not None:
                    out[f"{prefix}/{name}/{filt}/{metric}"] = float(value)
        for filt, metrics in (entry.get("change") or {}).items():
            for metric, value in metrics.items():
                out[f"{prefix}/{name}/{filt}/{metric}_change"] = float(value)
        if entry.get("n_samples") is not None:
            out[f"{prefix}/{name}/n_samples"] = float(entry["n_samples"])
    out[f"{prefix}/runtime_s"] = float(report["timings"]["total_s"])
    return out


def format_table(report: dict[str, Any]) -> str:
    """A short plain-text table of every task and filter (with baseline and change if present)."""
    rows = []
    has_base = any("baseline" in e for e in report["results"].values())
    header = ["task", "filter", "metric", "value", "stderr", "n"] + (["baseline", "change"] if has_base else [])
    for name, entry in report["results"].items():
        for filt, metrics in entry["metrics"].items():
            for metric, value in metrics.items():
                if metric.endswith("_stderr"):
                    continue
                se = metrics.get(f"{metric}_stderr")
                row = [name, filt, metric, _fmt(value), _fmt(se), str(entry.get("n_samples", ""))]
                if has_base:
                    base = (entry.get("baseline") or {}).get(filt, {}).get(metric)
                    delta = (entry.get("change") or {}).get(filt, {}).get(metric)
                    row += [_fmt(base), "" if delta is None else f"{delta:+.4f}"]
                rows.append(row)
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    shots = sorted({str(e.get("num_fewshot")) for e in report["results"].values()})
    title = (
        f"lm-eval ({report['label']}): {', '.join(report['tasks'])}; {'/'.join(shots)}-shot; "
        f"limit {report['limit']}; {report['timings']['total_s']:.1f} s"
    )
    return "\n".join([title, line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _fmt(value: Any) -> str:
    return "" if value is None else f"{value:.4f}"


def write_report(report: dict[str, Any], out_dir: str | os.PathLike, samples: dict[str, list] | None = None) -> list[Path]:
    """Write ``<task>.json`` per requested task (``<task>.<label>.json`` for labels other
    than ``final``) and, if given, ``<task>[.<label>].samples.jsonl``; return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "" if report["label"] == "final" else f".{report['label']}"
    written = []
    for name in report["tasks"]:
        if name not in report["results"]:
            continue
        path = out_dir / f"{name}{suffix}.json"
        _write_json(path, task_report(report, name))
        written.append(path)
    for name, rows in (samples or {}).items():
        path = out_dir / f"{name}{suffix}.samples.jsonl"
        tmp = path.with_suffix(path.suffix + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
        written.append(path)
    return written


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_error(out_dir: str | os.PathLike, label: str, exc: BaseException, tb: str = "") -> Path:
    """Write ``error.json`` (``error.<label>.json`` for labels other than ``final``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "" if label == "final" else f".{label}"
    path = out_dir / f"error{suffix}.json"
    _write_json(
        path,
        {
            "schema": SCHEMA,
            "label": label,
            "error": f"{type(exc).__name__}: {exc}",
            "error_type": type(exc).__name__,
            "traceback": tb,
            "created_at": _now(),
            "versions": versions(),
        },
    )
    return path


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _hub_failure(exc: BaseException) -> bool:
    mod = type(exc).__module__ or ""
    text = f"{type(exc).__name__} {exc}".lower()
    return (
        mod.split(".")[0] in {"datasets", "huggingface_hub", "requests", "urllib3", "httpx", "httpcore"}
        or isinstance(exc, (ConnectionError, TimeoutError))
        or any(w in text for w in ("offline", "connection", "couldn't reach", "could not reach", "resolve", "hub"))
    )


# ----------------------------------------------------------------------- the entry point
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
        ``{"schema", "label", "tasks", "results": {task: {"metrics": {filter: {metric: v,
        metric_stderr: s}}, "n_samples", "num_fewshot", "source", ...}}, "limit", "settings",
        "timings", "versions", "model", "distributed", "created_at", "files"}`` on every rank.

    Raises:
        ValueError / FileNotFoundError: bad settings (before any forward pass).
        EvaluationError: GSM8K could not be fetched from the hub (offline) and no data_dir was given.

    >>> from midblock_plugin.testing import tiny_model, tiny_tokenizer
    >>> rep = evaluate_model(tiny_model(), tiny_tokenizer(), EvalSettings(limit=2, max_gen_toks=8))  # doctest: +SKIP
    >>> rep["results"]["gsm8k"]["metrics"]["strict-match"]["exact_match"]  # doctest: +SKIP
    0.0
    """
    settings = settings or EvalSettings()
    t0 = time.perf_counter()
    created = _now()
    from midblock_plugin.evaluation.tasks import plan_tasks

    plan = plan_tasks(settings)
    t_setup = time.perf_counter() - t0
    ctx = distributed_context(model)
    main = (ctx["rank"] == 0) if is_main_process is None else bool(is_main_process)

    import lm_eval
    from lm_eval.api.model import LM

    gen_kwargs = {"max_gen_toks": settings.max_gen_toks} if settings.max_gen_toks else None
    was_training = getattr(model, "training", None)
    raw: dict[str, Any] | None = None
    t1 = time.perf_counter()
    try:
        with preserved_rng():
            lm = None
            try:
                lm = model if isinstance(model, LM) else _make_lm(model, tokenizer, settings, ctx)
                raw = lm_eval.simple_evaluate(
                    model=lm,
                    tasks=plan.names,
                    task_manager=plan.task_manager,
                    num_fewshot=settings.num_fewshot,
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
                        f"lm-eval could not load GSM8K from the hub (openai/gsm8k): {type(exc).__name__}: {exc}. "
                        "Offline or air-gapped? Pass a local GSM8K directory holding train.jsonl and test.jsonl: "
                        "data_dir=DIR (EvalSettings / YAML) or --data-dir DIR (midblock eval), or set MIDBLOCK_GSM8K_DIR."
                    ) from exc
                raise
            finally:
                del lm
    finally:
        if was_training is not None and hasattr(model, "train"):
            model.train(was_training)
        if ctx["partitioner"] == "deepspeed-zero3":
            release_partitioned_parameters(model, engine)
        gc.collect()
        _empty_device_cache()
    t_eval = time.perf_counter() - t1

    payload = None
    if ctx["rank"] == 0:
        try:
            if raw is None:
                raise EvaluationError("lm_eval.simple_evaluate returned no results on rank 0.")
            payload = {"results": _summarize(raw, plan), "samples": _samples(raw) if settings.save_samples else None}
        except Exception as exc:  # keep other ranks from waiting forever on the broadcast
            payload = {"error": f"{type(exc).__name__}: {exc}"}
    payload = _broadcast(payload, ctx)
    if payload is None or "error" in payload:
        raise EvaluationError(f"summarising lm-eval's results failed: {payload and payload['error']}")

    report: dict[str, Any] = {
        "schema": SCHEMA,
        "label": label,
        "tasks": plan.names,
        "results": payload["results"],
        "limit": settings.limit,
        "settings": settings.to_dict(),
        "timings": {"task_setup_s": round(t_setup, 3), "evaluate_s": round(t_eval, 3), "total_s": round(time.perf_counter() - t0, 3)},
        "versions": versions(),
        "model": _model_info(model),
        "distributed": {"mode": ctx["mode"], "world_size": ctx["world_size"]},
        "created_at": created,
    }
    add_baseline(report, baseline)
    report["files"] = []
    if output_dir is not None and main:
        out = Path(output_dir) / settings.output_subdir
        report["files"] = [str(p) for p in write_report(report, out, payload["samples"])]
    if main and print_table:
        print(format_table(report), flush=True)
    report["samples"] = payload["samples"]
    return report


def _empty_device_cache() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover
        pass
