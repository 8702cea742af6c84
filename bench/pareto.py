"""Error-vs-time and error-vs-memory fronts of every attention backend, exact attention included.

    python bench/pareto.py                                   # every regime, sizes 4096,16384,65536 (hours on 2 cores)
    python bench/pareto.py --sizes 4096 --regimes featuremap-smooth,iso-0.5 --out results/pareto
    python bench/pareto.py --inputs results/attention_inputs.pt --out results/pareto-real   # captured q, k, v

For every (regime, size) it builds the inputs (B=2, Nk = Nq/4, d=32, dv=128, scale 1; the regimes of
bench/regimes.py and the stress regimes of bench/stress_regimes.py), then every backend at every budget of
the sweep and exact attention. The first call of each point runs under the memory profiler (peak bytes
allocated beyond what was live before it, exact attention's too) and gives the output, whose relative error
||o - o_exact|| / ||o_exact|| is taken against a float64 reference; then --repeats rounds time every point
once per round, interleaved, so a busy machine slows every point alike; the time is the median.

A point is on the time front when no other point has both lower-or-equal error and lower-or-equal time (one
strictly); likewise for the memory front. It prints, per regime and size, the points on each front and the
time target of the variants (every published point at <= 0.5x exact's time dominated by some variant point
within 10% of its time), and writes pareto.json and one PNG per size and axis (a panel per regime; published
methods and the project's variants in two colours; fronts drawn) to --out.
"""
from __future__ import annotations

import json
import statistics
import sys
from fractions import Fraction
from pathlib import Path

import torch
from tqdm import tqdm

from bench import harness
from bench.harness import call_with_peak_memory, relative_error, time_calls
from bench.regimes import REGIMES, regime_qkv
from bench.stress_regimes import DEFAULT_REGIMES as STRESS_REGIMES
from bench.stress_regimes import GEOMETRIES, stress_qkv
from common.cli import OneLineParser, report_error
from gan.attention import attention_info, available_attentions, build_attention

BATCH, D, DV = 2, 32, 128
DEFAULT_SIZES = "4096,16384,65536"
DEFAULT_BUDGETS = "1/64,1/32,1/16,1/8,1/4,1/2"
TIME_SHARE = 0.5  # published points at most this share of exact's time are the ones a variant must dominate
TIME_TOLERANCE = 1.10  # "same time" within 10%: one run's timing noise on a shared machine
REFERENCE_ROWS = 4096  # float64 reference computed this many queries at a time (memory ~ rows x Nk)


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse(argv)
    except ValueError as err:
        return report_error(err)
    torch.set_num_threads(config["threads"])
    results = []
    cases = [(regime, nq) for nq in config["sizes"] for regime in config["regimes"]]
    for regime, nq in tqdm(cases, desc="pareto", file=sys.stderr):
        results.append(sweep(config, regime, nq))
        print(summary(results[-1]), flush=True)
    out = config["out"]
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / "pareto.json.tmp"
        tmp.write_text(json.dumps({"config": {**config, "out": str(out)}, "results": results}, indent=1))
        tmp.replace(out / "pareto.json")
        for path in plot(results, out):
            print(f"wrote {path}")
    return 0


