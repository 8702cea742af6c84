"""FID, Inception Score, attention error and cost of attention backends on identical latents.

    python eval/fid.py --attn smyrf                          # exact is evaluated alongside
    python eval/fid.py --attn exact,smyrf,scatterbrain --num-samples 5000 --out results/
    python eval/fid.py --attn smyrf,performer --budget 1/32,1/8,1/4
    torchrun --nproc_per_node=8 eval/fid.py ...              # shards latents across ranks

Bad input prints one line on stderr and exits with code 2. Everything that can fail is checked before
the first image is generated: the options, every backend against the generator's attention shape,
the output folder (and that no other run uses it: ``common/run_lock.py``), and the generator, Inception weights
and reference statistics (all missing pieces reported in one message; missing downloads as a short list,
``eval/missing_pieces.py``).
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

import torch

from common.cli import (
    BUDGET_HELP,
    USER_ERRORS,
    OneLineParser,
    check_at_least,
    parse_attention_kwargs,
    parse_budgets,
    parse_truncation,
    report_error,
    with_budget,
)
from common.devices import DTYPES, resolve_dtype

DEFAULT_NUM_SAMPLES = 50000
TINY_BUDGET = 1e-12  # building a backend at this budget gives its smallest possible configuration


def build_parser() -> argparse.ArgumentParser:
    from common.download import cache_root
    from eval.image_plan import CLASS_ORDERS
    from eval.inception import default_weights_path
    from eval.inception_input import INCEPTION_INPUTS

    p = OneLineParser(prog="eval/fid.py", description="Evaluate BigGAN attention backends on identical latents.")
    p.add_argument("--attn", default="exact", help="comma-separated backends, e.g. exact,smyrf,scatterbrain")
    p.add_argument("--attn-kwargs", action="append", default=[], metavar="NAME:key=value,... | NAME='{json}'",
                   help="parameters of one backend (grammar: docs/eval.md); repeatable")
    p.add_argument("--budget", default=None, help=f"{BUDGET_HELP}; comma-separated for a sweep, e.g. 1/32,1/8")
    p.add_argument("--no-baseline", action="store_true", help="do not add exact when it is not listed in --attn")
    p.add_argument("--model", default="biggan-deep-128", help="model name or local checkpoint path")
    p.add_argument("--eps", type=float, default=None,
                   help="BN/SN epsilon of a TF-Hub-converted BigGAN-PyTorch checkpoint without its sidecar (e.g. 1e-4)")
    p.add_argument("--num-samples", type=int, default=None, help=f"images per method (default {DEFAULT_NUM_SAMPLES}; "
                   "with --class-order repeat: classes x --per-class)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--shard-size", type=int, default=1000, help="images per cached, resumable shard")
    p.add_argument("--truncation", type=float, default=1.0)
    p.add_argument("--classes", default="all", help="class ids or ImageNet names, comma-separated, or 'all'")
    p.add_argument("--class-order", default="balanced", choices=CLASS_ORDERS,
                   help="image i's class: classes[i %% C], a seeded uniform draw, or classes[i // per-class]")
    p.add_argument("--per-class", type=int, default=None, help="images per class (--class-order repeat)")
    p.add_argument("--latents", default="per-image", choices=("per-image", "reference"),
                   help="per-image seeded latents, or the published scripts' single truncated_noise_sample draw")
    p.add_argument("--seed", type=int, default=None, help="latent seed (default 0; 123 with --latents reference)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when present)")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    p.add_argument("--ref-stats", default=None, help="imagenet-128|256|512 or an .npz with mu/sigma "
                   f"(default: imagenet-<resolution>, downloaded once; mu/sigma kept in {cache_root() / 'ref_stats'})")
    p.add_argument("--ref-images", default=None, help="folder of real images: centre-cropped and resized to the "
                   "generator's resolution, statistics cached")
    p.add_argument("--inception-weights", default=None, help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth "
                   f"(default: downloaded once into {default_weights_path().parent}; BIGGAN_ATTN_CACHE moves it)")
    p.add_argument("--inception-input", default=None, choices=INCEPTION_INPUTS,
                   help="resize + normalisation protocol (default: tf for the ADM imagenet-* statistics, "
                   "else pytorch-fid)")
    p.add_argument("--is-splits", type=int, default=10)
    p.add_argument("--is-shuffle", action="store_true",
                   help="cut IS splits from torch-fidelity's shuffled order (seed 2020)")
    p.add_argument("--bootstrap", type=int, default=100,
                   help="bootstrap resamples for 95%% intervals of FID and IS (0: off)")
    p.add_argument("--cache", default=None, help="feature cache folder (default: <out>/features)")
    p.add_argument("--out", default="results/")
    p.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   help="torch.compile the generator with each attention backend (torch.compile backend, default "
                        "inductor; cached apart from eager runs): the first batch per backend and shape compiles")
    p.add_argument("--save-attention-inputs", default=None, metavar="FILE",
                   help="also save the attention layer's q, k, v of the first --save-attention-images images to FILE "
                        "(a tensor file for bench/pareto.py --inputs and bench/attention.py --inputs)")
    p.add_argument("--save-attention-images", type=int, default=8, help="images to save q, k, v of (default 8)")
    return p


def method_specs(args) -> list:
    """Validated methods (exact first), each backend built once with its parameters."""
    from eval.runner import MethodSpec
    from gan.attention import available_attentions, build_attention

    names = list(dict.fromkeys(s.strip() for s in args.attn.split(",") if s.strip()))
    if not names:
        raise ValueError(f"--attn is empty; available: {', '.join(available_attentions())}")
    unknown = [n for n in names if n not in available_attentions()]
    if unknown:
        raise ValueError(f"unknown attention backend {', '.join(unknown)}; "
                         f"available: {', '.join(available_attentions())}")
    kwargs = parse_attention_kwargs(args.attn_kwargs, names)
    if "exact" not in names and not args.no_baseline:
        names.insert(0, "exact")
    names.sort(key=lambda n: n != "exact")
    budgets = [] if args.budget is None else parse_budgets(args.budget)
    specs = []
    for name in names:
        params = dict(kwargs.get(name, {}))
        if name != "exact":
            params.setdefault("seed", args.seed)
        if name == "exact" or not budgets:
            variants = [(name, params)]
        else:
            variants = [(f"{name}@{text}", with_budget(name, params, value)) for text, value in budgets]
        for label, p in variants:
            try:
                backend = build_attention(name, **p)
            except TypeError as err:
                raise ValueError(f"bad --attn-kwargs for {name}: {err}") from None
            specs.append(MethodSpec(label, name, p, backend))
    return specs


def check_against_shape(spec, shape) -> dict:
    """The backend's concrete parameters at ``shape``; ValueError when they do not fit or miss the budget."""
    from gan.attention import build_attention

    nq, nk, d = shape.nq, shape.nk, shape.d
    try:
        resolved = spec.backend.resolve(nq, nk, d)
        entries = spec.backend.score_entries(nq, nk, d)
    except ValueError as err:
        raise ValueError(f"{spec.label} at the generator's attention shape ({nq} queries, {nk} keys, d={d}): "
                         f"{err}") from None
    budget = spec.kwargs.get("budget")
    if budget is None or spec.is_exact or entries <= budget * nq * nk * (1 + 1e-9):
        return resolved
    where = f"{nq} queries x {nk} keys (d={d})"
    try:
        seed = {"seed": spec.kwargs["seed"]} if "seed" in spec.kwargs else {}
        floor = build_attention(spec.attention, budget=TINY_BUDGET, **seed).score_entries(nq, nk, d) / (nq * nk)
    except ValueError:
        floor = None
    if floor is not None and floor > budget:
        raise ValueError(f"{spec.label}: no {spec.attention} configuration fits budget {budget:.3g} at {where}; "
                         f"the smallest possible is {floor:.3g} (1/{1 / floor:.0f}) of the dense score matrix")
    raise ValueError(f"{spec.label}: its parameters {resolved} hold {entries / (nq * nk):.3g} of the dense score "
                     f"matrix at {where}, above the budget {budget:.3g}; drop explicit parameters or raise the budget")


