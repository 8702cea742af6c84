"""The metric table drives rows and every report format; metrics.py stands apart from the runner."""
from __future__ import annotations

import ast
from pathlib import Path

import torch

import eval.metrics as metrics
from eval.features import MethodFeatures
from eval.metrics import Metric, RowInputs, ScoreProtocol, method_row
from eval.report import _csv_text, markdown_table, text_table

ROOT = Path(__file__).resolve().parents[1]


def _run(n: int = 12, dim: int = 8, seed: int = 0) -> MethodFeatures:
    gen = torch.Generator().manual_seed(seed)
    return MethodFeatures(features=torch.randn(n, dim, generator=gen), logits=torch.randn(n, 1008, generator=gen),
                          attn_error=torch.zeros(n, dtype=torch.float64), gen_seconds=2.0, attn_seconds=0.1,
                          attn_calls=4, attn_peak_bytes=2**20, attn_shape=(16, 4, 2), generated=n)


PROTOCOL = ScoreProtocol(is_splits=2, bootstrap=0)


def _inputs(run, exact, protocol=PROTOCOL) -> RowInputs:
    return RowInputs(run, exact, torch.zeros(8), torch.eye(8), torch.device("cpu"), run is exact, True, protocol)


def test_one_entry_adds_a_column_to_the_row_and_every_report(monkeypatch):
    extra = Metric("double_n", "{:.1f}", "twice the image count", lambda r: 2 * r.run.features.shape[0])
    monkeypatch.setattr(metrics, "METRICS", (*metrics.METRICS, extra))
    exact = _run()
    row = method_row(_inputs(exact, exact))
    assert row["double_n"] == 24
    methods = {"exact": row}
    assert "double_n" in text_table(methods).splitlines()[0] and "24.0" in text_table(methods)
    header, row_line = _csv_text(methods).splitlines()
    assert header.endswith(",double_n") and row_line.endswith(",24")
    assert markdown_table(methods).splitlines()[0].endswith("| double_n |")


def test_bootstrap_intervals_are_paired_and_bracket_the_estimate():
    # the same resampled image sets for every method: a method with the exact run's features gets its intervals
    exact, other = _run(seed=0), _run(seed=1)
    protocol = ScoreProtocol(is_splits=2, bootstrap=40, bootstrap_seed=3)
    a = method_row(_inputs(exact, exact, protocol))
    b = method_row(RowInputs(MethodFeatures(**exact.__dict__), exact, torch.zeros(8), torch.eye(8),
                             torch.device("cpu"), False, True, protocol))
    assert (a["fid_ci_low"], a["fid_ci_high"], a["is_ci_low"]) == (b["fid_ci_low"], b["fid_ci_high"], b["is_ci_low"])
    c = method_row(_inputs(other, exact, protocol))
    assert c["fid_ci_low"] <= c["fid_ci_high"] and c["fid_ci_low"] != a["fid_ci_low"]
    assert a["fid_ci_low"] < a["fid"] * 1.5 and a["fid_ci_high"] > a["fid"] * 0.5
    assert c["fid_to_exact"] > 0.1 and abs(a["fid_to_exact"]) < 1e-9


def test_metrics_does_not_import_the_runner():
    tree = ast.parse((ROOT / "eval" / "metrics.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert "runner" not in imported and "eval.runner" not in imported
