"""Shared figure helpers (matplotlib, imported lazily; the Agg backend): legends that never cover
data, the trained and recommended windows drawn so they cannot be confused, and the per-variant
drift bar chart the training callback writes (``midblock/drift.png``).

Every figure of the package follows two rules, checked by rendering in ``tests/test_figures.py``:

* a legend sits outside the axes (:func:`legend_outside`), so it covers no bar, line or point;
* the TRAINED window is shaded (:func:`shade_trained`) and a RECOMMENDED window is a hatched
  outline (:func:`outline_recommended`); each is labelled with its layers.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from midblock_plugin.window import describe_window


#: Style of the trained window (a filled band) and of a recommended one (a hatched outline).
TRAINED_STYLE = dict(color="tab:orange", alpha=0.15, lw=0, zorder=0)
RECOMMENDED_STYLE = dict(fill=False, hatch="///", edgecolor="tab:green", lw=1.4, zorder=1)


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def runs(layers: Sequence[int]) -> list[tuple[int, int]]:
    """Contiguous runs of ``layers`` as ``(first, last + 1)``: ``[2, 3, 4, 7]`` -> ``[(2, 5), (7, 8)]``."""
    out: list[tuple[int, int]] = []
    for i in sorted(layers):
        if out and i == out[-1][1]:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out


def legend_outside(ax: Any, handles: Optional[list] = None, labels: Optional[list] = None, **kwargs: Any) -> Any:
    """The axes' legend (or one of ``handles`` / ``labels``) to its right, outside the plotting area
    (the layout then makes room for it); ``None`` when nothing is labelled."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return None
    kwargs.setdefault("fontsize", 8)
    return ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, **kwargs)


def _bands(ax: Any, layers: Sequence[int], what: str, style: dict, scale: float, offset: float, label: bool):
    """One ``axvspan`` per contiguous run of ``layers``; the first is labelled ``"<what>: layers ..."``."""
    text = f"{what}: layers {describe_window(0, sorted(layers))}" if label else None
    return [
        ax.axvspan((lo + offset) * scale, (hi + offset) * scale, label=text if k == 0 else None, **style)
        for k, (lo, hi) in enumerate(runs(layers))
    ]


def shade_trained(ax: Any, layers: Sequence[int], scale: float = 1.0, offset: float = 0.0, label: bool = True):
    """Shade the trained layers: x from ``(first + offset) * scale`` to ``(last + 1 + offset) * scale``
    (``scale=1/L`` for relative depth; ``offset=-0.5`` for bars centred on layer indices)."""
    return _bands(ax, layers, "trained", TRAINED_STYLE, scale, offset, label)


def outline_recommended(ax: Any, layers: Sequence[int], scale: float = 1.0, offset: float = 0.0, label: bool = True):
    """Outline the recommended layers with a hatched, unfilled band (drawn over the trained shading)."""
    return _bands(ax, layers, "recommended", RECOMMENDED_STYLE, scale, offset, label)


def drift_figure(data: dict) -> Optional[Any]:
    """The final per-layer relative weight change as bars over every decoder layer, the trained
    window shaded, the legend outside; ``None`` without a recorded step. ``data``: ``drift.json``."""
    last = data["history"][-1]["weight_change"] if data.get("history") else {}
    if not last:
        return None
    plt = pyplot()
    num_layers = data.get("num_layers") or (max(int(k) for k in last) + 1)
    xs = list(range(num_layers))
    ys = [last.get(str(i), last.get(i)) or 0.0 for i in xs]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.bar(xs, ys, color="#3b6ea5", label="weight change", zorder=2)
    shade_trained(ax, data["layers"], offset=-0.5)
    ax.set_xlim(-0.5, num_layers - 0.5)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("||W_t - W_0|| / ||W_0||")
    ax.set_title(f"midblock drift ({data['mode']}), step {data['history'][-1]['step']}")
    legend_outside(ax)
    fig.tight_layout()
    return fig


def plot_drift(data: dict, path: str) -> Optional[str]:
    """Write :func:`drift_figure` to ``path`` (nothing without a recorded step); returns the path."""
    fig = drift_figure(data)
    if fig is None:
        return None
    from midblock_plugin.storage import save_figure

    save_figure(fig, path, dpi=110)
    pyplot().close(fig)
    return path
