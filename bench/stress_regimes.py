"""The variants' accuracy targets (bench/attention.py) on stress regimes and shapes that bench/regimes.py does not
have (the variants were not tuned on them): a robustness check, printed as one line per regime x budget.

Regimes (NAME-STD: logits rescaled to standard deviation STD, as in bench/regimes.py):
  iso:        q, k ~ N(0, I_d), v ~ N(0, I_dv) (at temperatures outside the benchmark's 1-6).
  lowrank:    q, k = z A with A's singular values 1/i: a few dominant directions, as 1x1 convolutions of
              correlated channels give.
  sink:       1/64 of the keys shifted 4 along a direction every query leans towards (1.5): "attention sinks",
              a handful of keys that collect mass from everywhere.
  vmean:      isotropic q, k; values share a large common mean (post-activation features): mean(v) is a strong
              baseline and only the deviations from it are informative.
  kvclust:    16 clusters whose keys carry their cluster's value (plus noise): where attention spreads across
              clusters the output mixes the clusters' values, so coverage beyond the own cluster counts.
  multiscale: a smooth map plus fine texture through a GELU, then BigGAN's theta / phi / g with 2x2 pooling.

    python bench/stress_regimes.py [--regimes iso-0.5,kvclust-1] [--budgets 1/32,1/8,1/4] [--seeds 0,1,2]
        [--shape B,Nq,Nk,d,dv] [--threads 2]
"""
from __future__ import annotations

import sys
from fractions import Fraction

import torch
import torch.nn.functional as F

from bench import harness
from bench.harness import exact_reference, mean_of_values, relative_error
from bench.regimes import (
    CALIBRATION_QUERIES,
    DIFFUSE_STD,
    MAP_CHANNELS,
    PEAKED_STD,
    attention_inputs,
    map_side,
    smooth_noise,
)
from common.cli import OneLineParser, report_error
from gan.attention import build_attention

GEOMETRIES = ("iso", "lowrank", "sink", "vmean", "kvclust", "multiscale")
DEFAULT_REGIMES = "iso-0.5,iso-10,lowrank-2,lowrank-6,sink-2,vmean-3,kvclust-1,kvclust-2,multiscale-2"
METHODS = ("smyrf", "performer", "scatterbrain", "smyrf-topkeys", "scatterbrain-centred", "performer-centred-shrunk")