def check_args(args) -> None:
    from common.devices import check_compile_backend

    check_compile_backend(args.compile)
    if args.num_samples is not None and args.num_samples < 2:
        raise ValueError(f"--num-samples must be >= 2 (a covariance needs two samples), got {args.num_samples}")
    if args.batch_size < 1 or args.shard_size < 1:
        raise ValueError("--batch-size and --shard-size must be >= 1")
    parse_truncation(args.truncation, "--truncation")
    if args.ref_stats and args.ref_images:
        raise ValueError("pass either --ref-stats or --ref-images, not both")
    if args.per_class is not None:
        check_at_least("--per-class", args.per_class)
    if args.class_order == "repeat" and args.per_class is None:
        raise ValueError("--class-order repeat needs --per-class N (images per class)")
    if args.class_order != "repeat" and args.per_class is not None:
        raise ValueError("--per-class is only used with --class-order repeat")
    check_at_least("--is-splits", args.is_splits)
    check_at_least("--bootstrap", args.bootstrap, least=0)
    check_at_least("--save-attention-images", args.save_attention_images)


def num_samples(args, classes: list[int]) -> int:
    """--num-samples, or for the repeat order classes x --per-class (and they must agree when both are given)."""
    if args.class_order != "repeat":
        n = DEFAULT_NUM_SAMPLES if args.num_samples is None else args.num_samples
    else:
        n = len(classes) * args.per_class
        if args.num_samples is not None and args.num_samples != n:
            raise ValueError(f"--num-samples {args.num_samples} disagrees with {len(classes)} classes x --per-class "
                             f"{args.per_class} = {n}; drop --num-samples")
        if n < 2:
            raise ValueError("the repeat class order needs at least 2 images (classes x --per-class)")
    if n < args.is_splits:
        raise ValueError(f"{n} images are fewer than --is-splits {args.is_splits}; the Inception Score needs one image "
                         f"per split at least")
    return n


