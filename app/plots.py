"""The per-backend plot: attention error and pixel difference at the chosen budget (bars read faster than a table)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry involved

PUBLISHED_COLOUR = "#2563eb"
VARIANT_COLOUR = "#d97706"
REFERENCE_COLOUR = "#6b7280"


def error_plot(runs: Sequence[dict[str, Any]]) -> Figure:
    """Two horizontal bar panels, one bar per backend (exact included as the zero line):
    relative attention error and mean pixel difference; blue = published algorithm, orange = project variant."""
    names = [run["name"] for run in runs][::-1]  # top to bottom in the page's row order
    colours = [{"published": PUBLISHED_COLOUR, "reference": REFERENCE_COLOUR}.get(run["group"], VARIANT_COLOUR)
               for run in runs][::-1]
    budget = runs[0].get("budget", "") if runs else ""
    fig = Figure(figsize=(8.0, 1.4 + 0.32 * len(runs)), layout="constrained")
    panels = fig.subplots(1, 2, sharey=True)
    for ax, key, title in ((panels[0], "attn_rel_error", "attention rel. error"),
                           (panels[1], "pixel_diff", "pixel diff (pixels in [0, 1])")):
        values = [float(run[key]) for run in runs][::-1]
        bars = ax.barh(names, values, color=colours)
        ax.bar_label(bars, labels=[f"{v:.3g}" for v in values], padding=2, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xlim(0, max(values + [1e-12]) * 1.3)
        ax.tick_params(labelsize=8)
    fig.suptitle(f"Attention error and pixel difference per backend at budget {budget}\n"
                 "(blue: published algorithm, orange: project variant, grey: exact reference)", fontsize=9)
    return fig
