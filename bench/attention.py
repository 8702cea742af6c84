"""Attention benchmark: relative error, time and peak extra memory of every registered backend.

    python bench/attention.py --quick                       # Nq=4096 tables + Nq=16384: ~1.5 min on 2 cores
    python bench/attention.py --out results/attention.json  # + Nq=65536: ~13 min on 2 busy cores (Nov 2026)
    python bench/attention.py --methods exact,performer,topk --sizes 4096 --repeats 7

At the first size (default Nq=4096, Nk=1024: BigGAN-deep-128's attention, B=2, d=32, dv=128,
scale 1) every regime gets a table: per method and budget the relative error
||o - o_exact|| / ||o_exact|| (reference: float64 SDPA), mean (min-max) over --seeds (inputs and
backends), a mean-of-values row (every query outputs mean(v)), the error of exact top-k with the same
number of score entries per query (the floor for any sparse support of that size), the time and
the peak extra memory of one call. The larger sizes (Nk = Nq/4) give time and memory on one
regime (--scaling-regime) for the scaling curve.

Method, per (method, budget): the first call runs under the memory profiler and is the warm-up
(it draws and caches random projections; its output gives the error), then ``repeats`` timed
calls (per size, --repeats) give the median and the min wall time. Repeats 0 (the default at
Nq=65536, where one call takes seconds to a minute) times that first call instead: its one-time
draws (ms) and the profiler's per-op cost are noise at that scale. Peak extra memory is the
allocator's peak of live bytes allocated during that first call (CUDA: max_memory_allocated;
CPU: the profiler's allocation records), output and cached draws (<1 MiB) included, inputs not.
The output is markdown with a header (date, machine, torch, threads), a table of the accuracy targets
of the project's variants (when they and the published smyrf, performer, scatterbrain are measured:
listed above ``_targets_table``), ready for BENCHMARKS.md. A backend or regime that cannot run at a size
is a row saying why.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from fractions import Fraction
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from bench import harness
from bench.harness import call_with_peak_memory, mean_of_values, relative_error, time_calls
from bench.regimes import DIFFUSE_STD, PEAKED_STD, REGIMES, regime_qkv
from common.cli import OneLineParser, report_error
from common.devices import DTYPES, resolve_device
from eval.attention_capture import load_capture
from gan.attention import available_attentions, build_attention

CAPTURED = "captured"  # the regime name of --inputs' table
MEAN_OF_VALUES = "mean-of-values"  # baseline row: every query outputs the mean of the values
BATCH, D, DV = 2, 32, 128
FULL_SIZES, FULL_REPEATS = "4096,16384,65536", "5,3,0"
QUICK_SIZES, QUICK_REPEATS = "4096,16384", "3,1"


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        config = validate(args)
    except ValueError as err:
        return report_error(err)
    torch.set_num_threads(config["threads"])
    start = time.perf_counter()
    records = run(config)
    env = environment(config, argv, wall_s=time.perf_counter() - start)
    if args.out:  # written first: the measurements survive whatever happens to the tables
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(json.dumps({"environment": env, "config": config_json(config), "results": records}, indent=1))
        tmp.replace(out)
    print(markdown(records, config, env))
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="all", help="comma-separated backend names (default: all registered)")
    harness.add_sweep_options(parser)
    parser.add_argument(
        "--sizes",
        default=None,
        help=f"comma-separated Nq (Nk = Nq/4); the first gets the per-regime error tables "
        f"(default {FULL_SIZES}; --quick {QUICK_SIZES})",
    )
    parser.add_argument(
        "--repeats",
        default=None,
        help=f"timed calls after the warm-up per size, comma-separated in --sizes order, the last "
        f"reused; 0 times the warm-up call itself (default {FULL_REPEATS}; --quick {QUICK_REPEATS})",
    )
    parser.add_argument("--regimes", default=",".join(REGIMES), help=f"comma-separated, from {', '.join(REGIMES)}")
    parser.add_argument("--scaling-regime", default="isotropic-diffuse", help="regime timed at the larger sizes")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--dtype", default="float32", help=f"input dtype: {', '.join(DTYPES)}")
    parser.add_argument(
        "--quick", action="store_true", help=f"sizes {QUICK_SIZES}, repeats {QUICK_REPEATS} (unless given)"
    )
    parser.add_argument("--out", default=None, help="write all results as JSON here")
    parser.add_argument("--inputs", default=None, help="captured attention inputs (eval/fid.py or app/sample.py "
                        "--save-attention-inputs): one 'captured' table on their first images instead of the regimes")
    return parser.parse_args(argv)


def validate(args: argparse.Namespace) -> dict:
    available = available_attentions()
    methods = available if args.methods == "all" else harness.choices(args.methods, available, "method(s)")
    budgets, seeds, threads = harness.sweep(args)
    sizes_text = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    sizes = harness.counts(sizes_text, "--sizes", least=4)
    if any(s % 4 for s in sizes):
        raise ValueError(f"--sizes takes multiples of 4 (Nk = Nq/4), got {sizes_text!r}")
    repeats = harness.counts(args.repeats or (QUICK_REPEATS if args.quick else FULL_REPEATS), "--repeats")
    regimes = harness.choices(args.regimes, list(REGIMES), "regime(s)")
    harness.choices(args.scaling_regime, list(REGIMES), "--scaling-regime")
    if args.dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {args.dtype!r}")
    device = resolve_device(args.device)
    captured = None
    if args.inputs is not None:  # the file fixes the shape: one table, no scaling sizes
        captured = str(args.inputs)
        state = load_capture(Path(args.inputs))
        if state["q"].shape[0] < BATCH:
            raise ValueError(f"{args.inputs} holds {state['q'].shape[0]} images; --inputs needs at least {BATCH}")
        sizes, regimes = [state["q"].shape[1]], [CAPTURED]
    return {
        "inputs": captured,
        "methods": methods,
        "budgets": budgets,
        "sizes": sizes,
        "regimes": regimes,
        "scaling_regime": args.scaling_regime,
        "device": device,
        "dtype": args.dtype,
        "repeats": {nq: repeats[min(i, len(repeats) - 1)] for i, nq in enumerate(sizes)},
        "threads": threads,
        "seeds": seeds,
    }


def config_json(config: dict) -> dict:
    return {
        **config,
        "device": str(config["device"]),
        "budgets": [str(b) for b in config["budgets"]],
        "batch": BATCH,
        "d": D,
        "dv": DV,
    }


def environment(config: dict, argv: list[str] | None, wall_s: float) -> dict:
    """Where and when the numbers were taken: the header of the markdown and of the JSON."""
    device = config["device"]
    if device.type == "cuda":
        machine = torch.cuda.get_device_name(device)
    else:
        machine = f"{_cpu_model()}, {os.cpu_count()} logical cores, {platform.system()} {platform.machine()}"
    command = " ".join(["python bench/attention.py", *(sys.argv[1:] if argv is None else argv)])
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "command": command,
        "wall_s": round(wall_s, 1),
    }


def run(config: dict) -> list[dict]:
    """Every (regime, size, method, budget) record; errors of a backend are recorded, not raised."""
    base, *larger = config["sizes"]
    shapes = [(regime, base, True) for regime in config["regimes"]] + [
        (config["scaling_regime"], nq, False) for nq in larger
    ]
    rows_per_shape = 1 + sum(1 if m == "exact" else len(config["budgets"]) for m in config["methods"])
    records = []
    with tqdm(total=len(shapes) * rows_per_shape, desc="attention bench", file=sys.stderr) as progress:
        for regime, nq, with_error in shapes:
            records += bench_shape(config, regime, nq, with_error, progress)
    return records


def bench_shape(config: dict, regime: str, nq: int, with_error: bool, progress: tqdm) -> list[dict]:
    """Records of every method and budget on one regime's inputs at Nq = ``nq``, Nk = nq/4: errors over every
    seed (with_error), time and memory from the first seed."""
    nk, device, dtype = nq // 4, config["device"], DTYPES[config["dtype"]]
    seeds = config["seeds"] if with_error else config["seeds"][:1]
    rows = 1 + sum(1 if m == "exact" else len(config["budgets"]) for m in config["methods"])
    try:
        if regime == CAPTURED:  # the same first images for every seed: only the backends' draws vary
            state = load_capture(Path(config["inputs"]))
            qkv = tuple(state[name][:BATCH].float() for name in ("q", "k", "v"))
            nk = qkv[1].shape[1]
            inputs = [qkv for _ in seeds]
        else:
            inputs = [regime_qkv(regime, batch=BATCH, nq=nq, nk=nk, d=D, dv=DV, seed=seed) for seed in seeds]
    except ValueError as err:  # a regime that cannot be built at this size is a row, not a crash
        progress.update(rows)
        return [{"regime": regime, "method": "(inputs)", "budget": None, "nq": nq, "nk": nk, "error": str(err)}]
    inputs = [tuple(t.to(device=device, dtype=dtype) for t in qkv) for qkv in inputs]
    # The reference sees the same (rounded) inputs as the backends, in float64 on the CPU.
    references = [
        F.scaled_dot_product_attention(*(t.cpu().double() for t in qkv), scale=1.0) if with_error else None
        for qkv in inputs
    ]
    floor_errors: dict[tuple[int, int], float] = {}  # top-k error by (seed index, k), shared by the methods

    def floor_error(index: int, top: int) -> float:
        if (index, top) not in floor_errors:
            out = build_attention("topk", k=top)(*inputs[index], scale=1.0)
            floor_errors[index, top] = relative_error(out, references[index])
        return floor_errors[index, top]

    records = []
    if with_error:  # the baseline every method should beat: output the mean of the values for every query
        errors = [relative_error(mean_of_values(v, nq), ref) for (_, _, v), ref in zip(inputs, references, strict=True)]
        records.append(
            {
                "regime": regime,
                "method": MEAN_OF_VALUES,
                "budget": None,
                "nq": nq,
                "nk": nk,
                **_spread(errors),
                "params": {},
                "score_entries": 0,
            }
        )
    progress.update()
    for method in config["methods"]:
        for budget in [None] if method == "exact" else config["budgets"]:
            record = {
                "regime": regime,
                "method": method,
                "budget": None if budget is None else str(budget),
                "nq": nq,
                "nk": nk,
                "dense_bytes": BATCH * nq * nk * 4,
            }
            try:
                params = {} if budget is None else {"budget": float(budget)}
                errors, floors = [], []
                for index, seed in enumerate(seeds):
                    attn = build_attention(method, seed=seed, **params)
                    if index == 0:
                        record.update(measure(attn, *inputs[0], references[0], config["repeats"][nq]))
                        if not with_error:
                            break
                        out = record.pop("output")
                    else:
                        out = attn(*inputs[index], scale=1.0)
                    errors.append(relative_error(out, references[index]))
                    floors.append(floor_error(index, record["topk_floor_k"]))
                    del out
                if with_error:
                    record.update(_spread(errors))
                    record["topk_floor_error"] = statistics.fmean(floors)
            except (ValueError, RuntimeError) as err:  # a failing backend (or out of memory) is a row, not a crash
                record["error"] = f"{type(err).__name__}: {err}"
            records.append(record)
            progress.set_postfix_str(f"{regime} Nq={nq} {method} {record['budget'] or ''}")
            progress.update()
    return records


def _spread(errors: list[float]) -> dict:
    return {
        "rel_error": statistics.fmean(errors),
        "rel_error_min": min(errors),
        "rel_error_max": max(errors),
        "rel_errors": errors,
    }


def measure(
    attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, reference: torch.Tensor | None, repeats: int
) -> dict:
    """Resolved params, score entries, peak memory, times and (with a reference) the output of one backend."""
    nq, nk = q.shape[1], k.shape[1]
    result = {"params": attn.resolve(nq, nk, D), "score_entries": attn.score_entries(nq, nk, D)}
    out, first_ms, result["peak_extra_bytes"] = call_with_peak_memory(attn, q, k, v)  # also the warm-up
    if reference is not None:
        result["output"] = out
        result["topk_floor_k"] = min(nk, max(1, round(result["score_entries"] / nq)))  # same entries per query
    del out
    times = time_calls(attn, q, k, v, repeats) if repeats else [first_ms]
    result["timed_calls"] = repeats
    result["time_ms"] = statistics.median(times)
    result["time_ms_min"] = min(times)
    return result


def markdown(records: list[dict], config: dict, env: dict) -> str:
    """The header and every table, as markdown for BENCHMARKS.md."""
    return "\n".join(
        [
            *_header(config, env),
            *_targets_table(records, config),
            *_regime_tables(records, config),
            *_scaling_table(records, config),
        ]
    )


def _header(config: dict, env: dict) -> list[str]:
    repeats = ", ".join(f"{r or 'the warm-up call itself'} at Nq={nq}" for nq, r in config["repeats"].items())
    return [
        f"## Attention benchmark, {env['date']}\n",
        f"- machine: {env['machine']}; torch {env['torch']}, {env['threads']} thread(s), "
        f"{config['dtype']} on {config['device']}",
        (
            f"- shapes: B={BATCH}, d={D}, dv={DV}, scale 1, Nk = Nq/4; seeds {', '.join(map(str, config['seeds']))} "
            "(inputs and backends; time and memory from the first)"
        ),
        f"- time: median (min) of the timed calls after one warm-up call ({repeats})",
        "- peak extra MiB: allocator peak during one call above what was live before it (output included)",
        (
            "- rel. error: ||o - o_exact|| / ||o_exact|| against float64 exact attention, "
            "mean (min-max) over the seeds; "
            "top-k floor: exact top-k with the same score entries per query; "
            f"{MEAN_OF_VALUES}: every query outputs mean(v)"
        ),
        f"- command: `{env['command']}` ({env['wall_s'] / 60:.1f} min)",
    ]


def _regime_tables(records: list[dict], config: dict) -> list[str]:
    base = config["sizes"][0]
    lines = []
    for regime in config["regimes"]:
        rows = [r for r in records if r["regime"] == regime and r["nq"] == base]
        lines += [
            f"\n### {regime}: Nq={base}, Nk={base // 4}\n",
            "| method | budget | params | entries / dense | rel. error mean (min-max) | top-k floor (k) "
            "| time ms median (min) | peak extra MiB |",
            "|---|---|---|---:|---:|---:|---:|---:|",
        ]
        lines += [_row(r, with_error=True) for r in rows]
    return lines


def _scaling_table(records: list[dict], config: dict) -> list[str]:
    rows = [r for r in records if r["regime"] == config["scaling_regime"] and r["method"] in config["methods"]]
    rows.sort(key=lambda r: (config["methods"].index(r["method"]), Fraction(r["budget"] or 1), r["nq"]))
    exact_ms = {r["nq"]: r["time_ms"] for r in rows if r["method"] == "exact" and "time_ms" in r}
    lines = [
        f"\n### scaling ({config['scaling_regime']}): time and peak extra memory, Nk = Nq/4\n",
        "| method | budget | params | Nq | time ms median (min) | exact time / time | peak extra MiB "
        "| peak / dense scores |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    return lines + [_row(r, with_error=False, exact_ms=exact_ms.get(r["nq"])) for r in rows]


def _row(r: dict, with_error: bool, exact_ms: float | None = None) -> str:
    budget = r["budget"] or "-"
    if "error" in r:
        return f"| {r['method']} | {budget} | {r['error']} |" + " |" * 5
    if r["method"] == MEAN_OF_VALUES:
        return f"| {MEAN_OF_VALUES} | - | - | 0 | {_err(r)} | - | - | - |"
    params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "-"
    peak = r["peak_extra_bytes"]
    mib = "n/a" if peak is None else f"{peak / 2**20:.1f}"
    if with_error:
        ratio = r["score_entries"] / (r["nq"] * r["nk"])
        return (
            f"| {r['method']} | {budget} | {params} | {ratio:.4f} | {_err(r)} | "
            f"{r['topk_floor_error']:.4f} ({r['topk_floor_k']}) | {_ms(r)} | {mib} |"
        )
    speedup = "n/a" if exact_ms is None else f"{exact_ms / r['time_ms']:.2f}"
    of_dense = "n/a" if peak is None else f"{peak / r['dense_bytes']:.3f}"
    return f"| {r['method']} | {budget} | {params} | {r['nq']} | {_ms(r)} | {speedup} | {mib} | {of_dense} |"


def _err(r: dict) -> str:
    return f"{r['rel_error']:.4f} ({r['rel_error_min']:.4f}-{r['rel_error_max']:.4f})"


# The accuracy targets of the project's variants, checked on the mean errors of every regime x budget cell:
# smyrf-topkeys at or under smyrf (at most half of it in the peaked regimes); scatterbrain-centred at or under
# both its halves, smyrf-topkeys and performer-centred-shrunk (and at most half of the best published method in
# the mixed regimes); performer-centred-shrunk at or under the mean-of-values baseline.
SMYRF_VARIANT, SCATTERBRAIN_VARIANT, PERFORMER_VARIANT = (
    "smyrf-topkeys",
    "scatterbrain-centred",
    "performer-centred-shrunk",
)


def _targets_table(records: list[dict], config: dict) -> list[str]:
    """One line per regime x budget: each target's ratio and whether it holds (mean errors over the seeds)."""
    base = config["sizes"][0]
    errors = {
        (r["regime"], r["method"], r["budget"]): r["rel_error"] for r in records if "rel_error" in r and r["nq"] == base
    }
    needed = {SMYRF_VARIANT, SCATTERBRAIN_VARIANT, PERFORMER_VARIANT, "smyrf", "performer", "scatterbrain"}
    if not needed <= set(config["methods"]):
        return []
    lines = [
        "\n### The variants' accuracy targets (mean errors; ratio and whether it holds)\n",
        (
            "| regime | logit std | budget | smyrf-topkeys / smyrf (<= 1; peaked <= 0.5) | "
            "scatterbrain-centred / min(smyrf-topkeys, performer-centred-shrunk) (<= 1) | "
            "scatterbrain-centred / best published (mixed <= 0.5) | performer-centred-shrunk / mean-of-values (<= 1) |"
        ),
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for regime in config["regimes"]:
        std = REGIMES[regime].logit_std
        for budget in map(str, config["budgets"]):

            def e(method, b=budget, regime=regime):
                return errors.get((regime, method, b))

            cells = []
            smyrf = _ratio(e(SMYRF_VARIANT), [e("smyrf")], 0.5 if std >= PEAKED_STD else 1.0)
            halves = _ratio(e(SCATTERBRAIN_VARIANT), [e(SMYRF_VARIANT), e(PERFORMER_VARIANT)], 1.0)
            mixed = DIFFUSE_STD < std < PEAKED_STD
            published = _ratio(
                e(SCATTERBRAIN_VARIANT), [e("smyrf"), e("performer"), e("scatterbrain")], 0.5 if mixed else None
            )
            mean = _ratio(e(PERFORMER_VARIANT), [e(MEAN_OF_VALUES, None)], 1.0)
            cells = [smyrf, halves, published, mean]
            lines.append(f"| {regime} | {std:g} | {budget} | " + " | ".join(cells) + " |")
    return lines


def _ratio(value: float | None, others: list[float | None], limit: float | None) -> str:
    """'0.52 yes' style cell: value / min(others), and whether it is <= limit (no verdict without a limit)."""
    if value is None or any(o is None for o in others):
        return "n/a"
    ratio = value / max(min(others), 1e-12)
    if limit is None:
        return f"{ratio:.2f}"
    return f"{ratio:.2f} {'yes' if ratio <= limit else '**no**'}"


def _ms(r: dict) -> str:
    return f"{r['time_ms']:.1f} ({r['time_ms_min']:.1f})"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    sys.exit(main())
