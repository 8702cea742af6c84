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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from app.imaging import tile, to_uint8
from app.params import checked_backend
from app.sample_store import (
    GRID,
    NpzStore,
    PngStore,
    append_manifest,
    check_run_settings,
    remove_stale_temporaries,
    write_manifest,
    write_run_settings,
)
from common.cli import (
    BUDGET_HELP,
    USER_ERRORS,
    OneLineParser,
    check_at_least,
    parse_attention_kwargs,
    parse_budget,
    parse_truncation,
    report_error,
    with_budget,
)
from common.devices import check_compile_backend
from common.distributed import DistContext, init_distributed, shutdown
from common.files import write_atomic
from common.run_lock import hold_run_lock
from gan.attention import build_attention
from gan.sampling import balanced_class_ids, class_ids_from, imagenet_class_names
from weights import load_generator

DEFAULT_MODEL = "biggan-deep-128"
GRID_IMAGES = 64


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help="registry name or local checkpoint path")
    p.add_argument("--eps", type=float, default=None,
                   help="BN/SN epsilon of a TF-Hub-converted BigGAN-PyTorch checkpoint without its sidecar (e.g. 1e-4)")
    p.add_argument("--attn", default="exact", help="attention backend (see gan.attention.available_attentions())")
    p.add_argument("--attn-kwargs", action="append", default=[], metavar="'{json}'",
                   help="backend parameters: a JSON object, or NAME='{json}' with NAME the --attn backend; repeatable")
    p.add_argument("--budget", default=None, help=BUDGET_HELP)
    p.add_argument("--classes", default="all", help="'all', or comma-separated ImageNet class ids and/or names")
    p.add_argument("--per-class", type=int, default=10, help="images per class")
    p.add_argument("--truncation", type=float, default=0.4, help="truncation in (0, 1]")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-image latents (and of the attention backend)")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (halved on CUDA out-of-memory)")
    p.add_argument("--out", required=True, help="output folder (created; a re-run resumes it)")
    p.add_argument("--format", choices=("png", "npz"), default="png",
                   help="one PNG per image, or uint8 (N,H,W,3) samples.npz")
    p.add_argument("--npz-chunk", type=int, default=256, help="images per resumable npz chunk")
    p.add_argument("--save-attention-inputs", default=None, metavar="FILE",
                   help="also save the attention layer's q, k, v of the first --save-attention-images images to FILE "
                        "(for bench/pareto.py --inputs and bench/attention.py --inputs)")
    p.add_argument("--save-attention-images", type=int, default=8, help="images to save q, k, v of (default 8)")
    p.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   help="torch.compile the generator with its attention backend (torch.compile backend, default "
                        "inductor): the same images within float rounding; the first batch per shape pays the compile")
    p.add_argument("--grid", action="store_true", help=f"also write grid.png of the first {GRID_IMAGES} images")
    p.add_argument("--device", default=None,
                   help="cpu, cuda or cuda:N (default: cuda if available; under torchrun cuda:LOCAL_RANK)")
    return p.parse_args(argv)


def check_out_folder(out: Path) -> None:
    """ValueError unless ``out`` is (or can be created as) a writable folder; creates and writes nothing."""
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"cannot write to --out {out}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write to --out {out}: {existing} is not writable")


def validate(args: argparse.Namespace) -> tuple[list[int], dict[str, Any]]:
    """Check the arguments before any model is loaded; returns (class ids, the backend's own kwargs)."""
    check_at_least("--per-class", args.per_class)
    check_at_least("--batch-size", args.batch_size)
    check_at_least("--npz-chunk", args.npz_chunk)
    check_at_least("--save-attention-images", args.save_attention_images)
    parse_truncation(args.truncation, "--truncation")
    check_compile_backend(args.compile)
    if args.save_attention_inputs:
        check_out_folder(Path(args.save_attention_inputs).parent)
    classes = class_ids_from(args.classes)
    own = parse_attention_kwargs(args.attn_kwargs, [args.attn]).get(args.attn, {})
    own = with_budget(args.attn, own, None if args.budget is None else parse_budget(args.budget, "--budget"))
    build_attention(args.attn, **({"seed": args.seed} | own))  # unknown backend / parameter: refused now
    check_out_folder(Path(args.out))
    return classes, own


def check_finite_weights(G, model: str) -> None:
    """ValueError naming the first tensors of ``G`` that hold NaN/inf (such a checkpoint only draws NaN images)."""
    tensors = [(name, t) for name, t in [*G.named_parameters(), *G.named_buffers()] if t.is_floating_point()]
    finite = torch.stack([torch.isfinite(t).all() for _, t in tensors]).tolist() if tensors else []  # one sync
    bad = [name for (name, _), ok in zip(tensors, finite, strict=False) if not ok]
    if bad:
        raise ValueError(f"{model} holds NaN/inf weights in {len(bad)} tensor(s) (e.g. {', '.join(bad[:3])}); "
                         "it cannot generate images")


def prepare_generator(args: argparse.Namespace, ctx: DistContext, classes: list[int], own: dict[str, Any]):
    """Load and check the generator and the backend on its attention shape (from the config, no forward pass).

    Returns (G, the backend's kwargs, its resolved parameters); ValueError before anything is written.
    """
    kwargs = {"seed": args.seed} | own  # the backend's draws follow --seed unless given
    G = load_generator(args.model, attention="exact", device=ctx.device, eps=args.eps).eval()
    if max(classes) >= G.num_classes:
        raise ValueError(f"class id {max(classes)} is out of range for {args.model}, which has {G.num_classes} classes")
    backend, resolved = checked_backend(args.attn, kwargs, G.attention_shape())
    check_finite_weights(G, args.model)
    G.set_attention(backend)
    if args.compile:
        G.compile(backend=args.compile)
    return G, {**kwargs, **resolved}


