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
from midblock_plugin.window import WindowError, describe_window, segments_to_layers


__all__ = [
    "analysis_figure",
    "load_analysis",
    "summary_table",
    "to_json",
    "window_words",
    "write_csv",
    "write_png",
    "write_reports",
]

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
    from midblock_plugin.storage import atomic_file

    path = Path(path)
    columns = list(doc["columns"])
    with atomic_file(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for row in doc["layers"]:
            writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
    return path


def exact_mask(mask: Optional[str], layers: Sequence[int], num_layers: int) -> Optional[str]:
    """``mask`` when it selects exactly ``layers`` of an ``num_layers``-layer model, else ``None``
    (``01111`` on 30 layers is layers 6-29: it does not describe layers 6-27)."""
    if not mask or not num_layers:
        return None
    try:
        return mask if segments_to_layers(str(mask), int(num_layers)) == sorted(layers) else None
    except WindowError:
        return None


def window_words(rec: dict, num_layers: Optional[int] = None) -> str:
    """A window in words: ``layers 2-7 (mask 01110)``, the mask only when it is exact (:func:`exact_mask`)."""
    layers = list(rec.get("layers") or [])
    mask = exact_mask(rec.get("segments"), layers, num_layers or rec.get("num_layers") or 0)
    return f"layers {rec.get('window') or describe_window(0, layers)}" + (f" (mask {mask})" if mask else "")


#: Line style of a series by the model it describes (the suffix of its column).
_STYLES = {
    "_base": dict(ls="-", marker="o", mfc=None),
    "_tuned": dict(ls="--", marker="s", mfc="none"),
    "_cross": dict(ls=":", marker="^", mfc="none"),
}


def _style(column: str, colors: dict[str, str]) -> dict:
    """Base solid with filled dots, tuned dashed with open squares, base-vs-tuned dotted; one colour per
    measure, so a base and a tuned series that coincide are still both visible."""
    suffix = next((s for s in _STYLES if column.endswith(s)), "")
    family = column[: -len(suffix)] if suffix else column
    color = colors.setdefault(family, f"C{len(colors)}")
    style = dict(_STYLES.get(suffix, dict(ls="-", marker="o", mfc=None)))
    if style["mfc"] is None:
        style.pop("mfc")
    return dict(color=color, ms=3.5, lw=1.4, **style)


def trained_layers(doc: dict) -> list[int]:
    """The layers the TUNED model trained (every layer for a full model or an every-layer adapter);
    none in single-model mode."""
    if doc.get("mode") != "pair":
        return []
    tuned = doc.get("tuned_layers")
    return sorted(tuned) if tuned is not None else list(range(int(doc["model"]["num_layers"])))


def analysis_figure(doc: dict, title: Optional[str] = None):
    """Every metric over relative depth, one panel per group of metrics; the TRAINED window shaded
    and the RECOMMENDED one a hatched outline, both labelled with their layers in a legend below the
    panels; each panel's series legend to its right, outside the data."""
    from midblock_plugin.figures import legend_outside, outline_recommended, pyplot, shade_trained

    plt = pyplot()
    rows = doc["layers"]
    num_layers = doc["model"]["num_layers"]
    rec = doc["recommendation"]
    panels = PAIR_PANELS if doc["mode"] == "pair" else SINGLE_PANELS
    panels = [(t, [(c, lab) for c, lab in series if c in doc["columns"]]) for t, series in panels]
    panels = [(t, s) for t, s in panels if s]
    ncols = 2
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(6.4 * ncols, 2.9 * nrows + 1.0), squeeze=False, sharex=True, layout="constrained"
    )
    depth = [r["relative_depth"] for r in rows]
    trained = trained_layers(doc)
    recommended = [] if rec.get("refused") else list(rec.get("layers") or [])
    for ax, (panel_title, series) in zip(axes.flat, panels):
        shade_trained(ax, trained, scale=1 / num_layers)
        outline_recommended(ax, recommended, scale=1 / num_layers)
        colors: dict[str, str] = {}
        for col, label in series:
            ys = [float("nan") if r.get(col) is None else r[col] for r in rows]
            ax.plot(depth, ys, label=label, zorder=3, **_style(col, colors))
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        keep = [(h, lab) for h, lab in zip(handles, labels) if not lab.startswith(("trained:", "recommended:"))]
        if len(keep) > 1:
            legend_outside(ax, handles=[h for h, _ in keep], labels=[lab for _, lab in keep], fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    for col in range(ncols):  # the lowest panel of each column carries the depth axis
        shown = [axes[r][col] for r in range(nrows) if r * ncols + col < len(panels)]
        if shown:
            shown[-1].xaxis.set_tick_params(labelbottom=True)
            shown[-1].set_xlabel("relative depth")
    marks, names = axes.flat[0].get_legend_handles_labels()
    marks = [(h, n) for h, n in zip(marks, names) if n.startswith(("trained:", "recommended:"))]
    if marks:
        fig.legend([h for h, _ in marks], [n for _, n in marks], loc="outside lower center", ncols=2, fontsize=9)
    if title is None:
        who = Path(str(doc["base"])).name
        if doc["mode"] == "pair":
            who += f" vs {Path(str(doc['tuned'])).name} ({doc.get('tuned_kind')})"
        what = [f"trained: layers {describe_window(0, trained)} (shaded)"] if trained else []
        if rec.get("refused"):
            what.append("no window recommended (window-tuned TUNED)")
        else:
            what.append(
                f"recommended: {window_words(rec, num_layers)} (hatched, from {rec.get('signal_name')}"
                + (", paper default" if rec.get("fallback") else "")
                + ")"
            )
        probe = doc.get("probe")
        title = (
            f"midblock analyze: {who}\nL={num_layers}; "
            + "; ".join(what)
            + (f"; probe window {window_words(probe, num_layers)}" if probe else "")
        )
    fig.suptitle(title, fontsize=10)
    return fig


def write_png(doc: dict, path: str | os.PathLike, title: Optional[str] = None) -> Path:
    """Write :func:`analysis_figure` to a PNG."""
    from midblock_plugin.figures import pyplot

    path = Path(path)
    from midblock_plugin.storage import save_figure

    fig = analysis_figure(doc, title)
    save_figure(fig, path, dpi=110)
    pyplot().close(fig)
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
        mask = exact_mask(rec.get("segments"), rec["layers"], rec["num_layers"])  # a mask only when it is exact
        lines.append(
            f"recommended window: layers {rec['window']} of {rec['num_layers']}"
            + (f" (mask {mask})" if mask else "")
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
            f"probe (before training, {probe['signal_name']}): window {window_words(probe, rec.get('num_layers'))}"
            + (f"; paper default because {probe['fallback']}" if probe.get("fallback") else "")
            + (
                f"; overlap with the recommendation {vs['jaccard']:.2f}"
                if vs and vs.get("jaccard") is not None
                else ""
            )
        )
    lines.append(f"rule (heuristic): {rec['rule']}")
    return "\n".join(lines)
