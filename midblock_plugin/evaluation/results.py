"""The evaluation report: lm-eval's raw results shaped into JSON, the table, the log
metrics, and the files written.

A report (returned by :func:`~midblock_plugin.evaluation.runner.evaluate_model` on every
rank) is ``{"schema", "label", "tasks", "results": {task: {"metrics": {filter: {metric: v,
metric_stderr: s}}, "n_samples", "num_fewshot", "source", ...}}, "limit", "settings",
"timings", "versions", "model", "distributed", "created_at"}``. Files, in
``<output_dir>/<output_subdir>/`` (``eval/`` by default, :data:`midblock_plugin.io.EVAL_SUBDIR`):

* ``<task>.json``: :func:`task_report` of each requested task (``<task>.<label>.json`` for
  labels other than ``final``, e.g. ``gsm8k.baseline.json``);
* ``<task>[.<label>].samples.jsonl``: every scored sample, with ``save_samples``;
* ``error.json`` (``error.<label>.json``): a failed evaluation (:func:`write_error`).

All are written atomically, with NaN / infinity as ``null`` (:mod:`midblock_plugin.io`).

>>> log_prefix("final"), log_prefix("baseline")
('lm_eval', 'lm_eval_baseline')
>>> error_file_name("final"), error_file_name("baseline")
('error.json', 'error.baseline.json')
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any

from midblock_plugin.io import json_safe, write_json, write_jsonl


SCHEMA = "midblock.eval/1"

_VERSION_PACKAGES = (
    "midblock_plugin",
    "lm_eval",
    "transformers",
    "torch",
    "peft",
    "datasets",
    "accelerate",
    "trl",
    "deepspeed",
)
_DIST_NAMES = {"midblock_plugin": "midblock-plugin"}


# --------------------------------------------------------------------------- run facts
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


def now() -> str:
    """The current UTC time, ISO 8601 to the second (``created_at``)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def model_info(model: Any) -> dict[str, Any]:
    """The report's ``model`` entry: class, name or path, model type, PEFT, dtype."""
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


