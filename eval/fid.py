"""FID, Inception Score, attention error and cost of attention backends on identical latents.

    python eval/fid.py --attn smyrf                          # exact is evaluated alongside
    python eval/fid.py --attn exact,smyrf,scatterbrain --num-samples 5000 --out results/
    python eval/fid.py --attn smyrf,performer --budget 1/32,1/8,1/4
    torchrun --nproc_per_node=8 eval/fid.py ...              # shards latents across ranks

Bad input prints one line on stderr and exits with code 2; nothing is generated before the
generator, the Inception network and the reference statistics are all in place.
"""
from __future__ import annotations

import argparse
import json
import sys
from fractions import Fraction
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

from common.cli import USER_ERRORS, OneLineParser, report_error

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="eval/fid.py", description="Evaluate BigGAN attention backends on identical latents.")
    p.add_argument("--attn", default="exact", help="comma-separated backends, e.g. exact,smyrf,scatterbrain")
    p.add_argument("--attn-kwargs", action="append", default=[], metavar="NAME='{json}'",
                   help="parameters of one backend as a JSON object; repeatable")
    p.add_argument("--budget", default=None, help="comma-separated fractions of the dense score matrix, e.g. 1/32,1/8,0.25")
    p.add_argument("--no-baseline", action="store_true", help="do not add exact when it is not listed in --attn")
    p.add_argument("--model", default="biggan-deep-128", help="model name or local checkpoint path")
    p.add_argument("--num-samples", type=int, default=50000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--shard-size", type=int, default=1000, help="images per cached, resumable shard")
    p.add_argument("--truncation", type=float, default=1.0)
    p.add_argument("--classes", default="all", help="class ids or ImageNet names, comma-separated, or 'all' (balanced)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when present)")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    p.add_argument("--ref-stats", default=None, help="imagenet-128|256|512 or an .npz with mu/sigma (default: imagenet-<resolution>)")
    p.add_argument("--ref-images", default=None, help="folder of real images to compute (and cache) reference statistics from")
    p.add_argument("--inception-weights", default=None, help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth (default: torch hub cache)")
    p.add_argument("--cache", default=None, help="feature cache folder (default: <out>/features)")
    p.add_argument("--out", default="results/")
    return p


def parse_budgets(text: str | None) -> list[tuple[str, float]]:
    """'1/32,0.125' -> [('1/32', 0.03125), ('0.125', 0.125)]."""
    if text is None:
        return []
    budgets = []
    for item in (s.strip() for s in text.split(",")):
        try:
            value = float(Fraction(item))
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"bad --budget entry {item!r}; give fractions in (0, 1] like 1/32 or 0.125") from None
        if not 0.0 < value <= 1.0:
            raise ValueError(f"--budget {item} is outside (0, 1]; a budget is a fraction of the dense score matrix")
        budgets.append((item, value))
    return budgets


def parse_attn_kwargs(entries: list[str]) -> dict[str, dict]:
    """["smyrf={\"n_hashes\": 8}", ...] -> {"smyrf": {"n_hashes": 8}}."""
    out: dict[str, dict] = {}
    for entry in entries:
        name, sep, blob = entry.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"bad --attn-kwargs {entry!r}; expected NAME='{{json object}}'")
        try:
            params = json.loads(blob)
        except json.JSONDecodeError as err:
            raise ValueError(f"bad JSON in --attn-kwargs {name.strip()}: {err.msg} at column {err.colno}") from None
        if not isinstance(params, dict):
            raise ValueError(f"--attn-kwargs {name.strip()} must be a JSON object, got {type(params).__name__}")
        out.setdefault(name.strip(), {}).update(params)
    return out


def method_specs(args) -> list:
    """Validated methods (exact first), each backend test-built with its parameters."""
    from gan.attention import available_attentions, build_attention

    from eval.runner import MethodSpec

    names = list(dict.fromkeys(s.strip() for s in args.attn.split(",") if s.strip()))
    if not names:
        raise ValueError(f"--attn is empty; available: {', '.join(available_attentions())}")
    unknown = [n for n in names if n not in available_attentions()]
    if unknown:
        raise ValueError(f"unknown attention backend {', '.join(unknown)}; available: {', '.join(available_attentions())}")
    if "exact" not in names and not args.no_baseline:
        names.insert(0, "exact")
    names.sort(key=lambda n: n != "exact")
    kwargs = parse_attn_kwargs(args.attn_kwargs)
    stray = sorted(set(kwargs) - set(names))
    if stray:
        raise ValueError(f"--attn-kwargs given for {', '.join(stray)}, which is not in --attn ({', '.join(names)})")
    budgets = parse_budgets(args.budget)
    specs = []
    for name in names:
        params = dict(kwargs.get(name, {}))
        if name != "exact":
            params.setdefault("seed", args.seed)
        if name == "exact" or not budgets:
            variants = [(name, params)]
        elif "budget" in params:
            raise ValueError(f"{name}: give the budget either in --attn-kwargs or with --budget, not both")
        else:
            variants = [(f"{name}@{text}", {**params, "budget": value}) for text, value in budgets]
        for label, p in variants:
            try:
                build_attention(name, **p)
            except TypeError as err:
                raise ValueError(f"bad --attn-kwargs for {name}: {err}") from None
            specs.append(MethodSpec(label, name, p))
    return specs


