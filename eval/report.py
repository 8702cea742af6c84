"""Results on disk and on screen: results.json / .csv / .md, a stdout table, fid_vs_budget.png.

results.json: ``{"methods": {label: {one field per eval.metrics.METRICS entry}}, "config": {...},
"versions": {...}}``. Every file is written to a temporary name and renamed, so a crash leaves no
half-written file; the plot comes last and its failure never costs the results files.
"""

from __future__ import annotations

import csv
import io
import json
import platform
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from common.files import write_atomic

from . import metrics


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for dist in ("biggan-attn", "pytorch-fid", "torch-fidelity", "torchvision"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    out["cuda_device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return out


def table_rows(methods: dict[str, dict]) -> list[list[str]]:
    """Header and one formatted row per method, columns and formats from ``eval.metrics.METRICS``."""
    table = metrics.METRICS
    rows = [["method", *(m.name for m in table)]]
    for label, row in methods.items():
        rows.append([label, *("-" if row[m.name] is None else m.fmt.format(row[m.name]) for m in table)])
    return rows


def text_table(methods: dict[str, dict]) -> str:
    rows = table_rows(methods)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = (
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=False)))
        for r in rows
    )
    return "\n".join(lines)


def markdown_table(methods: dict[str, dict]) -> str:
    rows = table_rows(methods)
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows[1:]]) + "\n"


def _csv_text(methods: dict[str, dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    names = [m.name for m in metrics.METRICS]
    writer.writerow(["method", *names])
    for label, row in methods.items():
        writer.writerow([label, *("" if row[f] is None else row[f] for f in names)])
    return buf.getvalue()


def plot_fid_vs_budget(methods: dict[str, dict], budgets: dict[str, tuple[str, float]]) -> bytes | None:
    """PNG bytes of FID against budget, one line per approximate backend; exact as a dashed line.

    ``budgets`` maps a method label to (backend name, budget). None when fewer than two budgets.
    """
    if len({b for _, b in budgets.values()}) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for backend in sorted({name for name, _ in budgets.values()}):
        points = sorted((b, methods[label]["fid"]) for label, (name, b) in budgets.items() if name == backend)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=backend)
    if "exact" in methods:
        ax.axhline(methods["exact"]["fid"], color="k", linestyle="--", label="exact")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("budget (fraction of the dense score matrix)")
    ax.set_ylabel("FID")
    ax.legend()
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def write_results(
    out: Path, methods: dict[str, dict], config: dict, budgets: dict[str, tuple[str, float]]
) -> tuple[list[Path], str | None]:
    """Write results.json, results.csv, results.md, then fid_vs_budget.png when budgets were swept.

    Returns (files written, the plot's error as one line or None): a missing or broken plotting
    library never costs the results files, which are on disk before the plot is attempted.
    """
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "results.json": json.dumps(
            {"methods": methods, "config": config, "versions": versions()}, indent=2, default=str
        ).encode(),
        "results.csv": _csv_text(methods).encode(),
        "results.md": markdown_table(methods).encode(),
    }
    for name, data in files.items():
        write_atomic(out / name, lambda f, data=data: f.write(data))
    written = [out / name for name in files]
    try:
        png = plot_fid_vs_budget(methods, budgets)
    except Exception as err:  # noqa: BLE001 - any plotting failure: keep the results, report it
        reason = str(err).splitlines()[0] if str(err) else ""
        return written, f"fid_vs_budget.png not written ({type(err).__name__}: {reason})"
    if png is not None:
        written.append(write_atomic(out / "fid_vs_budget.png", lambda f: f.write(png)))
    return written, None
