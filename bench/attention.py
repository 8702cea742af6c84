"""Attention benchmark: relative error, time and peak extra memory of every registered backend.

    python bench/attention.py --out results/attention.json
    python bench/attention.py --quick --methods exact,performer,topk

At the first size (Nq=4096, Nk=1024: BigGAN-deep-128's attention, B=2, d=32, dv=128, scale 1)
every regime gets a table: per method and budget the relative error ||o - o_exact|| / ||o_exact||
(reference: float64 SDPA), the error of exact top-k with the same number of score entries per
query (the floor for any sparse support of that size), the median time and the peak extra
memory of one call. The larger sizes (Nk = Nq/4) give time and memory on one regime for the
scaling curve. Peak extra memory is measured at the allocator: CUDA's max_memory_allocated, or
on the CPU the profiler's allocation trace (peak of live bytes allocated during the call, the
output included).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from fractions import Fraction
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
from tqdm import tqdm

from bench.regimes import REGIMES, regime_qkv
from gan.attention import available_attentions, build_attention

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
BATCH, D, DV = 2, 32, 128
QUICK_SIZES = (512, 1024)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = validate(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    records = run(config)
    print(markdown(records, config))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(json.dumps({"config": config_json(config), "results": records}, indent=1))
        tmp.replace(out)
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="all", help="comma-separated backend names (default: all registered)")
    parser.add_argument("--budgets", default="1/32,1/8,1/4", help="comma-separated fractions of the dense score matrix")
    parser.add_argument("--sizes", default=None,
                        help="comma-separated Nq (Nk = Nq/4); the first gets the per-regime error tables (default 4096,16384,65536)")
    parser.add_argument("--regimes", default=",".join(REGIMES), help=f"comma-separated, from {', '.join(REGIMES)}")
    parser.add_argument("--scaling-regime", default="isotropic-diffuse", help="regime timed at the larger sizes")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--dtype", default="float32", help=f"input dtype: {', '.join(DTYPES)}")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls at the first size (fewer at larger sizes, at least 1)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs and of every backend")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: sizes {','.join(map(str, QUICK_SIZES))}, one repeat")
    parser.add_argument("--out", default=None, help="write all results as JSON here")
    return parser.parse_args(argv)


def validate(args: argparse.Namespace) -> dict:
    available = available_attentions()
    methods = available if args.methods == "all" else _split(args.methods)
    unknown = [m for m in methods if m not in available]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; available: {', '.join(available)}")
    budgets = [_fraction(b) for b in _split(args.budgets)]
    sizes_text = args.sizes or ",".join(map(str, QUICK_SIZES if args.quick else (4096, 16384, 65536)))
    sizes = [_positive_int(s, "--sizes") for s in _split(sizes_text)]
    if any(s % 4 for s in sizes):
        raise ValueError(f"--sizes must be multiples of 4 (Nk = Nq/4), got {sizes_text}")
    regimes = _split(args.regimes)
    for regime in [*regimes, args.scaling_regime]:
        if regime not in REGIMES:
            raise ValueError(f"unknown regime {regime!r}; accepted: {', '.join(REGIMES)}")
    if args.dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {args.dtype!r}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but CUDA is not available; accepted: cpu")
    if args.repeats < 1 or args.threads < 1:
        raise ValueError("--repeats and --threads must be positive")
    return {
        "methods": methods, "budgets": budgets, "sizes": sizes, "regimes": regimes,
        "scaling_regime": args.scaling_regime, "device": device, "dtype": args.dtype,
        "repeats": 1 if args.quick else args.repeats, "threads": args.threads, "seed": args.seed,
    }


def config_json(config: dict) -> dict:
    return {**config, "device": str(config["device"]), "budgets": [str(b) for b in config["budgets"]],
            "batch": BATCH, "d": D, "dv": DV, "torch": torch.__version__}


def run(config: dict) -> list[dict]:
    """Every (regime, size, method, budget) record; errors of a backend are recorded, not raised."""
    base, *larger = config["sizes"]
    shapes = [(regime, base, True) for regime in config["regimes"]] + [(config["scaling_regime"], nq, False) for nq in larger]
    rows_per_shape = sum(1 if m == "exact" else len(config["budgets"]) for m in config["methods"])
    records = []
    with tqdm(total=len(shapes) * rows_per_shape, desc="attention bench", file=sys.stderr) as progress:
        for regime, nq, with_error in shapes:
            records += bench_shape(config, regime, nq, with_error, progress)
    return records


def bench_shape(config: dict, regime: str, nq: int, with_error: bool, progress: tqdm) -> list[dict]:
    """Records of every method and budget on one regime's inputs at Nq = ``nq``, Nk = nq/4."""
    nk, device, dtype = nq // 4, config["device"], DTYPES[config["dtype"]]
    q, k, v = regime_qkv(regime, batch=BATCH, nq=nq, nk=nk, d=D, dv=DV, seed=config["seed"])
    reference = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=1.0) if with_error else None
    q, k, v = (t.to(device=device, dtype=dtype) for t in (q, k, v))
    repeats = max(1, config["repeats"] * config["sizes"][0] ** 2 // nq**2)
    floor_errors: dict[int, float] = {}  # top-k error by k, shared by the methods of this shape

    def floor_error(top: int) -> float:
        if top not in floor_errors:
            floor_errors[top] = relative_error(build_attention("topk", k=top)(q, k, v, scale=1.0), reference)
        return floor_errors[top]

    records = []
    for method in config["methods"]:
        for budget in ([None] if method == "exact" else config["budgets"]):
            record = {"regime": regime, "method": method, "budget": None if budget is None else str(budget),
                      "nq": nq, "nk": nk, "dense_bytes": BATCH * nq * nk * 4}
            try:
                params = {} if budget is None else {"budget": float(budget)}
                record.update(measure(build_attention(method, seed=config["seed"], **params), q, k, v, reference, floor_error, repeats))
            except (ValueError, RuntimeError) as err:
                record["error"] = f"{type(err).__name__}: {err}"
            records.append(record)
            progress.set_postfix_str(f"{regime} Nq={nq} {method} {record['budget'] or ''}")
            progress.update()
    return records


def measure(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, reference: torch.Tensor | None,
            floor_error, repeats: int) -> dict:
    """Resolved params, score entries, (error and top-k floor error), times and peak memory of one backend."""
    nq, nk = q.shape[1], k.shape[1]
    result = {"params": attn.resolve(nq, nk, D), "score_entries": attn.score_entries(nq, nk, D)}
    out = attn(q, k, v, scale=1.0)  # warm-up: draws and caches random projections
    if reference is not None:
        result["rel_error"] = relative_error(out, reference)
        result["topk_floor_k"] = min(nk, max(1, round(result["score_entries"] / nq)))  # same entries per query
        result["topk_floor_error"] = floor_error(result["topk_floor_k"])
    del out
    times = time_calls(attn, q, k, v, repeats)
    result["time_ms"] = statistics.median(times)
    result["time_ms_min"] = min(times)
    result["peak_extra_bytes"] = peak_extra_bytes(attn, q, k, v)
    return result


def relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    out = out.to(device=reference.device, dtype=torch.float64)
    return float((out - reference).norm() / reference.norm())


def time_calls(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, repeats: int) -> list[float]:
    """Wall time in ms of ``repeats`` calls (CUDA synchronised)."""
    times = []
    for _ in range(repeats):
        _synchronize(q.device)
        start = time.perf_counter()
        attn(q, k, v, scale=1.0)
        _synchronize(q.device)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def peak_extra_bytes(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> int:
    """Peak bytes allocated during one call beyond what was live before it (output included)."""
    if q.device.type == "cuda":
        torch.cuda.synchronize(q.device)
        torch.cuda.reset_peak_memory_stats(q.device)
        before = torch.cuda.memory_allocated(q.device)
        attn(q, k, v, scale=1.0)
        torch.cuda.synchronize(q.device)
        return torch.cuda.max_memory_allocated(q.device) - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        attn(q, k, v, scale=1.0)
    allocations = []  # (time ns, +bytes allocated / -bytes freed)
    pending = list(prof.profiler.kineto_results.experimental_event_tree())
    while pending:
        event = pending.pop()
        pending.extend(event.children)
        if event.tag == torch._C._profiler._EventType.Allocation:
            allocations.append((event.start_time_ns, event.extra_fields.alloc_size))
    live = peak = 0
    for _, size in sorted(allocations):
        live += size
        peak = max(peak, live)
    return peak


def markdown(records: list[dict], config: dict) -> str:
    base = config["sizes"][0]
    lines = []
    for regime in config["regimes"]:
        rows = [r for r in records if r["regime"] == regime and r["nq"] == base]
        lines += [f"\n### {regime}: Nq={base}, Nk={base // 4}, B={BATCH}, d={D}, dv={DV}, {config['dtype']} on {config['device']}\n",
                  "| method | budget | params | entries / dense | rel. error | top-k floor (k) | time ms median (min) | peak extra MiB |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [_row(r, with_error=True) for r in rows]
    rows = [r for r in records if r["regime"] == config["scaling_regime"]]
    lines += [f"\n### scaling ({config['scaling_regime']}): time and peak extra memory, Nk = Nq/4\n",
              "| method | budget | params | Nq | time ms median (min) | peak extra MiB | peak / dense scores |",
              "|---|---|---|---|---|---|---|"]
    rows.sort(key=lambda r: (config["methods"].index(r["method"]), Fraction(r["budget"] or 1), r["nq"]))
    lines += [_row(r, with_error=False) for r in rows]
    return "\n".join(lines)


def _row(r: dict, with_error: bool) -> str:
    budget = r["budget"] or "-"
    if "error" in r:
        return f"| {r['method']} | {budget} | {r['error']} |" + " |" * (5 if with_error else 4)
    params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "-"
    mib = r["peak_extra_bytes"] / 2**20
    if with_error:
        ratio = r["score_entries"] / (r["nq"] * r["nk"])
        return (f"| {r['method']} | {budget} | {params} | {ratio:.4f} | {r['rel_error']:.4f} | "
                f"{r['topk_floor_error']:.4f} ({r['topk_floor_k']}) | {_ms(r)} | {mib:.1f} |")
    return f"| {r['method']} | {budget} | {params} | {r['nq']} | {_ms(r)} | {mib:.1f} | {r['peak_extra_bytes'] / r['dense_bytes']:.3f} |"


def _ms(r: dict) -> str:
    return f"{r['time_ms']:.1f} ({r['time_ms_min']:.1f})"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _fraction(text: str) -> Fraction:
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"--budgets takes fractions in (0, 1] like 1/8 or 0.125, got {text!r}") from None
    if not 0 < value <= 1:
        raise ValueError(f"--budgets takes fractions in (0, 1] like 1/8 or 0.125, got {text!r}")
    return value


def _positive_int(text: str, option: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{option} takes positive integers, got {text!r}")
    return int(text)


if __name__ == "__main__":
    sys.exit(main())
