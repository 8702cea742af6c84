"""Random stand-ins for the three downloads, so every program runs offline in seconds.

    python eval/smoke_assets.py smoke/                          # 128, reduced width
    python eval/smoke_assets.py smoke/ --resolution 512         # then run the commands it prints
    python eval/smoke_assets.py smoke/ --resolution 256 --full-width

Writes a random BigGAN-deep at 128, 256 or 512 in the published key layout (reduced to 1/16 of the
published width unless --full-width), a 1/16-width random FID Inception (128-d features) and random
reference statistics of that dimension, and prints the eval/fid.py, app/sample.py and app/app.py
commands that use them. The numbers a run on them prints are MEANINGLESS: they only show that every
stage works.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

RESOLUTIONS = (128, 256, 512)
REDUCED_WIDTH = 8  # channel_width: 1/16 of the published 128
FULL_WIDTH = 128


def smoke_paths(folder: str | Path, resolution: int = 128, full_width: bool = False) -> dict[str, Path]:
    """{"model", "inception", "ref_stats"}: where ``write_smoke_assets`` puts them (nothing is written)."""
    root = Path(folder)
    model = f"biggan-deep-{resolution}-{'random' if full_width else 'tiny'}"
    return {"model": root / model, "inception": root / "inception-tiny.pth", "ref_stats": root / "ref-random.npz"}


def write_smoke_assets(folder: str | Path, seed: int = 0, resolution: int = 128,
                       full_width: bool = False) -> dict[str, Path]:
    """{"model", "inception", "ref_stats"} paths under ``folder`` (created): a random BigGAN-deep at
    ``resolution`` (published width if ``full_width``, else 1/16 of it), a tiny FID Inception, random statistics."""
    import numpy as np
    import torch

    from common.files import write_atomic
    from eval.inception import random_inception_state
    from eval.reference_stats import save_stats
    from weights import write_random_checkpoint

    if resolution not in RESOLUTIONS:
        raise ValueError(f"--resolution {resolution} is not a BigGAN-deep resolution; accepted: "
                         f"{', '.join(map(str, RESOLUTIONS))}")
    paths = smoke_paths(folder, resolution, full_width)
    paths["model"].parent.mkdir(parents=True, exist_ok=True)
    write_random_checkpoint(paths["model"], seed=seed, output_dim=resolution,
                            channel_width=FULL_WIDTH if full_width else REDUCED_WIDTH)
    state = random_inception_state(1 / 16, seed=seed)
    write_atomic(paths["inception"], lambda f: torch.save(state, f))
    feats = np.random.default_rng(seed).normal(size=(512, 128))
    save_stats(paths["ref_stats"], feats.mean(0), np.cov(feats, rowvar=False))
    return paths


def smoke_command(assets: dict[str, Path], out: Path) -> list[str]:
    """The eval/fid.py arguments of the smoke run (exact and smyrf, 20 images on the CPU)."""
    return ["--model", str(assets["model"]), "--inception-weights", str(assets["inception"]),
            "--ref-stats", str(assets["ref_stats"]), "--attn", "exact,smyrf", "--num-samples", "20",
            "--batch-size", "10", "--is-splits", "2", "--bootstrap", "10", "--device", "cpu", "--out", str(out)]


def sample_command(assets: dict[str, Path], out: Path) -> list[str]:
    """The app/sample.py arguments that draw a few images of two classes with scatterbrain, plus a grid."""
    return ["--model", str(assets["model"]), "--attn", "scatterbrain", "--classes", "goldfish,207", "--per-class", "4",
            "--device", "cpu", "--out", str(out), "--grid"]


def app_command(assets: dict[str, Path]) -> list[str]:
    """The app/app.py arguments that serve the random generator on 127.0.0.1."""
    return ["--model", str(assets["model"]), "--device", "cpu"]


def commands(assets: dict[str, Path], folder: Path) -> list[list[str]]:
    """The three programs on the stand-ins: eval/fid.py, app/sample.py, app/app.py."""
    return [["python", "eval/fid.py", *smoke_command(assets, folder / "results")],
            ["python", "app/sample.py", *sample_command(assets, folder / "samples" / assets["model"].name)],
            ["python", "app/app.py", *app_command(assets)]]


def main(argv: list[str] | None = None) -> int:
    from common.cli import USER_ERRORS, OneLineParser, report_error

    p = OneLineParser(prog="eval/smoke_assets.py", description=__doc__.splitlines()[0])
    p.add_argument("folder", nargs="?", default="smoke")
    p.add_argument("--resolution", type=int, default=128, help="generator resolution: 128, 256 or 512 (default 128)")
    p.add_argument("--full-width", action="store_true",
                   help="the published channel width (slow on a CPU) instead of 1/16 of it")
    p.add_argument("--seed", type=int, default=0, help="seed of every random weight (default 0)")
    try:
        args = p.parse_args(argv)
        assets = write_smoke_assets(args.folder, args.seed, args.resolution, args.full_width)
    except (*USER_ERRORS, OSError) as err:
        return report_error(err)
    print(f"random stand-ins written in {args.folder}; every number their runs print is meaningless (random "
          "weights): they only show that the programs work offline. Run:")
    for command in commands(assets, Path(args.folder)):
        print(shlex.join(command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
