"""Random stand-ins for the three downloads, so the whole pipeline runs offline in seconds.

    python eval/smoke_assets.py smoke/        # then run the eval/fid.py command it prints

Writes a 1/16-width random BigGAN-deep-128 (the published key layout), a 1/16-width random FID
Inception (128-d features) and random reference statistics of that dimension. The numbers a run
on them prints are MEANINGLESS: they only show that every stage works.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])


def write_smoke_assets(folder: str | Path, seed: int = 0) -> dict[str, Path]:
    """{"model", "inception", "ref_stats"} paths under ``folder`` (created)."""
    import numpy as np
    import torch

    from common.files import write_atomic
    from eval.inception import random_inception_state
    from eval.reference_stats import save_stats
    from weights import write_random_checkpoint

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    model = write_random_checkpoint(root / "biggan-deep-tiny", seed=seed, channel_width=8)
    inception = root / "inception-tiny.pth"
    state = random_inception_state(1 / 16, seed=seed)
    write_atomic(inception, lambda f: torch.save(state, f))
    feats = np.random.default_rng(seed).normal(size=(512, 128))
    save_stats(root / "ref-random.npz", feats.mean(0), np.cov(feats, rowvar=False))
    return {"model": Path(model), "inception": inception, "ref_stats": root / "ref-random.npz"}


def smoke_command(assets: dict[str, Path], out: Path) -> list[str]:
    """The eval/fid.py arguments of the smoke run (exact and smyrf, 20 images on the CPU)."""
    return ["--model", str(assets["model"]), "--inception-weights", str(assets["inception"]),
            "--ref-stats", str(assets["ref_stats"]), "--attn", "exact,smyrf", "--num-samples", "20",
            "--batch-size", "10", "--is-splits", "2", "--bootstrap", "10", "--device", "cpu", "--out", str(out)]


def main(argv: list[str] | None = None) -> int:
    from common.cli import USER_ERRORS, OneLineParser, report_error

    p = OneLineParser(prog="eval/smoke_assets.py", description=__doc__.splitlines()[0])
    p.add_argument("folder", nargs="?", default="smoke")
    try:
        args = p.parse_args(argv)
        assets = write_smoke_assets(args.folder)
    except (*USER_ERRORS, OSError) as err:
        return report_error(err)
    command = ["python", "eval/fid.py", *smoke_command(assets, Path(args.folder) / "results")]
    print("random stand-ins written; run (its numbers are meaningless, it only shows the pipeline works):")
    print(shlex.join(command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