def stress_qkv(regime: str, seed: int, batch: int = 2, nq: int = 4096, nk: int = 1024, d: int = 32, dv: int = 128):
    """(q (B,Nq,d), k (B,Nk,d), v (B,Nk,dv), logit std) fp32 on the CPU for ``regime`` = GEOMETRY-STD."""
    geometry, std = _parse(regime)
    g = torch.Generator().manual_seed(1000 + seed)
    if geometry == "lowrank":
        a = torch.linalg.qr(torch.randn(d, d, generator=g))[0] / torch.arange(1, d + 1.0)  # (d, d)
        q, k = torch.randn(batch, nq, d, generator=g) @ a, torch.randn(batch, nk, d, generator=g) @ a
        v = torch.randn(batch, nk, dv, generator=g)
    elif geometry == "kvclust":
        centres, values = F.normalize(torch.randn(16, d, generator=g), dim=-1), torch.randn(16, dv, generator=g)
        q_of, k_of = torch.randint(16, (batch, nq), generator=g), torch.randint(16, (batch, nk), generator=g)
        q = centres[q_of] + 0.7 / d**0.5 * torch.randn(batch, nq, d, generator=g)
        k = centres[k_of] + 0.7 / d**0.5 * torch.randn(batch, nk, d, generator=g)
        v = values[k_of] + 0.5 * torch.randn(batch, nk, dv, generator=g)
    elif geometry == "multiscale":
        q, k, v = _multiscale_maps(batch, nq, nk, d, dv, g)
    else:  # iso, sink, vmean: isotropic q and k
        q, k = torch.randn(batch, nq, d, generator=g), torch.randn(batch, nk, d, generator=g)
        v = torch.randn(batch, nk, dv, generator=g)
        if geometry == "sink":
            lean = F.normalize(torch.randn(d, generator=g), dim=0)  # (d,)
            sinks = torch.randperm(nk, generator=g)[: max(1, nk // 64)]
            q, k[:, sinks] = q + 1.5 * lean, k[:, sinks] + 4 * lean
        elif geometry == "vmean":
            v = v + 0.75 * dv**0.5 * F.normalize(torch.randn(dv, generator=g), dim=0)  # common mean of norm 3|v|/4
    gain = (std / (q[0, :CALIBRATION_QUERIES] @ k[0].t()).std()).sqrt()
    return (q * gain).contiguous(), (k * gain).contiguous(), v.contiguous(), std


def _parse(regime: str) -> tuple[str, float]:
    geometry, _, std = regime.partition("-")
    try:
        value = float(std)
    except ValueError:
        value = -1.0
    if geometry not in GEOMETRIES or not value > 0:
        raise ValueError(f"stress regime must be GEOMETRY-STD with GEOMETRY in {', '.join(GEOMETRIES)} and STD > 0, "
                         f"got {regime!r}")
    return geometry, value


def _multiscale_maps(batch, nq, nk, d, dv, g):
    """theta(x), maxpool(phi(x)), maxpool(g(x)) of x = GELU(smooth map + 0.5 * pixel noise)."""
    side = map_side(nq, nk, "multiscale")
    x = F.gelu(smooth_noise(batch, side, g) + 0.5 * torch.randn(batch, MAP_CHANNELS, side, side, generator=g))
    return attention_inputs(x, d, dv, g)


def cell(regime: str, budget: Fraction, seeds: list[int], shape: dict) -> str:
    """One line: mean errors over ``seeds`` and the targets' ratios, with the targets that fail."""
    errors = {name: 0.0 for name in ("mean-of-values", *METHODS)}
    for seed in seeds:
        q, k, v, std = stress_qkv(regime, seed, **shape)
        reference = exact_reference(q, k, v)
        errors["mean-of-values"] += relative_error(mean_of_values(v, q.shape[1]), reference)
        for name in METHODS:
            attn = build_attention(name, budget=float(budget), seed=seed)
            errors[name] += relative_error(attn(q, k, v), reference)
    e = {name: total / len(seeds) for name, total in errors.items()}
    ratios = {
        "1": e["smyrf-topkeys"] / e["smyrf"],
        "2": e["scatterbrain-centred"] / min(e["smyrf-topkeys"], e["performer-centred-shrunk"]),
        "2b": e["scatterbrain-centred"] / min(e["smyrf"], e["performer"], e["scatterbrain"]),
        "3": e["performer-centred-shrunk"] / e["mean-of-values"],
    }
    failed = [name for name, bad in (
        ("1a", ratios["1"] > 1), ("1b", std >= PEAKED_STD and ratios["1"] > 0.5), ("2a", ratios["2"] > 1),
        ("2b", DIFFUSE_STD < std < PEAKED_STD and ratios["2b"] > 0.5), ("3a", ratios["3"] > 1)) if bad]
    shown = " ".join(f"{name}={value:.3f}" for name, value in e.items())
    ratio_text = " ".join(f"{name}:{value:.2f}" for name, value in ratios.items())
    verdict = " ".join(failed) or "all hold"
    return f"{regime} {budget}: {shown} | {ratio_text} | {verdict}"


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regimes", default=DEFAULT_REGIMES, help="comma-separated NAME-STD (default: %(default)s)")
    parser.add_argument("--shape", default="2,4096,1024,32,128", help="B,Nq,Nk,d,dv (default: %(default)s)")
    harness.add_sweep_options(parser)
    try:
        args = parser.parse_args(argv)
        regimes = harness.split(args.regimes)
        for regime in regimes:
            _parse(regime)
        budgets, seeds, threads = harness.sweep(args)
        values = harness.counts(args.shape, "--shape", least=1)
        if len(values) != 5:
            raise ValueError(f"--shape takes five positive integers B,Nq,Nk,d,dv, got {args.shape!r}")
    except ValueError as err:
        return report_error(err)
    shape = dict(zip(("batch", "nq", "nk", "d", "dv"), values, strict=True))
    torch.set_num_threads(threads)
    print(f"shape {args.shape} (B,Nq,Nk,d,dv), scale 1, seeds {args.seeds}; mean relative errors; ratios: "
          "1 = smyrf-topkeys/smyrf, 2 = scatterbrain-centred/min(smyrf-topkeys, performer-centred-shrunk), "
          "2b = scatterbrain-centred/best published, 3 = performer-centred-shrunk/mean-of-values", flush=True)
    for regime in regimes:
        for budget in budgets:
            print(cell(regime, budget, seeds, shape), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
