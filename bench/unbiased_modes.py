"""The variants' unbiased modes against their defaults and the mean of the values (issue 9's bias-variance trade).

scatterbrain-centred with ``calibrate=False`` (fixed split, unbiased kernel estimate) and
performer-centred-shrunk with ``shrink=False`` (unbiased centred FAVOR+ sums) against the calibrated /
shrunk defaults, at BigGAN-deep-128's shape (B=2, Nq=4096, Nk=1024, d=32, dv=128, scale 1): mean relative
error over seeds (inputs and backends).

    python bench/unbiased_modes.py [--seeds 0,1,2] [--budgets 1/32,1/8]
"""
from __future__ import annotations

import argparse
import sys
from fractions import Fraction
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

from bench.attention import relative_error
from bench.regimes import regime_qkv
from gan.attention import build_attention

REGIMES = ["isotropic-diffuse", "featuremap-smooth", "featuremap-relu", "isotropic-mixed", "clustered-peaked"]
MODES = [  # (column, backend, parameters)
    ("scatterbrain-centred calibrate=False (unbiased)", "scatterbrain-centred", {"calibrate": False}),
    ("scatterbrain-centred default", "scatterbrain-centred", {}),
    ("performer-centred-shrunk shrink=False (unbiased sums)", "performer-centred-shrunk", {"shrink": False}),
    ("performer-centred-shrunk default", "performer-centred-shrunk", {}),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--budgets", default="1/32,1/8")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    budgets = [Fraction(b) for b in args.budgets.split(",")]
    print(f"mean relative error over seeds {args.seeds}; B=2, Nq=4096, Nk=1024, d=32, dv=128, "
          f"torch {torch.__version__}\n")
    print("| regime | budget | mean-of-values | " + " | ".join(column for column, _, _ in MODES) + " |")
    print("|---|---|" + "---:|" * (1 + len(MODES)))
    for regime in REGIMES:
        for budget in budgets:
            errors = [0.0] * (1 + len(MODES))
            for seed in seeds:
                q, k, v = regime_qkv(regime, seed=seed)
                reference = torch.softmax(q.double() @ k.double().transpose(1, 2), -1) @ v.double()
                errors[0] += relative_error(v.mean(1, keepdim=True).expand(-1, q.shape[1], -1), reference)
                for i, (_, name, params) in enumerate(MODES, start=1):
                    attn = build_attention(name, budget=float(budget), seed=seed, **params)
                    errors[i] += relative_error(attn(q, k, v, scale=1.0), reference)
            cells = " | ".join(f"{e / len(seeds):.3f}" for e in errors)
            print(f"| {regime} | {budget} | {cells} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