# ------------------------------------------------------------------ lm-eval's results
def _number(value: Any) -> float | None:
    value = json_safe(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


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


def summarize(raw: dict[str, Any], plan) -> dict[str, dict[str, Any]]:
    """The report's ``results``: per task, its metrics, counts and data source
    (``plan``: the :class:`~midblock_plugin.evaluation.tasks.TaskPlan` evaluated)."""
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
    return json_safe(results)


def _parent_source(name: str, raw: dict[str, Any], plan) -> dict[str, Any]:
    for group, subs in raw.get("group_subtasks", {}).items():
        if name in subs and group in plan.sources:
            return plan.sources[group]
    return {"kind": "hub", "gsm8k_family": False}


def collect_samples(raw: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
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
        out[task] = [json_safe(by_doc[k]) for k in sorted(by_doc)]
    return out


# ----------------------------------------------------------------------- the report
def new_report(
    label: str,
    tasks: list[str],
    results: dict[str, Any],
    settings: Any,
    timings: dict[str, float],
    model: Any,
    ctx: dict[str, Any],
    created_at: str,
) -> dict[str, Any]:
    """The report of one evaluation (``settings``: its ``EvalSettings``; ``ctx``: its
    :func:`~midblock_plugin.evaluation.distributed.distributed_context`)."""
    return {
        "schema": SCHEMA,
        "label": label,
        "tasks": tasks,
        "results": results,
        "limit": settings.limit,
        "settings": settings.to_dict(),
        "timings": timings,
        "versions": versions(),
        "model": model_info(model),
        "protocol": settings.protocol_info(),
        "headline": headline(results, settings),
        "distributed": distributed_info(ctx),
        "created_at": created_at,
    }


def distributed_info(ctx: dict[str, Any]) -> dict[str, Any]:
    """The report's ``distributed``: ``mode``, ``world_size``, ``partitioner`` and
    ``rows_per_rank`` (requests generated by each rank, one entry per rank) and
    ``generate_calls_per_rank`` where the evaluation counted them."""
    out = {"mode": ctx["mode"], "world_size": ctx["world_size"], "partitioner": ctx.get("partitioner")}
    out["rows_per_rank"] = ctx.get("rows_per_rank")
    if ctx.get("generate_calls_per_rank") is not None:
        out["generate_calls_per_rank"] = ctx["generate_calls_per_rank"]
    return out


def headline(results: dict[str, Any], settings: Any) -> dict[str, Any]:
    """Per task, the protocol's headline number: ``exact_match`` under its filter
    (``strict-match`` for ``lm-eval``, ``flexible-extract`` for ``paper``), with its stderr and n."""
    out: dict[str, Any] = {}
    filt = settings.headline_filter
    for name, entry in results.items():
        metrics = entry.get("metrics", {}).get(filt)
        if not metrics or "exact_match" not in metrics:
            continue
        out[name] = {
            "protocol": settings.protocol,
            "filter": filt,
            "metric": "exact_match",
            "value": metrics["exact_match"],
            "stderr": metrics.get("exact_match_stderr"),
            "n": entry.get("n_samples"),
        }
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
    (``task``, ``metrics``, ``n_samples``, ...) plus the run's common fields."""
    entry = report["results"][name]
    out: dict[str, Any] = {"schema": report["schema"], "task": name, "label": report["label"]}
    out.update({k: v for k, v in entry.items() if k != "lm_eval_config"})
    out["limit"] = report["limit"]
    subtasks = {s: report["results"][s] for s in entry.get("subtasks", []) if s in report["results"]}
    if subtasks:
        out["subtask_results"] = {
            s: {k: v for k, v in e.items() if k != "lm_eval_config"} for s, e in subtasks.items()
        }
    out["protocol"] = report.get("protocol")
    if name in (report.get("headline") or {}):
        out["headline"] = report["headline"][name]
    for key in ("settings", "timings", "versions", "model", "distributed", "created_at", "baseline_label"):
        if key in report:
            out[key] = report[key]
    if "lm_eval_config" in entry:
        out["lm_eval_config"] = entry["lm_eval_config"]
    return out


# ------------------------------------------------------------------ log and table
def log_prefix(label: str) -> str:
    """The trainer-log prefix of an evaluation: ``lm_eval`` (final) or ``lm_eval_<label>``."""
    return "lm_eval" if label == "final" else f"lm_eval_{label}"


def flat_metrics(report: dict[str, Any], prefix: str | None = None) -> dict[str, float]:
    """Scalar metrics for a trainer's log: ``lm_eval/gsm8k/strict-match/exact_match`` etc.
    (``lm_eval_<label>/...`` for labels other than ``final``)."""
    prefix = prefix or log_prefix(report.get("label", "final"))
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
    protocol = (report.get("protocol") or {}).get("name", "lm-eval")
    title = (
        f"lm-eval ({report['label']}): {', '.join(report['tasks'])}; protocol {protocol}; {'/'.join(shots)}-shot; "
        f"limit {report['limit']}; {report['timings']['total_s']:.1f} s"
    )
    return "\n".join([title, line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _fmt(value: Any) -> str:
    return "" if value is None else f"{value:.4f}"


# ----------------------------------------------------------------------- files
def _suffix(label: str) -> str:
    return "" if label == "final" else f".{label}"


def error_file_name(label: str) -> str:
    """``error.json`` for the final evaluation, ``error.<label>.json`` otherwise."""
    return f"error{_suffix(label)}.json"


def write_report(
    report: dict[str, Any], out_dir: str | os.PathLike, samples: dict[str, list] | None = None
) -> list[Path]:
    """Write ``<task>.json`` per requested task (``<task>.<label>.json`` for labels other
    than ``final``) and, if given, ``<task>[.<label>].samples.jsonl``; return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = _suffix(report["label"])
    written = []
    for name in report["tasks"]:
        if name in report["results"]:
            written.append(write_json(out_dir / f"{name}{suffix}.json", task_report(report, name)))
    for name, rows in (samples or {}).items():
        written.append(write_jsonl(out_dir / f"{name}{suffix}.samples.jsonl", rows))
    return written


def write_error(out_dir: str | os.PathLike, label: str, exc: BaseException, tb: str = "") -> Path:
    """Write ``error.json`` (``error.<label>.json`` for labels other than ``final``)."""
    return write_json(
        Path(out_dir) / error_file_name(label),
        {
            "schema": SCHEMA,
            "label": label,
            "error": f"{type(exc).__name__}: {exc}",
            "error_type": type(exc).__name__,
            "traceback": tb,
            "created_at": now(),
            "versions": versions(),
        },
    )
