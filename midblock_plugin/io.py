"""Where every output file is written, and how: artifact names, JSON-safe values, atomic writes.

A run directory (a trainer's ``output_dir``, or ``midblock run --output-dir``) holds:

==============================  ==================================================
``midblock/plan.json``          the plan of the run (:data:`PLAN_JSON`)
``midblock/drift.json`` + .png  per-layer drift during training (:data:`DRIFT_JSON`)
``eval/<task>.json``            lm-eval results (:data:`EVAL_SUBDIR`); ``eval/error.json`` on failure
``analysis/analysis.json``      the layer-wise analysis (+ ``.csv``, ``.png``)
``report.md``, ``results.json`` the main job's report and its numbers
==============================  ==================================================

Every JSON file is written atomically (a temporary file, then ``os.replace``), so a
reader never sees half a file, and with NaN / infinity written as ``null``.

>>> json_safe({"a": float("nan"), "b": (1, 2.5)})
{'a': None, 'b': [1, 2.5]}
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


#: The subdirectory of a run directory that holds midblock's own training artifacts.
RUN_SUBDIR = "midblock"
PLAN_JSON = f"{RUN_SUBDIR}/plan.json"
DRIFT_JSON = f"{RUN_SUBDIR}/drift.json"
DRIFT_PNG = f"{RUN_SUBDIR}/drift.png"
#: lm-eval results: ``<run>/eval/<task>.json`` (``<task>.<label>.json`` for a baseline).
EVAL_SUBDIR = "eval"
ANALYSIS_JSON = "analysis.json"
ANALYSIS_CSV = "analysis.csv"
ANALYSIS_PNG = "analysis.png"
REPORT_MD = "report.md"
RESULTS_JSON = "results.json"

#: The one environment variable for midblock's cache (converted models, generated lm-eval tasks).
CACHE_ENV = "MIDBLOCK_CACHE_DIR"


def cache_dir(*parts: str) -> Path:
    """``$MIDBLOCK_CACHE_DIR/<parts>`` (default ``~/.cache/midblock/<parts>``)."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "midblock")
    return Path(root).expanduser().joinpath(*parts)


def artifact(run_dir: str | os.PathLike, name: str) -> Path:
    """The path of artifact ``name`` (e.g. :data:`PLAN_JSON`) inside a run directory."""
    return Path(run_dir) / name


def json_safe(obj: Any) -> Any:
    """Plain JSON values: numpy / torch scalars and arrays become numbers and lists,
    NaN / infinity (and lm-eval's ``"N/A"`` stderr is left as a string) become ``None``,
    paths become strings, tuples and sets become lists."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    item = getattr(obj, "item", None)  # numpy / torch scalars
    if callable(item) and getattr(obj, "shape", None) in ((), None):
        try:
            return json_safe(item())
        except (TypeError, ValueError):
            pass
    if hasattr(obj, "tolist"):
        return json_safe(obj.tolist())
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return json_safe(obj.to_dict())
    return str(obj)


def to_json(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON text of ``obj`` (see :func:`json_safe`)."""
    return json.dumps(json_safe(obj), indent=indent, ensure_ascii=False, allow_nan=False)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as strict, indented JSON to ``path``, atomically."""
    return write_text_atomic(path, to_json(obj) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Any) -> Path:
    """Write one JSON object per line, atomically."""
    return write_text_atomic(path, "".join(to_json(r, indent=None) + "\n" for r in rows))


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)
