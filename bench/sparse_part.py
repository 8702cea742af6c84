"""Issue 9's target 2d per batch element: scatterbrain-centred's error against its own sparse part alone
(smyrf-topkeys at the same budget and seed), on every benchmark regime x budget x seed x batch element.

    python bench/sparse_part.py [--regimes isotropic-diffuse,...] [--budgets 1/32,1/8,1/4] [--seeds 0,1,2]
        [--threads 2]

Prints one line per batch element whose ratio is above 1, then the count at or under 1 and the largest ratio.
"""
from __future__ import annotations

import argparse
import sys
from fractions import Fraction
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

from bench.regimes import REGIMES, regime_qkv
from bench.stress_regimes import _budget, _ints, _threads
from gan.attention import build_attention


def element_errors(out: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(B,) ||o_b - o_exact_b|| / ||o_exact_b|| for out, reference (B, Nq, dv)."""
    diff = out.double() - reference
    return diff.flatten(1).norm(dim=1) / reference.flatten(1).norm(dim=1)


def ratios(regime: str, budget: float, seed: int) -> torch.Tensor:
    """(B,) scatterbrain-centred / smyrf-topkeys per batch element for one regime, budget and seed."""
    q, k, v = regime_qkv(regime, seed=seed)
    reference = torch.softmax(q.double() @ k.double().transpose(1, 2), -1) @ v.double()
    errors = [element_errors(build_attention(name, budget=budget, seed=seed)(q, k, v), reference)
              for name in ("scatterbrain-centred", "smyrf-topkeys")]
    return errors[0] / errors[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regimes", default=",".join(REGIMES))
    parser.add_argument("--budgets", default="1/32,1/8,1/4")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--threads", default="2")
    args = parser.parse_args(argv)
    try:
        regimes = args.regimes.split(",")
        unknown = [r for r in regimes if r not in REGIMES]
        if unknown:
            raise ValueError(f"--regimes takes names from {', '.join(REGIMES)}, got {unknown[0]!r}")
        budgets = [_budget(b) for b in args.budgets.split(",")]
        seeds = _ints(args.seeds, "--seeds takes comma-separated ints such as 0,1,2")
        threads = _threads(args.threads)
    except ValueError as error:
        print(f"sparse_part: {error}", file=sys.stderr)
        return 2
    torch.set_num_threads(threads)
    every = []
    for regime in regimes:
        for budget in budgets:
            for seed in seeds:
                for element, ratio in enumerate(ratios(regime, budget, seed).tolist()):
                    every.append(ratio)
                    if ratio > 1:
                        print(f"{regime} {Fraction(budget).limit_denominator(1024)} seed {seed} element {element}: "
                              f"{ratio:.5f}", flush=True)
    held = sum(ratio <= 1 for ratio in every)
    print(f"scatterbrain-centred / smyrf-topkeys per batch element: {held} of {len(every)} at or under 1; "
          f"largest {max(every):.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