def check_args(args) -> None:
    if args.num_samples < 2:
        raise ValueError(f"--num-samples must be >= 2 (a covariance needs two samples), got {args.num_samples}")
    if args.batch_size < 1 or args.shard_size < 1:
        raise ValueError("--batch-size and --shard-size must be >= 1")
    if not 0.0 < args.truncation <= 1.0:
        raise ValueError(f"--truncation must be in (0, 1], got {args.truncation}")
    if args.ref_stats and args.ref_images:
        raise ValueError("pass either --ref-stats or --ref-images, not both")


def model_id(model: str) -> str:
    """The model name, or for a local path its resolved location plus file sizes and times."""
    path = Path(model).expanduser()
    if not path.exists():
        return model
    files = sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file())
    return str(path.resolve()) + "|" + ",".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)


def reference_statistics(args, inception, inception_id: str, resolution: int, ctx):
    """Rank 0 loads / downloads / computes (mu, sigma, source); every rank gets them or the error."""
    from eval.folder_stats import folder_statistics
    from eval.reference_stats import NAMED_STATS, resolve_named_or_file

    result = None
    if ctx.is_main:
        try:
            if args.ref_images:
                result = folder_statistics(args.ref_images, inception, inception_id, args.batch_size, ctx.device)
            else:
                spec = args.ref_stats or f"imagenet-{resolution}"
                if args.ref_stats is None and spec not in NAMED_STATS:
                    raise ValueError(
                        f"no default reference statistics for {resolution}x{resolution} images; pass --ref-stats FILE.npz "
                        f"(mu, sigma) or --ref-images DIR"
                    )
                result = resolve_named_or_file(spec, inception.feature_dim)
        except (ValueError, FileNotFoundError) as err:
            result = f"{type(err).__name__}: {err}"
    result = ctx.broadcast(result)
    if isinstance(result, str):
        kind, _, message = result.partition(": ")
        raise (FileNotFoundError if kind == "FileNotFoundError" else ValueError)(message)
    return result


def run(args) -> int:
    from gan.sampling import class_ids_from
    from weights import load_generator

    from common.distributed import init_distributed, shutdown
    from eval.inception import load_inception
    from eval.metrics import method_row
    from eval.report import text_table, write_results
    from eval.runner import ImageSpec, evaluate_method

    check_args(args)
    specs = method_specs(args)
    classes = class_ids_from(args.classes)
    ctx = init_distributed(args.device)
    try:
        inception, inception_id = load_inception(args.inception_weights, ctx.device)
        G = load_generator(args.model, attention="exact", device=ctx.device, dtype=args.dtype)
        if max(classes) >= G.num_classes:
            raise ValueError(f"class id {max(classes)} out of range for a {G.num_classes}-class model")
        ref_mu, ref_sigma, ref_source = reference_statistics(args, inception, inception_id, G.resolution, ctx)
        image = ImageSpec(model_id(args.model), args.truncation, args.seed, tuple(classes), args.dtype, inception_id)
        out = Path(args.out)
        cache = Path(args.cache) if args.cache else out / "features"
        runs = {}
        for spec in specs:
            runs[spec.label] = evaluate_method(
                G, inception, image, spec, num_samples=args.num_samples, batch_size=args.batch_size,
                shard_size=args.shard_size, cache=cache, ctx=ctx, dtype=DTYPES[args.dtype],
            )
        if not ctx.is_main:
            return 0
        exact = runs.get("exact")
        methods = {s.label: method_row(runs[s.label], exact, ref_mu, ref_sigma, ctx.device, s.is_exact) for s in specs}
        config = {
            "model": args.model, "resolution": G.resolution, "num_samples": args.num_samples,
            "batch_size": args.batch_size, "shard_size": args.shard_size, "truncation": args.truncation,
            "classes": "all" if len(classes) == G.num_classes else classes, "seed": args.seed,
            "device": str(ctx.device), "dtype": args.dtype, "world_size": ctx.world_size,
            "ref_stats": ref_source, "inception_weights": inception_id, "budgets": args.budget,
            "attention": {
                s.label: {"backend": s.attention, "kwargs": s.kwargs,
                          "resolved": _resolved(s, runs[s.label].attn_shape),
                          "generated_this_run": runs[s.label].generated}
                for s in specs
            },
        }
        budgets = {s.label: (s.attention, s.kwargs["budget"]) for s in specs if "budget" in s.kwargs}
        written = write_results(out, methods, config, budgets)
        print(text_table(methods))
        for s in specs:
            n_gen = runs[s.label].generated
            print(f"{s.label}: {n_gen} images generated, {args.num_samples - n_gen} from the cache")
        print("wrote " + ", ".join(str(p) for p in written))
        return 0
    finally:
        shutdown(ctx)


def _resolved(spec, shape: tuple[int, ...]) -> dict:
    from gan.attention import build_attention

    if len(shape) != 3:
        return {}
    try:
        return build_attention(spec.attention, **spec.kwargs).resolve(*shape)
    except ValueError as err:  # report metadata only: never lose a finished run over it
        return {"unresolved": str(err)}


def main(argv: list[str] | None = None) -> int:
    try:
        return run(build_parser().parse_args(argv))
    except USER_ERRORS as err:
        return report_error(err)


if __name__ == "__main__":
    sys.exit(main())