def parse(argv: list[str] | None) -> dict:
    """The sweep's configuration, every argument checked (ValueError saying what is accepted)."""
    p = OneLineParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default="all", help="comma-separated backends (default: all registered)")
    p.add_argument("--budgets", default=DEFAULT_BUDGETS, help=f"dense-score fractions (default {DEFAULT_BUDGETS})")
    p.add_argument("--sizes", default=DEFAULT_SIZES, help=f"comma-separated Nq, Nk = Nq/4 (default {DEFAULT_SIZES})")
    p.add_argument("--regimes", default="all", help="comma-separated regimes of bench/regimes.py and "
                   "bench/stress_regimes.py (default: all of both)")
    p.add_argument("--inputs", default=None, help="captured attention inputs (eval/fid.py or app/sample.py "
                   "--save-attention-inputs) instead of the synthetic regimes; their first --batch images")
    p.add_argument("--batch", default=str(BATCH), help=f"images per call (default {BATCH})")
    p.add_argument("--repeats", default="3", help="interleaved timing rounds; the median is kept (default 3)")
    p.add_argument("--threads", default="2", help="torch.set_num_threads (default 2)")
    p.add_argument("--seed", default="0", help="seed of the inputs and the backends (default 0)")
    p.add_argument("--out", default=None, help="folder for pareto.json and the PNG plots")
    args = p.parse_args(argv)
    methods = available_attentions() if args.methods == "all" else harness.choices(
        args.methods, available_attentions(), "backend(s)")
    if "exact" not in methods:
        methods = ["exact", *methods]  # every front is drawn against exact attention
    budgets = [b.limit_denominator(1 << 20) for b in harness.budgets(args.budgets)]
    batch, repeats = harness.count(args.batch, "--batch"), harness.count(args.repeats, "--repeats")
    config = {"methods": methods, "budgets": [str(b) for b in budgets], "batch": batch, "repeats": repeats,
              "threads": harness.count(args.threads, "--threads"), "seed": harness.count(args.seed, "--seed", 0),
              "out": None if args.out is None else Path(args.out)}
    if args.inputs is not None:
        from eval.attention_capture import load_capture  # only a replay needs the capture format

        state = load_capture(Path(args.inputs))
        if state["q"].shape[0] < batch:
            raise ValueError(f"{args.inputs} holds {state['q'].shape[0]} images, fewer than --batch {batch}")
        config.update(inputs=str(args.inputs), regimes=["captured"], sizes=[state["q"].shape[1]])
        return config
    sizes = harness.counts(args.sizes, "--sizes", 1)
    if any(s < 16 or s % 4 for s in sizes):
        raise ValueError(f"--sizes takes multiples of 4 from 16 up (Nk = Nq/4), got {args.sizes!r}")
    known = [*REGIMES, *STRESS_REGIMES.split(",")]
    regimes = known if args.regimes == "all" else harness.split(args.regimes)
    for regime in regimes:
        if regime not in REGIMES:
            try:
                stress_qkv(regime, 0, batch=1, nq=64, nk=16, d=4, dv=4)
            except ValueError:
                raise ValueError(f"unknown regime {regime!r}; accepted: {', '.join(REGIMES)}, or a stress regime "
                                 f"GEOMETRY-STD with GEOMETRY in {', '.join(GEOMETRIES)} (e.g. iso-0.5)") from None
    config.update(inputs=None, regimes=regimes, sizes=sizes)
    return config


