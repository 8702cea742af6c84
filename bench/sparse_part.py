"""scatterbrain-centred never worse than its own sparse part alone, checked per batch element: its error against
smyrf-topkeys' at the same budget and seed, on every benchmark regime x budget x seed x batch element.

    python bench/sparse_part.py [--regimes isotropic-diffuse,...] [--budgets 1/32,1/8,1/4] [--seeds 0,1,2]
        [--threads 2]

Prints one line per batch element whose ratio is above 1, then the count at or under 1 and the largest ratio.
"""
from __future__ import annotations

import sys
from fractions import Fraction

import torch

from bench import harness
from bench.harness import exact_reference
from bench.regimes import REGIMES, regime_qkv
from common.cli import OneLineParser, report_error
from gan.attention import build_attention


def element_errors(out: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(B,) ||o_b - o_exact_b|| / ||o_exact_b|| for out, reference (B, Nq, dv)."""
    diff = out.double() - reference
    return diff.flatten(1).norm(dim=1) / reference.flatten(1).norm(dim=1)


def ratios(regime: str, budget: Fraction, seed: int) -> torch.Tensor:
    """(B,) scatterbrain-centred / smyrf-topkeys per batch element for one regime, budget and seed."""
    q, k, v = regime_qkv(regime, seed=seed)
    reference = exact_reference(q, k, v)
    errors = [element_errors(build_attention(name, budget=float(budget), seed=seed)(q, k, v), reference)
              for name in ("scatterbrain-centred", "smyrf-topkeys")]
    return errors[0] / errors[1]


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regimes", default=",".join(REGIMES), help="comma-separated (default: every regime)")
    harness.add_sweep_options(parser)
    try:
        args = parser.parse_args(argv)
        regimes = harness.choices(args.regimes, list(REGIMES), "regime(s)")
        budgets, seeds, threads = harness.sweep(args)
    except ValueError as err:
        return report_error(err)
    torch.set_num_threads(threads)
    every = []
    for regime in regimes:
        for budget in budgets:
            for seed in seeds:
                for element, ratio in enumerate(ratios(regime, budget, seed).tolist()):
                    every.append(ratio)
                    if ratio > 1:
                        print(f"{regime} {budget} seed {seed} element {element}: {ratio:.5f}", flush=True)
    held = sum(ratio <= 1 for ratio in every)
    print(f"scatterbrain-centred / smyrf-topkeys per batch element: {held} of {len(every)} at or under 1; "
          f"largest {max(every):.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
