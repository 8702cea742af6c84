"""Batch sample generation: ``python app/sample.py --model biggan-deep-512 --attn scatterbrain --out samples/``.

Image i has class ``classes[i % len(classes)]`` and a latent that depends only on (--seed, i), so
any batch size, order, resume or number of processes gives the same images. Under ``torchrun``
the work units (images for png, chunks for npz) are dealt round-robin to the processes. See
``app/sample_store.py`` for the output layout and docs/app.md for the options.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from app.imaging import tile, to_uint8  # noqa: E402
from app.params import parse_attention_kwargs  # noqa: E402
from app.sample_store import (GRID, NpzStore, PngStore, check_run_settings,  # noqa: E402
                              remove_stale_temporaries, write_manifest, write_run_settings)
from eval.attention_probe import AttentionProbe, probed  # noqa: E402
from common.cli import USER_ERRORS, OneLineParser, report_error  # noqa: E402
from common.distributed import DistContext, init_distributed, shutdown  # noqa: E402
from gan.attention import build_attention  # noqa: E402
from gan.sampling import balanced_class_ids, class_ids_from, imagenet_class_names, per_image_latents  # noqa: E402
from weights import load_generator  # noqa: E402
from common.files import write_atomic  # noqa: E402

DEFAULT_MODEL = "biggan-deep-128"
GRID_IMAGES = 64


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help="registry name or local checkpoint path")
    p.add_argument("--attn", default="exact", help="attention backend (see gan.attention.available_attentions())")
    p.add_argument("--attn-kwargs", default="", help="backend parameters: JSON object or key=value,key=value")
    p.add_argument("--classes", default="all", help="'all', or comma-separated ImageNet class ids and/or names")
    p.add_argument("--per-class", type=int, default=10, help="images per class")
    p.add_argument("--truncation", type=float, default=0.4, help="truncation in (0, 1]")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-image latents (and of the attention backend)")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (halved on CUDA out-of-memory)")
    p.add_argument("--out", required=True, help="output folder (created; a re-run resumes it)")
    p.add_argument("--format", choices=("png", "npz"), default="png", help="one PNG per image, or uint8 (N,H,W,3) samples.npz")
    p.add_argument("--npz-chunk", type=int, default=256, help="images per resumable npz chunk")
    p.add_argument("--grid", action="store_true", help=f"also write grid.png of the first {GRID_IMAGES} images")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available; under torchrun cuda:LOCAL_RANK)")
    return p.parse_args(argv)


def validate(args: argparse.Namespace) -> tuple[list[int], dict[str, Any]]:
    """Check the arguments before any model is loaded; returns (class ids, backend kwargs)."""
    if args.per_class < 1:
        raise ValueError(f"--per-class must be >= 1, got {args.per_class}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.npz_chunk < 1:
        raise ValueError(f"--npz-chunk must be >= 1, got {args.npz_chunk}")
    if not 0.0 < args.truncation <= 1.0:
        raise ValueError(f"--truncation must be in (0, 1], got {args.truncation}")
    classes = class_ids_from(args.classes)
    kwargs = {"seed": args.seed} | parse_attention_kwargs(args.attn_kwargs)  # the backend's draws follow --seed
    build_attention(args.attn, **kwargs)  # unknown backend / parameter -> ValueError now, not after loading
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_test = out / f".write-test.{os.getpid()}.tmp"
        write_test.touch()
        write_test.unlink()
    except OSError as err:
        raise ValueError(f"cannot write to --out {out}: {err.strerror or err}") from None
    return classes, kwargs


def resolved_attention_params(G, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The backend's concrete parameters on this generator's attention shapes (one 1-image forward pass)."""
    with probed(G, AttentionProbe(measure_error=False)) as probe:
        G.generate(torch.zeros(1, G.z_dim), torch.zeros(1, dtype=torch.long), 1.0)
    return {**kwargs, **(G.attention.resolve(*probe.shape) if probe.shape else {})}