def inputs(config: dict, regime: str, nq: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q (B,Nq,d), k (B,Nk,d), v (B,Nk,dv) fp32 on the CPU for one case."""
    b, seed = config["batch"], config["seed"]
    if config["inputs"] is not None:
        from eval.attention_capture import load_capture

        state = load_capture(Path(config["inputs"]))
        return tuple(state[name][:b].float().contiguous() for name in ("q", "k", "v"))
    if regime in REGIMES:
        return regime_qkv(regime, batch=b, nq=nq, nk=nq // 4, d=D, dv=DV, seed=seed)
    return stress_qkv(regime, seed, batch=b, nq=nq, nk=nq // 4, d=D, dv=DV)[:3]


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:  # chunked: Nq=65536 fits
    """Exact softmax(q k^T) v in float64, a block of queries at a time."""
    kd, vd = k.double(), v.double()
    rows = [torch.softmax(block.double() @ kd.transpose(1, 2), -1) @ vd for block in q.split(REFERENCE_ROWS, dim=1)]
    return torch.cat(rows, dim=1)


def sweep(config: dict, regime: str, nq: int) -> dict:
    """Every point (method, budget) of one (regime, size): error, median time, measured peak memory."""
    q, k, v = inputs(config, regime, nq)
    truth = reference(q, k, v)
    points, backends = [], []
    for method in config["methods"]:
        for budget in [None] if method == "exact" else config["budgets"]:
            point = {"method": method, "budget": budget, "published": attention_info(method)["published"]}
            try:
                attn = build_attention(method, seed=config["seed"], **({} if budget is None else
                                                                       {"budget": float(Fraction(budget))}))
                out, _, peak = call_with_peak_memory(attn, q, k, v)
                point.update(error=relative_error(out, truth), peak_bytes=peak,
                             score_entries=attn.score_entries(q.shape[1], k.shape[1], q.shape[2]) * q.shape[0])
                del out
                backends.append((point, attn))
            except (ValueError, RuntimeError) as err:  # a point that cannot run here is recorded, not fatal
                point["failed"] = f"{type(err).__name__}: {err}"
            points.append(point)
    times: dict[int, list[float]] = {id(p): [] for p, _ in backends}
    for _ in range(config["repeats"]):  # interleaved rounds: machine noise spreads over every point
        for point, attn in backends:
            times[id(point)] += time_calls(attn, q, k, v, 1)
    for point, _ in backends:
        point["time_ms"] = statistics.median(times[id(point)])
    exact_ms = next(p["time_ms"] for p in points if p["method"] == "exact")
    for point in points:
        if "time_ms" in point:
            point["time_vs_exact"] = point["time_ms"] / exact_ms
    measured = [p for p in points if "time_ms" in p]
    for axis in ("time_ms", "peak_bytes"):
        front = pareto_front([(p["error"], p[axis]) for p in measured if p[axis] is not None])
        for p in measured:
            p[f"front_{axis}"] = p[axis] is not None and (p["error"], p[axis]) in front
    return {"regime": regime, "nq": q.shape[1], "nk": k.shape[1], "exact_ms": exact_ms, "points": points,
            "time_target": time_target(measured)}


def pareto_front(pairs: list[tuple[float, float]]) -> set[tuple[float, float]]:
    """The (error, cost) pairs no other pair dominates (<= in both, < in one)."""
    return {a for a in pairs if not any(b[0] <= a[0] and b[1] <= a[1] and b != a for b in pairs)}


def time_target(points: list[dict]) -> dict:
    """Every published point at <= TIME_SHARE x exact's time: is some variant point at least as accurate and at
    most TIME_TOLERANCE x its time? Returns {"held": n, "checked": n, "missed": [published point names]}."""
    variants = [p for p in points if not p["published"]]
    checked = [p for p in points if p["published"] and p["method"] != "exact" and p["time_vs_exact"] <= TIME_SHARE]
    missed = [_name(p) for p in checked if not any(
        w["error"] <= p["error"] and w["time_ms"] <= TIME_TOLERANCE * p["time_ms"] for w in variants)]
    return {"checked": len(checked), "held": len(checked) - len(missed), "missed": missed}


def summary(case: dict) -> str:
    """Lines for one (regime, size): the points on each front, and the variants' time target."""
    def listed(axis: str) -> str:
        on = sorted((p for p in case["points"] if p.get(f"front_{axis}")), key=lambda p: p[axis])
        return ", ".join(f"{_name(p)} ({p['error']:.3g}, {_cost(p, axis)})" for p in on)

    target = case["time_target"]
    missed = f"; missed: {', '.join(target['missed'])}" if target["missed"] else ""
    return (f"{case['regime']} Nq={case['nq']} Nk={case['nk']} (exact {case['exact_ms']:.1f} ms)\n"
            f"  time front:   {listed('time_ms')}\n  memory front: {listed('peak_bytes')}\n"
            f"  time target: {target['held']} of {target['checked']} published points dominated by a variant{missed}")


def plot(results: list[dict], out: Path) -> list[Path]:
    """One PNG per size and axis: a panel per regime, error (log) against time / peak memory (log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for nq in sorted({r["nq"] for r in results}):
        cases = [r for r in results if r["nq"] == nq]
        for axis, label in (("time_ms", "median time (ms)"), ("peak_bytes", "measured peak memory (MiB)")):
            cols = min(3, len(cases))
            rows = -(-len(cases) // cols)
            fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
            for ax, case in zip(axes.flat, cases, strict=False):
                _panel(ax, case, axis)
                ax.set_xlabel(label)
            for ax in axes.flat[len(cases):]:
                ax.axis("off")
            handles, names = axes.flat[0].get_legend_handles_labels()
            fig.legend(handles, names, loc="lower center", ncol=4, fontsize=8)
            fig.suptitle(f"relative error vs {label}, Nq={nq}, Nk={cases[0]['nk']}, B={BATCH}")
            fig.tight_layout(rect=(0, 0.06, 1, 0.97))
            path = out / f"pareto-{axis.split('_')[0]}-{nq}.png"
            fig.savefig(path, dpi=90)
            plt.close(fig)
            written.append(path)
    return written


def _panel(ax, case: dict, axis: str) -> None:
    scale = 1 / 2**20 if axis == "peak_bytes" else 1.0
    points = [p for p in case["points"] if p.get(axis) is not None and "error" in p]
    floor = min([p["error"] for p in points if p["error"] > 0] or [1e-6]) / 3  # exact's error 0 drawn below the rest
    for group, colour, marker in (("published", "tab:blue", "o"), ("variant", "tab:red", "^")):
        chosen = [p for p in points if (p["published"] == (group == "published")) and p["method"] != "exact"]
        ax.scatter([p[axis] * scale for p in chosen], [max(p["error"], floor) for p in chosen], s=14,
                   c=colour, marker=marker, label=group, alpha=0.7)
    exact = [p for p in points if p["method"] == "exact"]
    ax.scatter([p[axis] * scale for p in exact], [floor] * len(exact), s=60, c="black", marker="*", label="exact")
    front = sorted((p for p in points if p.get(f"front_{axis}")), key=lambda p: p[axis])
    ax.step([p[axis] * scale for p in front], [max(p["error"], floor) for p in front], where="post", c="grey",
            lw=1, label="front")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title(case["regime"], fontsize=9)
    ax.set_ylabel("relative error")


def _name(p: dict) -> str:
    return p["method"] if p["budget"] is None else f"{p['method']}@{p['budget']}"


def _cost(p: dict, axis: str) -> str:
    return f"{p[axis]:.1f} ms" if axis == "time_ms" else f"{p[axis] / 2**20:.1f} MiB"



if __name__ == "__main__":
    sys.exit(main())
