"""Time our Frechet distance against pytorch-fid's scipy ``sqrtm`` path on random 2048-d statistics.

    python bench/frechet.py [--dim 2048] [--samples 4096] [--repeats 3] [--device cpu]

Prints both timings (best wall time of ``repeats``, with the process CPU time of that run: on a
shared machine the wall time follows the load), the speed-up and the relative difference of the values.
With ``--samples`` below ``--dim`` both covariances are singular (the small-N case of a budget sweep).
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from bench.harness import count, synchronize, wall_and_cpu
from common.cli import OneLineParser, report_error
from common.devices import resolve_device


def random_stats(dim: int, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """mu, sigma of ``samples`` correlated Gaussian features (full-rank when samples > dim)."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    feats = rng.normal(size=(samples, dim)) @ mix + rng.normal(size=dim)
    return feats.mean(0), np.cov(feats, rowvar=False)


def best_time(fn, repeats: int) -> tuple[tuple[float, float], float]:
    """((wall s, CPU s) of the fastest of ``repeats`` calls, the value)."""
    runs = [wall_and_cpu(fn) for _ in range(repeats)]
    return min(run[:2] for run in runs), runs[-1][2]


def main(argv: list[str] | None = None) -> int:
    from pytorch_fid.fid_score import calculate_frechet_distance

    from eval.frechet import frechet

    p = OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", default="2048")
    p.add_argument("--samples", default="4096")
    p.add_argument("--repeats", default="3")
    p.add_argument("--device", default="cpu")
    try:
        args = p.parse_args(argv)
        dim, samples = count(args.dim, "--dim"), count(args.samples, "--samples", least=2)
        repeats, device = count(args.repeats, "--repeats"), resolve_device(args.device)
    except ValueError as err:
        return report_error(err)
    mu1, s1 = random_stats(dim, samples, 0)
    mu2, s2 = random_stats(dim, samples, 1)

    def ours():
        value = frechet(mu1, s1, mu2, s2, device=device)
        synchronize(device)
        return value

    ours()  # warm-up (library load, CUDA context)
    t_ours, result = best_time(ours, repeats)
    v_ours = result.value
    t_ref, v_ref = best_time(lambda: calculate_frechet_distance(mu1, s1, mu2, s2), max(1, repeats // 3))
    print(f"dim={dim} samples={samples} device={device} torch threads={torch.get_num_threads()}")
    print(f"pytorch-fid (scipy sqrtm): {t_ref[0]:.3f} s wall, {t_ref[1]:.3f} s CPU  value {v_ref:.6f}")
    print(f"eval.frechet ({result.factor} + eigvalsh, float64, offset {result.eps}): {t_ours[0]:.3f} s wall, "
          f"{t_ours[1]:.3f} s CPU  value {v_ours:.6f}")
    print(f"speed-up {t_ref[0] / t_ours[0]:.1f}x (wall), relative difference {abs(v_ours - v_ref) / abs(v_ref):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
