"""Time our Frechet distance against pytorch-fid's scipy ``sqrtm`` path on random 2048-d statistics.

    python bench/frechet.py [--dim 2048] [--samples 4096] [--repeats 3] [--device cpu]

Prints both timings (best wall time of ``repeats``, with the process CPU time of that run: on a
shared machine the wall time follows the load), the speed-up and the relative difference of the values.
With ``--samples`` below ``--dim`` both covariances are singular (the small-N case of a budget sweep).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np
import torch


def random_stats(dim: int, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """mu, sigma of ``samples`` correlated Gaussian features (full-rank when samples > dim)."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    feats = rng.normal(size=(samples, dim)) @ mix + rng.normal(size=dim)
    return feats.mean(0), np.cov(feats, rowvar=False)


def best_time(fn, repeats: int) -> tuple[tuple[float, float], float]:
    """((wall s, CPU s) of the fastest of ``repeats`` calls, the value)."""
    times, value = [], None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        value = fn()
        times.append((time.perf_counter() - t0, time.process_time() - c0))
    return min(times), value


def main() -> None:
    from pytorch_fid.fid_score import calculate_frechet_distance

    from eval.frechet import frechet

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--samples", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    mu1, s1 = random_stats(args.dim, args.samples, 0)
    mu2, s2 = random_stats(args.dim, args.samples, 1)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def ours():
        value = frechet(mu1, s1, mu2, s2, device=device)
        sync()
        return value

    ours()  # warm-up (library load, CUDA context)
    t_ours, result = best_time(ours, args.repeats)
    v_ours = result.value
    t_ref, v_ref = best_time(lambda: calculate_frechet_distance(mu1, s1, mu2, s2), max(1, args.repeats // 3))
    print(f"dim={args.dim} samples={args.samples} device={device} torch threads={torch.get_num_threads()}")
    print(f"pytorch-fid (scipy sqrtm): {t_ref[0]:.3f} s wall, {t_ref[1]:.3f} s CPU  value {v_ref:.6f}")
    print(f"eval.frechet ({result.factor} + eigvalsh, float64, offset {result.eps}): {t_ours[0]:.3f} s wall, "
          f"{t_ours[1]:.3f} s CPU  value {v_ours:.6f}")
    print(f"speed-up {t_ref[0] / t_ours[0]:.1f}x (wall), relative difference {abs(v_ours - v_ref) / abs(v_ref):.2e}")


if __name__ == "__main__":
    main()
