"""Figures and reports agree with what ran: every legend sits clear of the data (checked by rendering
with matplotlib's Agg backend and comparing display-coordinate boxes), the analysis figure shades the
TRAINED window and outlines the RECOMMENDED one, a window is printed as a mask only when the mask is
exact, and the few-shot count printed is the one the evaluation used."""

import math

import pytest


pytest.importorskip("matplotlib")

from matplotlib.collections import Collection  # noqa: E402

from midblock_plugin.figures import pyplot  # noqa: E402


def _points(ax, fig) -> list[tuple[float, float]]:
    """Display coordinates of every visible data mark of ``ax``: the vertices of each line and points
    along its segments, the corners and centre of each bar, every point of a scatter / error bar."""
    from matplotlib.container import BarContainer

    inside = ax.get_window_extent()
    pts: list[tuple[float, float]] = []
    for line in ax.get_lines():
        xy = line.get_transform().transform(line.get_xydata())
        for (x0, y0), (x1, y1) in zip(xy, xy[1:]):
            pts += [(x0 + (x1 - x0) * t / 20, y0 + (y1 - y0) * t / 20) for t in range(21)]
        pts += [tuple(p) for p in xy]
    for container in ax.containers:
        if isinstance(container, BarContainer):
            for bar in container:
                b = bar.get_window_extent()
                pts += [(b.x0, b.y0), (b.x1, b.y1), (b.x0, b.y1), (b.x1, b.y0), ((b.x0 + b.x1) / 2, b.y1)]
    for coll in ax.collections:
        if isinstance(coll, Collection):
            for path in coll.get_paths():
                if len(path.vertices) and coll.get_offsets().size == 0:
                    pts += [tuple(p) for p in coll.get_transform().transform(path.vertices)]
            if coll.get_offsets().size:
                pts += [tuple(p) for p in coll.get_offset_transform().transform(coll.get_offsets())]
    return [
        (x, y) for x, y in pts if math.isfinite(x) and math.isfinite(y) and inside.contains(x, y)
    ]  # clipped marks are not drawn


def _bars(ax):
    from matplotlib.container import BarContainer

    return [bar.get_window_extent() for c in ax.containers if isinstance(c, BarContainer) for bar in c]


def assert_legends_clear_of_data(fig):
    """No legend of ``fig`` (of an axes or of the figure) covers a data point or a bar of any axes."""
    fig.canvas.draw()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + list(fig.legends)
    assert legends, "the figure has no legend to check"
    for legend in legends:
        box = legend.get_window_extent()
        for ax in fig.axes:
            if not ax.get_visible():
                continue
            covered = [p for p in _points(ax, fig) if box.contains(*p)]
            assert not covered, f"legend {[t.get_text() for t in legend.get_texts()]} covers {len(covered)} points"
            assert not [b for b in _bars(ax) if b.overlaps(box)], "legend covers bars"
    return legends


def _drift_data(num_layers=30, layers=range(0, 12)):
    layers = list(layers)
    change = {str(i): (0.04 + 0.001 * i if i in layers else 0.0) for i in range(num_layers)}
    return {
        "history": [{"step": 16, "weight_change": change}],
        "layers": layers,
        "mode": "lora",
        "num_layers": num_layers,
    }


def test_drift_bar_chart_legend_is_clear_of_the_bars_and_the_window_is_shaded():
    from midblock_plugin.figures import drift_figure

    fig = drift_figure(_drift_data())  # a window at the bottom: tall bars where an upper-left legend would sit
    (legend,) = assert_legends_clear_of_data(fig)
    assert [t.get_text() for t in legend.get_texts()] == ["trained: layers 0-11", "weight change"]
    ax = fig.axes[0]
    assert len(_bars(ax)) == 30
    pyplot().close(fig)


def _analysis_doc(num_layers=12, tuned_layers=None, rec_layers=(4, 5, 6), segments="00100"):
    from midblock_plugin.analysis.report import PAIR_PANELS

    columns = {c: c for _, series in PAIR_PANELS for c, _ in series}
    rows = []
    for i in range(num_layers):  # series that cross the whole panel, top to bottom and back
        row = {"layer": i, "relative_depth": (i + 0.5) / num_layers}
        for k, c in enumerate(columns):
            row[c] = 0.5 + 0.5 * math.sin(i * 0.9 + k)
        rows.append(row)
    return {
        "mode": "pair",
        "base": "/models/base",
        "tuned": "/runs/x/adapter",
        "tuned_kind": "adapter",
        "tuned_layers": tuned_layers,
        "model": {"num_layers": num_layers},
        "columns": {"layer": "", "relative_depth": "", **columns},
        "layers": rows,
        "recommendation": {
            "layers": list(rec_layers),
            "num_layers": num_layers,
            "window": f"{rec_layers[0]}-{rec_layers[-1]}",
            "segments": segments,
            "signal_name": "own_output",
            "refused": None,
            "fallback": None,
            "rule": "test",
        },
        "probe": None,
    }


def _x_span(ax, patch):
    box = patch.get_window_extent()
    inv = ax.transData.inverted()
    return round(inv.transform((box.x0, box.y0))[0], 6), round(inv.transform((box.x1, box.y0))[0], 6)