def generate_batches(G, todo: Sequence[int], classes: list[int], args, store, record, progress) -> None:
    """Generate ``todo`` (global indices) in batches, handing each image to ``store`` and each finished
    (index, file) row to ``record``; halves the batch on CUDA OOM; NaN/inf images raise before any is written."""
    batch_size, start = args.batch_size, 0
    while start < len(todo):
        indices = list(todo[start:start + batch_size])
        labels = balanced_class_ids(indices, classes)
        try:
            x = G.sample(indices, labels, args.truncation, args.seed)  # (b, 3, H, W) in [-1, 1]
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size //= 2
            progress.write(f"CUDA out of memory: batch size halved to {batch_size}")
            torch.cuda.empty_cache()
            continue
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{args.attn} produced NaN/inf pixels for images {indices[0]}..{indices[-1]}; "
                             "none of them was written")
        images = to_uint8(x)  # (b, H, W, 3)
        for index, image, label in zip(indices, images, labels.tolist(), strict=False):
            record(store.add(index, image, label))  # the rows of a unit that just finished (file renamed into place)
        progress.update(len(indices))
        start += len(indices)


def run(args: argparse.Namespace) -> int:
    classes, own = validate(args)
    out = Path(args.out)
    settings = {"model": args.model, "eps": args.eps, "attn": args.attn, "attn_kwargs": own, "classes": classes,
                "per_class": args.per_class, "truncation": args.truncation, "seed": args.seed, "format": args.format}
    if args.format == "npz":
        settings["npz_chunk"] = args.npz_chunk
    check_run_settings(out, settings)  # reads only
    ctx = init_distributed(args.device)
    lock = None
    try:
        lock = hold_run_lock(out, "app/sample.py", ctx)  # one run per --out, taken before the model loads
        G, params = prepare_generator(args, ctx, classes, own)  # every check passed: now --out may be written
        return _run_rank(args, ctx, G, params, classes, settings, len(classes) * args.per_class)
    finally:
        if lock is not None:
            lock.release()
        shutdown(ctx)


def _run_rank(args, ctx: DistContext, G, params: dict[str, Any], classes: list[int], settings: dict[str, Any],
              total: int) -> int:
    out = Path(args.out)
    store = PngStore(out, total) if args.format == "png" else NpzStore(out, total, args.npz_chunk)
    lines = ManifestLines(G, args, params, classes)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
        write_run_settings(out, settings)
        store.prepare()
        write_manifest(out, lines(store.done_rows()))  # a clean base for this run's appended lines
    ctx.barrier()

    if ctx.is_main and args.save_attention_inputs:
        save_attention_inputs(G, args, classes, total)
    todo = [i for u, unit in enumerate(store.units()) if ctx.owns(u) and not store.unit_done(unit) for i in unit]
    desc = f"{args.attn} rank {ctx.rank}/{ctx.world_size}"
    with tqdm(total=len(todo), unit="img", desc=desc, disable=not ctx.is_main or not todo) as progress:
        try:
            generate_batches(G, todo, classes, args, store, lambda rows: append_manifest(out, lines(rows)), progress)
        finally:
            if not ctx.active:
                store.finish()
                write_manifest(out, lines(store.done_rows()))
    ctx.barrier()
    if ctx.is_main and ctx.active:
        store.finish()
        write_manifest(out, lines(store.done_rows()))
    if ctx.is_main and args.grid:
        head = store.head(GRID_IMAGES)
        if len(head):
            write_atomic(out / GRID, lambda f: tile(head).save(f, format="PNG"))
    if ctx.is_main:
        done = sum(1 for _ in store.done_rows())
        print(f"{done}/{total} images in {out} ({len(todo)} generated now)")
    return 0


def save_attention_inputs(G, args: argparse.Namespace, classes: list[int], total: int) -> None:
    """The attention layer's q, k, v of images 0 .. --save-attention-images - 1, as this run samples them."""
    from eval.attention_capture import capture_images, save_capture

    def sample(G, indices):
        return G.sample(indices.tolist(), balanced_class_ids(indices.tolist(), classes), args.truncation, args.seed)

    q, k, v = capture_images(G, sample, min(args.save_attention_images, total), args.batch_size)
    path = save_capture(Path(args.save_attention_inputs), q, k, v, model=args.model, attention="any")
    print(f"saved the attention inputs of {q.shape[0]} images to {path}", flush=True)


class ManifestLines:
    """(index, file) rows -> manifest lines: file, index, class (and name), seed, truncation, model, backend, params."""

    def __init__(self, G, args: argparse.Namespace, params: dict[str, Any], classes: list[int]):
        self.args, self.params, self.classes = args, params, classes
        self.names = imagenet_class_names() if G.num_classes == 1000 else None

    def __call__(self, rows) -> list[dict[str, Any]]:
        lines = []
        for i, rel in rows:
            label = self.classes[i % len(self.classes)]
            lines.append({"file": rel, "index": i, "class": label,
                          **({"class_name": self.names[label]} if self.names else {}),
                          "seed": self.args.seed, "truncation": self.args.truncation, "model": self.args.model,
                          "backend": self.args.attn, "params": self.params})
        return lines


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