def generate_batches(G, todo: Sequence[int], classes: list[int], args, store, device: torch.device, progress) -> None:
    """Generate ``todo`` (global indices) in batches, handing each image to ``store``; halves the batch on CUDA OOM."""
    batch_size, start = args.batch_size, 0
    while start < len(todo):
        indices = list(todo[start:start + batch_size])
        labels = balanced_class_ids(indices, classes)
        z = per_image_latents(indices, G.z_dim, args.truncation, args.seed)
        try:
            images = to_uint8(G.generate(z.to(device), labels.to(device), args.truncation))  # (b, H, W, 3)
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size //= 2
            progress.write(f"CUDA out of memory: batch size halved to {batch_size}")
            torch.cuda.empty_cache()
            continue
        for index, image, label in zip(indices, images, labels.tolist()):
            store.add(index, image, label)
        progress.update(len(indices))
        start += len(indices)


def run(args: argparse.Namespace) -> int:
    classes, kwargs = validate(args)
    out = Path(args.out)
    total = len(classes) * args.per_class
    settings = {"model": args.model, "attn": args.attn, "attn_kwargs": parse_attention_kwargs(args.attn_kwargs), "classes": classes,
                "per_class": args.per_class, "truncation": args.truncation, "seed": args.seed, "format": args.format}
    if args.format == "npz":
        settings["npz_chunk"] = args.npz_chunk
    check_run_settings(out, settings)
    ctx = init_distributed(args.device)
    try:
        return _run_rank(args, ctx, classes, kwargs, settings, total)
    finally:
        shutdown(ctx)


def _run_rank(args: argparse.Namespace, ctx: DistContext, classes: list[int], kwargs: dict[str, Any], settings: dict[str, Any], total: int) -> int:
    out = Path(args.out)
    store = PngStore(out, total) if args.format == "png" else NpzStore(out, total, args.npz_chunk)
    if ctx.is_main:
        remove_stale_temporaries(out)
        write_run_settings(out, settings)
        store.prepare()
    ctx.barrier()

    G = load_generator(args.model, attention=args.attn, attention_kwargs=kwargs, device=ctx.device).eval()
    if len(classes) and max(classes) >= G.num_classes:
        raise ValueError(f"class id {max(classes)} is out of range for {args.model}, which has {G.num_classes} classes")
    params = resolved_attention_params(G, kwargs)
    todo = [i for u, unit in enumerate(store.units()) if ctx.owns(u) and not store.unit_done(unit) for i in unit]
    desc = f"{args.attn} rank {ctx.rank}/{ctx.world_size}"
    with tqdm(total=len(todo), unit="img", desc=desc, disable=not ctx.is_main or not todo) as progress:
        try:
            generate_batches(G, todo, classes, args, store, ctx.device, progress)
        finally:
            if not ctx.active:
                write_finished(G, args, params, classes, store, out)
    ctx.barrier()
    if ctx.is_main and ctx.active:
        write_finished(G, args, params, classes, store, out)
    if ctx.is_main and args.grid:
        head = store.head(GRID_IMAGES)
        if len(head):
            write_atomic(out / GRID, lambda f: tile(head).save(f, format="PNG"))
    if ctx.is_main:
        done = sum(1 for _ in store.done_rows())
        print(f"{done}/{total} images in {out} ({len(todo)} generated now)")
    return 0


def write_finished(G, args, params: dict[str, Any], classes: list[int], store, out: Path) -> None:
    """Merge (npz) and rewrite the manifest so it lists exactly the finished images, once each."""
    store.finish()
    names = imagenet_class_names() if G.num_classes == 1000 else None
    write_manifest(out, (
        {"file": rel, "index": i, "class": classes[i % len(classes)],
         **({"class_name": names[classes[i % len(classes)]]} if names else {}),
         "seed": args.seed, "truncation": args.truncation, "model": args.model, "backend": args.attn, "params": params}
        for i, rel in store.done_rows()
    ))


def main(argv: list[str] | None = None) -> int:
    try:
        return run(parse_args(argv))
    except USER_ERRORS as err:
        return report_error(err)
    except KeyboardInterrupt:
        print("interrupted: finished images are kept; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