def test_analysis_figure_shades_the_trained_window_outlines_the_recommended_one_and_no_legend_covers_data():
    from midblock_plugin.analysis.report import analysis_figure

    fig = analysis_figure(_analysis_doc(tuned_layers=[3, 4, 5, 6, 7, 8]))
    legends = assert_legends_clear_of_data(fig)
    assert len(legends) == 1 + sum(1 for ax in fig.axes if ax.get_legend() is not None)
    marks = [t.get_text() for t in fig.legends[0].get_texts()]
    assert marks == ["trained: layers 3-8", "recommended: layers 4-6"]
    for ax in [a for a in fig.axes if a.get_visible()]:
        trained = [p for p in ax.patches if p.get_label() == "trained: layers 3-8"]
        recommended = [p for p in ax.patches if p.get_label() == "recommended: layers 4-6"]
        assert len(trained) == len(recommended) == 1
        assert _x_span(ax, trained[0]) == (round(3 / 12, 6), round(9 / 12, 6)) and trained[0].get_fill()
        assert _x_span(ax, recommended[0]) == (round(4 / 12, 6), round(7 / 12, 6))
        assert not recommended[0].get_fill() and recommended[0].get_hatch()  # outlined, hatched: not a second shade
    assert "trained: layers 3-8 (shaded)" in fig._suptitle.get_text()
    assert "recommended: layers 4-6 (mask 00100) (hatched" in fig._suptitle.get_text()
    pyplot().close(fig)


def test_analysis_of_a_uniform_model_shades_every_layer():
    from midblock_plugin.analysis.report import analysis_figure

    fig = analysis_figure(_analysis_doc(tuned_layers=None))  # an every-layer adapter: trained = all layers
    assert [t.get_text() for t in fig.legends[0].get_texts()][0] == "trained: layers 0-11"
    assert_legends_clear_of_data(fig)
    pyplot().close(fig)


def test_job_figures_keep_their_legends_off_the_data():
    from midblock_plugin.experiments.report import drift_figure, heldout_figure, loss_figure, tradeoff_figure

    records = [
        {"variant": v, "loss_curve": [(s, 2.0 - 0.05 * s + 0.01 * k) for s in range(1, 17)], "drift": _drift_data()["history"][0]["weight_change"]}
        for k, v in enumerate(("11111", "01110", "01000", "00001"))
    ]  # fmt: skip
    entries = [
        {
            "mask": v,
            "best_lr": 5e-4,
            "seeds": 3,
            "heldout_loss": {"mean": 1.5 + 0.01 * k, "ci95": [1.45, 1.55], "per_seed": [1.48, 1.5, 1.52]},
            "by_lr": [{"lr": lr, "kl": 0.001 * (j + 1) * (k + 1), "task_gain": 0.1 * (j + 1)} for j, lr in enumerate((2.5e-4, 5e-4, 1e-3))],
        }
        for k, v in enumerate(("11111", "01110", "01000", "00001"))
    ]  # fmt: skip
    for fig in (
        loss_figure(records),
        drift_figure(records, 30),
        heldout_figure(entries, {"heldout_loss": 1.52}),
        tradeoff_figure(entries),
    ):
        assert_legends_clear_of_data(fig)
        pyplot().close(fig)


def test_a_window_is_printed_as_a_mask_only_when_the_mask_is_exact():
    from midblock_plugin.analysis.report import exact_mask, summary_table, window_words

    inexact = {"layers": list(range(6, 28)), "window": "6-27", "segments": "01111", "num_layers": 30}
    assert window_words(inexact) == "layers 6-27"  # 01111 on 30 layers is 6-29
    exact = {"layers": list(range(6, 30)), "window": "6-29", "segments": "01111", "num_layers": 30}
    assert window_words(exact) == "layers 6-29 (mask 01111)"
    assert exact_mask("01110", [2, 3, 4, 5, 6, 7], 10) == "01110" and exact_mask("01110", [2, 3], 10) is None
    assert exact_mask("0111", [1, 2], 2) is None  # more segments than layers: no mask, no error
    doc = _analysis_doc(num_layers=30, rec_layers=tuple(range(6, 28)), segments="01111")
    doc["recommendation"]["window"] = "6-27"
    table = summary_table(doc)
    assert "recommended window: layers 6-27 of 30" in table and "01111" not in table


def test_the_report_prints_the_few_shot_count_the_evaluation_used():
    from midblock_plugin.experiments.options import JobOptions
    from midblock_plugin.experiments.report import _shots

    task_default = JobOptions(output_dir="unused")
    ran_five = {"eval": {"num_fewshot": 5}}
    assert _shots(task_default, ran_five, [{"gsm8k": {"num_fewshot": 5}}]) == "5-shot (the task's default)"
    assert _shots(JobOptions(output_dir="unused", num_fewshot=1), {"eval": {"num_fewshot": 1}}, []) == "1-shot"
    assert _shots(task_default, {}, []) == "the task's default number of shots"  # nothing evaluated reported it
