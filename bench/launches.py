"""What a GPU pays per attention forward: tensor ops (kernel launches), host syncs and torch.compile graph breaks.

    python bench/launches.py                          # every backend at 4096 x 1024, budget 1/8
    python bench/launches.py --shape 1024,256 --methods smyrf,reformer --budget 1/4

Per backend, after one warm-up call per shape (plans and random draws are cached per shape):
- ops: aten operators dispatched by one forward, counted with a TorchDispatchMode, at batch 2 and at batch 8.
  On a GPU each is at least one kernel launch; a count that grows with the batch is a Python loop over images.
- syncs: operators that must copy a value to the host before the next op can be queued (``.item()``,
  ``nonzero``, ``unique``, ``masked_select``, boolean-mask indexing, ...) or that copy Python data (a list) to
  the device: each stalls the GPU's stream. Reads that dispatch no operator on a CPU tensor (``.tolist()``,
  ``.numpy()``, ``.cpu()``) are invisible here; dynamo graph-breaks on them (the next column), and
  ``bench/gpu_check.py`` counts real syncs on a GPU with ``torch.cuda.set_sync_debug_mode``.
- graph breaks: ``torch._dynamo.explain`` on the forward; a break splits the compiled graph (and usually
  means a sync or a Python-side decision on tensor data).
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bench import harness
from common.cli import OneLineParser, report_error
from gan.attention import available_attentions, build_attention

D, DV = 32, 128
BATCHES = (2, 8)
# Operators whose result the host must read before it can queue the next op (data-dependent sizes or values;
# linalg's error check reads its info codes). nonzero_static and _assert_async are sync-free by design.
SYNC_OPS = frozenset({
    "aten::_local_scalar_dense", "aten::nonzero", "aten::unique_consecutive", "aten::_unique", "aten::_unique2",
    "aten::unique_dim", "aten::masked_select", "aten::is_nonzero", "aten::equal", "aten::allclose",
    "aten::bincount", "aten::_linalg_check_errors",
})
INDEX_OPS = frozenset({"aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"})


class OpCounter(TorchDispatchMode):
    """Counts every aten op dispatched inside the ``with`` block, and the host-syncing ones by name."""

    def __init__(self):
        super().__init__()
        self.ops = 0
        self.syncs: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        name = func.name()
        if syncs_host(name, args, kwargs or {}):
            self.syncs[name.split(".")[0].removeprefix("aten::")] += 1
        return func(*args, **(kwargs or {}))


def syncs_host(name: str, args, kwargs) -> bool:
    """Whether operator ``name`` (aten::op.overload) called on ``args`` makes the host wait for the device."""
    base = name.split(".")[0]
    if name in SYNC_OPS or base in SYNC_OPS:
        return True
    if base in INDEX_OPS:  # x[mask] (and x[mask] = y): a boolean index has a data-dependent size
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8) for t in indices)
    if name == "aten::repeat_interleave.Tensor":  # the output's length is the repeats' sum, unless given
        return kwargs.get("output_size") is None
    # A tensor built from Python data (torch.tensor([...]), new_tensor): a blocking host-to-device copy on a GPU.
    # 0-dim ones are Python scalars (x[i] = 0.0), which become device scalars without a copy.
    return base == "aten::lift_fresh" and args[0].dim() > 0


def inputs(batch: int, nq: int, nk: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q (B,Nq,d), k (B,Nk,d), v (B,Nk,dv) isotropic at logit std ~1, every image drawn from its own seed."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, nq, D, generator=g) / D**0.25
    k = torch.randn(batch, nk, D, generator=g) / D**0.25
    return q, k, torch.randn(batch, nk, DV, generator=g)


def count(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> OpCounter:
    """Ops and syncs of one forward, after a warm-up call at the same shape."""
    attn(q, k, v, scale=1.0)
    counter = OpCounter()
    with torch.no_grad(), counter:
        attn(q, k, v, scale=1.0)
    return counter


def graph_breaks(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[int, list[str]]:
    """(number of graph breaks, their reasons, deduplicated) of ``torch.compile`` tracing one forward."""
    import torch._dynamo

    torch._dynamo.reset()
    explanation = torch._dynamo.explain(lambda q, k, v: attn(q, k, v, scale=1.0))(q, k, v)
    reasons = sorted({str(getattr(r, "reason", r)).splitlines()[0][:160] for r in explanation.break_reasons})
    return explanation.graph_break_count, reasons


def measure(method: str, budget: float | None, nq: int, nk: int, with_breaks: bool = True) -> dict:
    """One backend's row: ops at each of BATCHES, syncs at the first, graph breaks."""
    attn = build_attention(method, **({} if method == "exact" or budget is None else {"budget": budget}))
    row: dict = {"method": method}
    for batch in BATCHES:
        counter = count(attn, *inputs(batch, nq, nk))
        row[f"ops_b{batch}"] = counter.ops
        if batch == BATCHES[0]:
            row["syncs"] = sum(counter.syncs.values())
            row["sync_ops"] = dict(counter.syncs)
    if with_breaks:
        row["graph_breaks"], row["break_reasons"] = graph_breaks(attn, *inputs(BATCHES[0], nq, nk))
    return row


def markdown(rows: list[dict]) -> str:
    lines = [f"| backend | ops at B={BATCHES[0]} | ops at B={BATCHES[1]} | host syncs | graph breaks |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        syncs = f"{r['syncs']}" + (f" ({', '.join(sorted(r['sync_ops']))})" if r["syncs"] else "")
        lines.append(f"| {r['method']} | {r[f'ops_b{BATCHES[0]}']} | {r[f'ops_b{BATCHES[1]}']} | {syncs} | "
                     f"{r.get('graph_breaks', '-')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="all", help="comma-separated backends (default: all registered)")
    parser.add_argument("--shape", default="4096,1024", help="Nq,Nk (default 4096,1024: BigGAN-deep-128's layer)")
    parser.add_argument("--budget", default="1/8", help="fraction of the dense scores (default 1/8)")
    parser.add_argument("--no-breaks", action="store_true", help="skip the torch.compile graph-break count")
    args = parser.parse_args(argv)
    try:
        config = _checked(args)
    except ValueError as err:
        return report_error(err)
    rows = []
    for method in config["methods"]:
        row = measure(method, config["budget"], *config["shape"], with_breaks=not args.no_breaks)
        rows.append(row)
        for reason in row.get("break_reasons", []):
            print(f"{method}: graph break: {reason}", file=sys.stderr)
    print(f"Nq={config['shape'][0]}, Nk={config['shape'][1]}, d={D}, dv={DV}, budget {args.budget}, "
          f"torch {torch.__version__}")
    print(markdown(rows))
    return 0


def _checked(args: argparse.Namespace) -> dict:
    methods = available_attentions() if args.methods == "all" else harness.choices(
        args.methods, available_attentions(), "backend(s)")
    shape = harness.counts(args.shape, "--shape", 1)
    if len(shape) != 2:
        raise ValueError(f"--shape takes two positive ints Nq,Nk such as 4096,1024, got {args.shape!r}")
    [budget] = harness.budgets(args.budget, "--budget")[:1]
    return {"methods": methods, "shape": tuple(shape), "budget": float(budget)}


if __name__ == "__main__":
    sys.exit(main())