def check_writable(path: Path, option: str) -> None:
    """``path`` can be created and written: its nearest existing ancestor is a writable directory (probed with a
    temporary file that is removed at once); nothing is created."""
    path = path.expanduser().absolute()
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        what = "is a file" if probe == path else f"is under the file {probe}"
        raise ValueError(f"{option} {path} {what}; give a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise ValueError(f"{option} {path} is not writable ({err.strerror or err} in {probe})") from None


def model_id(model: str) -> str:
    """The model name, or for a local path its resolved location plus file sizes and times."""
    path = Path(model).expanduser()
    if not path.exists():
        return model
    files = sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file())
    return str(path.resolve()) + "|" + ",".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)


def reference_kind(args) -> str:
    """'named' (ADM's TF-evaluator batches), 'file' or 'images'."""
    from eval.reference_stats import NAMED_STATS

    if args.ref_images:
        return "images"
    return "named" if args.ref_stats is None or args.ref_stats in NAMED_STATS else "file"


def inception_input_mode(args) -> str:
    from eval.inception_input import OTHER_DEFAULT, TF_EVALUATOR_DEFAULT

    if args.inception_input:
        return args.inception_input
    return TF_EVALUATOR_DEFAULT if reference_kind(args) == "named" else OTHER_DEFAULT


def _resolution_guess(model: str) -> int | None:
    match = re.search(r"-(\d+)$", model)
    return int(match.group(1)) if match else None


def reference_statistics(args, inception, inception_id: str, resolution: int | None, feature_dim: int | None, ctx):
    """Rank 0 loads / downloads / computes (mu, sigma, source) or an error line; every rank gets the same."""
    from common.download import DownloadMissing
    from eval.folder_stats import folder_statistics
    from eval.reference_stats import NAMED_STATS, resolve_named_or_file

    result = None
    if ctx.is_main:
        try:
            if args.ref_images:
                if inception is None or resolution is None:
                    from common.images import check_readable, list_images

                    check_readable(list_images(args.ref_images))
                    result = "pending: the generator or Inception is missing"
                else:
                    result = folder_statistics(args.ref_images, inception, inception_id, args.batch_size, ctx.device,
                                               resolution)
            else:
                spec = args.ref_stats or (f"imagenet-{resolution}" if resolution else None)
                if spec is None:
                    raise ValueError("cannot tell the generator's resolution to pick reference statistics; "
                                     "pass --ref-stats or --ref-images")
                if args.ref_stats is None and spec not in NAMED_STATS:
                    raise ValueError(
                        f"no default reference statistics for {resolution}x{resolution} images; "
                        f"pass --ref-stats FILE.npz (mu, sigma) or --ref-images DIR"
                    )
                result = resolve_named_or_file(spec, feature_dim or 2048)
        except DownloadMissing as err:  # kept whole: the first-run message lists its parts
            result = err
        except FileNotFoundError as err:
            result = f"FileNotFoundError: {err}"
        except ValueError as err:
            result = None if feature_dim is None and "dimensions" in str(err) else f"ValueError: {err}"
    return ctx.broadcast(result)


