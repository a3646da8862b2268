"""Write an analysis as JSON, CSV and a PNG figure of the metrics over relative depth.

File names and the JSON encoding (strict, NaN / infinity as ``null``, atomic writes) are
:mod:`midblock_plugin.io`'s; :func:`to_json` is :func:`midblock_plugin.io.to_json`.

>>> from midblock_plugin.analysis import write_reports  # doctest: +SKIP
>>> write_reports(result.to_dict(), "out/")  # doctest: +SKIP
{'json': 'out/analysis.json', 'csv': 'out/analysis.csv', 'png': 'out/analysis.png'}
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Optional, Sequence

from midblock_plugin.io import ANALYSIS_CSV, ANALYSIS_JSON, ANALYSIS_PNG, read_json, to_json, write_json


__all__ = ["load_analysis", "summary_table", "to_json", "write_csv", "write_png", "write_reports"]

#: Figure panels: (title, [(column, label), ...]); columns missing from the data are skipped.
PAIR_PANELS = (
    (
        "Own change of each layer (on base inputs)",
        [("own_change", "own output change"), ("weight_change", "relative weight update")],
    ),
    ("Representational similarity (base vs tuned)", [("cka", "linear CKA"), ("cosine", "cosine")]),
    ("Mean shift ||mu_t - mu_b||", [("mean_shift", "mean shift")]),
    ("Relative weight change", [("weight_change_attn", "attention"), ("weight_change_mlp", "MLP")]),
    (
        "Effective rank / entropy",
        [
            ("effective_rank_base", "eff. rank (base)"),
            ("effective_rank_tuned", "eff. rank (tuned)"),
            ("dataset_entropy_base", "dataset H (base)"),
            ("dataset_entropy_tuned", "dataset H (tuned)"),
            ("prompt_entropy_base", "prompt H (base)"),
            ("prompt_entropy_tuned", "prompt H (tuned)"),
        ],
    ),
    ("Curvature", [("curvature_base", "base"), ("curvature_tuned", "tuned")]),
    (
        "Early-exit agreement",
        [
            ("early_exit_base", "base vs own final"),
            ("early_exit_tuned", "tuned vs own final"),
            ("early_exit_cross", "base vs tuned"),
        ],
    ),
)
SINGLE_PANELS = (
    ("Layer-to-layer similarity", [("adjacent_cka", "CKA(input, output)")]),
    ("Spectral SNR of weights", [("snr_attn", "attention"), ("snr_mlp", "MLP")]),
    (
        "Effective rank / entropy",
        [("effective_rank", "eff. rank"), ("dataset_entropy", "dataset H"), ("prompt_entropy", "prompt H")],
    ),
    ("Curvature", [("curvature", "curvature")]),
    ("Early-exit agreement", [("early_exit", "vs final top-1")]),
)


def load_analysis(path: str | os.PathLike) -> dict:
    """Read an analysis JSON written by ``midblock analyze``."""
    return read_json(path)


def write_csv(doc: dict, path: str | os.PathLike) -> Path:
    """Write one row per layer with the document's columns (empty cell = undefined)."""
    path = Path(path)
    columns = list(doc["columns"])
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for row in doc["layers"]:
            writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
    return path


