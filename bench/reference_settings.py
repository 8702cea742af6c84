"""Reference configurations at BigGAN-deep-128's shape, against the public implementations' times.

B=2, Nq=4096, Nk=1024, d=32, dv=128, scale 1, budget-1/8 settings (8 hashes, query clusters 64, key
clusters 16; 64 features; k=32): time (median of repeats after a warm-up, 2 threads) and relative
error on the clustered-peaked regime. The reference times were measured on this 2-core machine with
the public SMYRF / Scatterbrain / Top-k / Performer code; "ratio" is ours over theirs (the variants' speed
target, no worse than 0.5x the authors' time, is read off it: BENCHMARKS.md, "Project variants vs published
methods").

    python bench/reference_settings.py [--repeats 20]
"""
from __future__ import annotations

import statistics
import sys

import torch

from bench import harness
from bench.harness import exact_reference, relative_error, time_calls
from bench.regimes import regime_qkv
from common.cli import OneLineParser, report_error
from gan.attention import build_attention

# (method, parameters, public implementation's time in ms on this machine)
SETTINGS = [
    ("exact", {}, 55.0),
    ("smyrf", {"n_hashes": 8, "q_cluster_size": 64, "k_cluster_size": 16}, 80.0),
    ("scatterbrain", {"n_hashes": 8, "q_cluster_size": 64, "k_cluster_size": 16, "num_features": 64}, 120.0),
    ("topk", {"k": 32}, 100.0),
    ("performer", {"num_features": 64}, 4.0),
    # The project's variants at the same settings, against the public implementation of the method they vary.
    ("smyrf-topkeys", {"n_hashes": 8, "q_cluster_size": 64, "k_cluster_size": 16}, 80.0),
    ("scatterbrain-centred", {"budget": 1 / 8}, 120.0),
    ("performer-centred-shrunk", {"num_features": 64}, 4.0),
]


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", default="20", help="timed calls after a warm-up (default: %(default)s)")
    parser.add_argument("--threads", default="2", help="torch.set_num_threads (default: %(default)s)")
    try:
        args = parser.parse_args(argv)
        repeats, threads = harness.count(args.repeats, "--repeats"), harness.count(args.threads, "--threads")
    except ValueError as err:
        return report_error(err)
    torch.set_num_threads(threads)
    q, k, v = regime_qkv("clustered-peaked")
    reference = exact_reference(q, k, v)
    print(f"B=2, Nq=4096, Nk=1024, d=32, dv=128; {threads} threads, torch {torch.__version__}; "
          f"median (min) of {repeats} calls after a warm-up; error on clustered-peaked\n")
    print("| method | parameters | ms median (min) | public impl. ms | ratio | rel. error |")
    print("|---|---|---:|---:|---:|---:|")
    for name, params, reference_ms in SETTINGS:
        attn = build_attention(name, seed=0, **params)
        error = relative_error(attn(q, k, v, scale=1.0), reference)
        times = time_calls(attn, q, k, v, repeats)
        median = statistics.median(times)
        shown = ", ".join(f"{key}={value}" for key, value in params.items()) or "-"
        print(f"| {name} | {shown} | {median:.1f} ({min(times):.1f}) | {reference_ms:g} | "
              f"{median / reference_ms:.2f} | {error:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