def load_everything(args, ctx, input_mode: str, check_generator):
    """(inception, inception id, generator, check_generator(G), reference stats) or one error naming every
    missing piece. ``check_generator`` runs as soon as the generator is loaded, before reference statistics
    are computed from images (which can take long)."""
    from eval.inception import load_inception
    from eval.missing_pieces import startup_error
    from weights import load_generator

    errors: list[tuple[str, BaseException]] = []  # (the flag that replaces the piece, its error)
    inception = inception_id = G = None
    try:
        inception, inception_id = load_inception(args.inception_weights, ctx.device, input_mode=input_mode)
    except USER_ERRORS as err:
        errors.append(("--inception-weights FILE", err))
    try:
        G = load_generator(args.model, attention="exact", device=ctx.device, dtype=args.dtype, eps=args.eps)
    except USER_ERRORS as err:
        errors.append(("--model DIR (a local checkpoint)", err))
    checked = check_generator(G) if G is not None else None
    resolution = G.resolution if G is not None else _resolution_guess(args.model)
    feature_dim = inception.feature_dim if inception is not None else None
    ref = reference_statistics(args, inception, inception_id, resolution, feature_dim, ctx)
    if isinstance(ref, FileNotFoundError):
        errors.append(("--ref-stats FILE.npz", ref))
    elif isinstance(ref, str) and not ref.startswith("pending"):
        kind, _, message = ref.partition(": ")
        error = (FileNotFoundError if kind == "FileNotFoundError" else ValueError)(message)
        errors.append(("--ref-stats FILE.npz", error))
    if errors:
        raise startup_error(errors)  # one line, or the first-run list when downloads are missing
    return inception, inception_id, G, checked, ref


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"{device} (no GPU: slow; the time estimate follows the first batch)"
    return str(device)