def _runs(layers: Sequence[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for i in sorted(layers):
        if runs and i == runs[-1][1]:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def write_png(doc: dict, path: str | os.PathLike, title: Optional[str] = None) -> Path:
    """Plot every metric over relative depth, the recommended window shaded, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    rows = doc["layers"]
    num_layers = doc["model"]["num_layers"]
    rec = doc["recommendation"]
    panels = PAIR_PANELS if doc["mode"] == "pair" else SINGLE_PANELS
    panels = [(t, [(c, lab) for c, lab in series if c in doc["columns"]]) for t, series in panels]
    panels = [(t, s) for t, s in panels if s]
    ncols = 3 if len(panels) > 4 else 2
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.0 * ncols, 3.4 * nrows), squeeze=False, sharex=True)
    depth = [r["relative_depth"] for r in rows]
    for ax, (panel_title, series) in zip(axes.flat, panels):
        for lo, hi in _runs(rec["layers"]):
            ax.axvspan(lo / num_layers, hi / num_layers, color="tab:green", alpha=0.15, lw=0)
        for col, label in series:
            ys = [float("nan") if r.get(col) is None else r[col] for r in rows]
            ax.plot(depth, ys, marker="o", ms=3, lw=1.4, label=label)
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=7, loc="best")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("relative depth")
    if title is None:
        who = Path(str(doc["base"])).name
        if doc["mode"] == "pair":
            who += f" vs {Path(str(doc['tuned'])).name} ({doc.get('tuned_kind')})"
        if rec.get("refused"):
            what = "no window recommended (window-tuned TUNED)"
        else:
            what = (
                f"window {rec['window']} (shaded, from {rec.get('signal_name')})"
                + (f", segments {rec['segments']}" if rec.get("segments") else "")
                + (", paper default" if rec.get("fallback") else "")
            )
        probe = doc.get("probe")
        title = f"midblock analyze: {who}\nL={num_layers}, {what}" + (
            f"; probe window {probe['window']}" if probe else ""
        )
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_reports(doc: dict, output_dir: str | os.PathLike, figure: bool = True) -> dict[str, str]:
    """Write ``analysis.json`` (strict JSON, atomically; see :func:`midblock_plugin.io.write_json`),
    ``analysis.csv`` and (with ``figure``) ``analysis.png``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": str(write_json(out / ANALYSIS_JSON, doc)), "csv": str(write_csv(doc, out / ANALYSIS_CSV))}
    if figure:
        paths["png"] = str(write_png(doc, out / ANALYSIS_PNG))
    return paths


def summary_table(doc: dict) -> str:
    """A short human-readable table of the key metrics and the recommendation."""
    if doc["mode"] == "pair":
        cols = [
            c for c in ("own_change", "weight_change", "cka", "mean_shift", "early_exit_cross") if c in doc["columns"]
        ]
    else:
        cols = [
            c
            for c in ("adjacent_cka", "effective_rank", "prompt_entropy", "snr_attn", "snr_mlp", "early_exit")
            if c in doc["columns"]
        ]
    rec = doc["recommendation"]
    in_window = set(rec["layers"])
    lines = ["layer  depth  " + "  ".join(f"{c:>18}" for c in cols)]
    for r in doc["layers"]:
        mark = "*" if r["layer"] in in_window else " "
        cells = "  ".join(f"{'-' if r.get(c) is None else format(r[c], '.4f'):>18}" for c in cols)
        lines.append(f"{r['layer']:>4}{mark}  {r['relative_depth']:.3f}  {cells}")
    lines.append("")
    if doc.get("tuned_variant"):
        lines.append(f"tuned variant analysed: {doc['tuned_variant']}")
    if rec.get("refused"):
        lines.append(f"NO WINDOW RECOMMENDED: {rec['refused']}.")
    else:
        lines.append(
            f"recommended window: layers {rec['window']} of {rec['num_layers']}"
            + (f" (mask {rec['segments']})" if rec.get("segments") else "")
            + (f", signal {rec['signal_name']}" if rec.get("signal_name") else "")
            + (
                f", holds {rec['captured_share']:.1%} of the change on {rec['layer_share']:.1%} of the layers"
                if rec.get("captured_share") is not None and rec.get("layer_share") is not None
                else ""
            )
            + ("" if not rec.get("fallback") else f"; paper default because {rec['fallback']}")
        )
    probe = doc.get("probe")
    if probe:
        vs = probe.get("vs_recommendation")
        lines.append(
            f"probe (before training, {probe['signal_name']}): window {probe['window']}"
            + (f" (mask {probe['segments']})" if probe.get("segments") else "")
            + (f"; paper default because {probe['fallback']}" if probe.get("fallback") else "")
            + (
                f"; overlap with the recommendation {vs['jaccard']:.2f}"
                if vs and vs.get("jaccard") is not None
                else ""
            )
        )
    lines.append(f"rule (heuristic): {rec['rule']}")
    return "\n".join(lines)
