"""The variants' unbiased modes against their defaults and the mean of the values: the bias-variance trade of
asking scatterbrain-centred and performer-centred-shrunk to be unbiased.

scatterbrain-centred with ``calibrate=False`` (fixed split, unbiased kernel estimate) and
performer-centred-shrunk with ``shrink=False`` (unbiased centred FAVOR+ sums) against the calibrated /
shrunk defaults, at BigGAN-deep-128's shape (B=2, Nq=4096, Nk=1024, d=32, dv=128, scale 1): mean relative
error over seeds (inputs and backends).

    python bench/unbiased_modes.py [--seeds 0,1,2] [--budgets 1/32,1/8]
"""
from __future__ import annotations

import sys

import torch

from bench import harness
from bench.harness import exact_reference, mean_of_values, relative_error
from bench.regimes import regime_qkv
from common.cli import OneLineParser, report_error
from gan.attention import build_attention

REGIMES = ["isotropic-diffuse", "featuremap-smooth", "featuremap-relu", "isotropic-mixed", "clustered-peaked"]
MODES = [  # (column, backend, parameters)
    ("scatterbrain-centred calibrate=False (unbiased)", "scatterbrain-centred", {"calibrate": False}),
    ("scatterbrain-centred default", "scatterbrain-centred", {}),
    ("performer-centred-shrunk shrink=False (unbiased sums)", "performer-centred-shrunk", {"shrink": False}),
    ("performer-centred-shrunk default", "performer-centred-shrunk", {}),
]


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    harness.add_sweep_options(parser, budgets="1/32,1/8")
    try:
        args = parser.parse_args(argv)
        budgets, seeds, threads = harness.sweep(args)
    except ValueError as err:
        return report_error(err)
    torch.set_num_threads(threads)
    print(f"mean relative error over seeds {args.seeds}; B=2, Nq=4096, Nk=1024, d=32, dv=128, "
          f"torch {torch.__version__}\n")
    print("| regime | budget | mean-of-values | " + " | ".join(column for column, _, _ in MODES) + " |")
    print("|---|---|" + "---:|" * (1 + len(MODES)))
    for regime in REGIMES:
        for budget in budgets:
            errors = [0.0] * (1 + len(MODES))
            for seed in seeds:
                q, k, v = regime_qkv(regime, seed=seed)
                reference = exact_reference(q, k, v)
                errors[0] += relative_error(mean_of_values(v, q.shape[1]), reference)
                for i, (_, name, params) in enumerate(MODES, start=1):
                    attn = build_attention(name, budget=float(budget), seed=seed, **params)
                    errors[i] += relative_error(attn(q, k, v, scale=1.0), reference)
            cells = " | ".join(f"{e / len(seeds):.3f}" for e in errors)
            print(f"| {regime} | {budget} | {cells} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