def run(args) -> int:
    from common.distributed import init_distributed, shutdown
    from common.run_lock import hold_run_lock
    from eval.folder_stats import CROP_PROTOCOL
    from eval.image_plan import ImagePlan
    from eval.metrics import RowInputs, ScoreProtocol, method_row
    from eval.report import text_table, write_results
    from eval.runner import ImageSpec, RunProgress, evaluate_method, missing_images
    from gan.attention import attention_info
    from gan.sampling import class_ids_from

    check_args(args)
    if args.seed is None:
        from gan.sampling import REFERENCE_SEED

        args.seed = REFERENCE_SEED if args.latents == "reference" else 0
    specs = method_specs(args)
    classes = class_ids_from(args.classes)
    n = num_samples(args, classes)
    out = Path(args.out)
    cache = Path(args.cache) if args.cache else out / "features"
    check_writable(out, "--out")
    check_writable(cache, "--cache")
    if args.save_attention_inputs:
        check_writable(Path(args.save_attention_inputs).parent, "--save-attention-inputs")
    input_mode = inception_input_mode(args)
    ctx = init_distributed(args.device)
    lock = None
    try:
        lock = hold_run_lock(out, "eval/fid.py", ctx)  # one run per --out; before anything is loaded or written

        def check_generator(G) -> dict[str, list[dict]]:
            if max(classes) >= G.num_classes:
                raise ValueError(f"class id {max(classes)} out of range for a {G.num_classes}-class model")
            return {s.label: [check_against_shape(s, shape) for shape in G.attention_shapes()] for s in specs}

        loaded = load_everything(args, ctx, input_mode, check_generator)
        inception, inception_id, G, resolved, (ref_mu, ref_sigma, ref_source) = loaded
        plan = ImagePlan(args.truncation, args.seed, tuple(classes), args.latents, args.class_order, args.per_class,
                         n if args.latents == "reference" else None)
        if args.compile:
            G.compile(backend=args.compile)
        model = model_id(args.model) + (f"|eps={args.eps}" if args.eps else "")
        model += f"|compiled={args.compile}" if args.compile else ""  # compiled images: cached apart
        dtype = str(resolve_dtype(args.dtype)).removeprefix("torch.")  # fp16 and half: one cache entry
        image = ImageSpec(model, plan, dtype, inception_id, input_mode)
        if args.save_attention_inputs and ctx.is_main:
            from eval.attention_capture import capture_images, save_capture

            q, k, v = capture_images(G, plan.sample, min(args.save_attention_images, n), args.batch_size)
            saved = save_capture(Path(args.save_attention_inputs), q, k, v, model=args.model, attention="any")
            print(f"saved the attention inputs of {q.shape[0]} images to {saved}", flush=True)
        todo = {s.label: missing_images(cache, image, s, n, args.shard_size, ctx) for s in specs}
        if ctx.is_main:
            print(f"device {describe_device(ctx.device)}, {args.dtype}, {ctx.world_size} process(es); "
                  f"{len(specs)} method(s) x {n} images: {sum(todo.values())} to generate on this rank, "
                  f"the rest cached; Inception input {input_mode}", flush=True)
        progress = RunProgress(sum(todo.values()), enabled=ctx.is_main)
        runs = {}
        try:
            for spec in specs:
                runs[spec.label] = evaluate_method(G, inception, image, spec, num_samples=n, batch_size=args.batch_size,
                                                   shard_size=args.shard_size, cache=cache, ctx=ctx, bar=progress)
        finally:
            progress.close()
        if not ctx.is_main:
            return 0
        protocol = ScoreProtocol(args.is_splits, args.is_shuffle, args.bootstrap)
        exact = runs.get("exact")
        methods = {}
        for s in specs:
            inputs = RowInputs(runs[s.label], exact, ref_mu, ref_sigma, ctx.device, s.is_exact,
                               bool(attention_info(s.attention)["published"]), protocol)
            methods[s.label] = method_row(inputs)
        config = {
            "model": args.model, "resolution": G.resolution, "num_samples": n,
            "batch_size": args.batch_size, "shard_size": args.shard_size, "truncation": args.truncation,
            "classes": "all" if len(classes) == G.num_classes else classes, "class_order": args.class_order,
            "per_class": args.per_class, "latents": args.latents, "seed": args.seed,
            "device": str(ctx.device), "dtype": args.dtype, "world_size": ctx.world_size,
            "ref_stats": ref_source, "ref_images_protocol": CROP_PROTOCOL if args.ref_images else None,
            "inception_weights": inception_id, "inception_input": input_mode,
            "inception_score": {"splits": args.is_splits, "shuffled": args.is_shuffle,
                                "shuffle_seed": 2020 if args.is_shuffle else None},
            "bootstrap": {"resamples": args.bootstrap, "seed": protocol.bootstrap_seed, "interval": "95% percentile",
                          "paired": "the same resampled image sets for every method"},
            "frechet": "exact value without offset; fid_eps records pytorch-fid's fallback offset when it was needed",
            "budgets": args.budget,
            "attention": {
                s.label: {"backend": s.attention, "kwargs": s.kwargs, "published": methods[s.label]["published"],
                          "resolved": resolved[s.label][0] if len(resolved[s.label]) == 1 else resolved[s.label],
                          "generated_this_run": runs[s.label].generated}
                for s in specs
            },
        }
        budgets = {s.label: (s.attention, s.kwargs["budget"]) for s in specs if "budget" in s.kwargs}
        try:
            written, plot_error = write_results(out, methods, config, budgets)
        except OSError as err:
            raise ValueError(f"cannot write the results in {out}: {err.strerror or err}; the feature shards in {cache} "
                             f"are kept, so a re-run only recomputes the metrics") from None
        print(text_table(methods))
        for s in specs:
            n_gen = runs[s.label].generated
            print(f"{s.label}: {n_gen} images generated, {n - n_gen} from the cache")
        print("wrote " + ", ".join(str(p) for p in written))
        if plot_error:
            print(f"warning: {plot_error}", file=sys.stderr)
        return 0
    finally:
        if lock is not None:
            lock.release()
        shutdown(ctx)


def main(argv: list[str] | None = None) -> int:
    try:
        return run(build_parser().parse_args(argv))
    except USER_ERRORS as err:
        return report_error(err)
    except OSError as err:  # a write that failed outside the shard loop (permissions, full disk)
        where = f" {err.filename}" if getattr(err, "filename", None) else ""
        return report_error(ValueError(f"cannot write{where}: {err.strerror or err}"))


if __name__ == "__main__":
    sys.exit(main())
