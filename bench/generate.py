"""Generation throughput: ours vs pytorch-pretrained-biggan on the same random BigGAN-deep checkpoint.

    python bench/generate.py                      # full-size biggan-deep-128, fp32 CPU, exact attention, batch 8
    python bench/generate.py --compile --attn scatterbrain-meanfield   # + our generator under torch.compile

Both models load the same files and see the same latents; timed batches alternate between them so
load from other processes on a shared CPU hits both alike. Prints a markdown table.
"""
from __future__ import annotations

import os
import platform
import sys
import tempfile
from pathlib import Path

import torch

from bench.harness import count, wall_and_cpu
from common.cli import OneLineParser, parse_truncation, report_error
from common.devices import check_compile_backend


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", default="8")
    parser.add_argument("--batches", default="3", help="timed batches per model (after one warm-up each)")
    parser.add_argument("--resolution", type=int, default=128, choices=(128, 256, 512))
    parser.add_argument("--channel-width", default="128", help="128 is the published size")
    parser.add_argument("--truncation", type=float, default=0.4)
    parser.add_argument("--threads", default=str(os.cpu_count()), help="torch.set_num_threads")
    parser.add_argument("--attn", default="exact", help="our generator's attention backend (the reference: exact)")
    parser.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                        help="also time our generator compiled with this torch.compile backend (default inductor)")
    try:
        args = parser.parse_args(argv)
        batch_size, batches = count(args.batch_size, "--batch-size"), count(args.batches, "--batches")
        width, threads = count(args.channel_width, "--channel-width"), count(args.threads, "--threads")
        parse_truncation(args.truncation, "--truncation")
        check_compile_backend(args.compile)
        from gan.attention import build_attention

        build_attention(args.attn)  # an unknown backend: one line now, not after the checkpoint is written
    except ValueError as err:
        return report_error(err)

    from pytorch_pretrained_biggan import BigGAN

    from gan.sampling import one_hot, per_image_latents
    from weights import load_generator, write_random_checkpoint

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_random_checkpoint(
            Path(tmp) / "deep", output_dim=args.resolution, channel_width=width, seed=0
        )
        ours = load_generator(folder, attention=args.attn, device="cpu").eval()
        reference = BigGAN.from_pretrained(str(folder)).eval()
        compiled = load_generator(folder, attention=args.attn, device="cpu").eval() if args.compile else None

    z = per_image_latents(range(batch_size), ours.z_dim, args.truncation, seed=0)
    class_ids = torch.arange(batch_size) * 97 % ours.num_classes
    labels = one_hot(class_ids, ours.num_classes)

    def run_ours() -> torch.Tensor:
        return ours.generate(z, class_ids, args.truncation)

    def run_reference() -> torch.Tensor:
        with torch.no_grad():
            return reference(z, labels, args.truncation)

    mine = run_ours()
    max_diff = (mine - run_reference()).abs().max().item()  # also the warm-up
    contestants = {f"biggan-attn ({args.attn})": run_ours, "pytorch-pretrained-biggan (exact)": run_reference}
    compile_note = ""
    if compiled is not None:
        compiled.compile(backend=args.compile)
        seconds, _, first = wall_and_cpu(lambda: compiled.generate(z, class_ids, args.truncation))  # compiles
        compile_note = (f"; compiled ({args.compile}): first batch {seconds:.1f} s (compilation), "
                        f"max abs diff to eager {(first - mine).abs().max().item():.2e}")
        contestants[f"biggan-attn ({args.attn}), torch.compile {args.compile}"] = (
            lambda: compiled.generate(z, class_ids, args.truncation))
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in contestants}
    for _ in range(batches):  # interleaved: load from other processes hits every contestant alike
        for name, fn in contestants.items():
            times[name].append(wall_and_cpu(fn)[:2])

    print(
        f"BigGAN-deep-{args.resolution} (channel_width {width}, random weights), "
        "fp32 CPU, "
        f"batch {batch_size}, truncation {args.truncation}, {threads} thread(s), torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}; {batches} timed batches after 1 warm-up; "
        f"max abs diff ours vs pytorch-pretrained-biggan: {max_diff:.2e}{compile_note}\n"
    )
    print("| implementation | images/s (median batch) | s/batch median | s/batch min | CPU s/batch median |")
    print("|---|---:|---:|---:|---:|")
    for name, samples in times.items():
        wall = sorted(w for w, _ in samples)
        cpu = sorted(c for _, c in samples)
        median, cpu_median = wall[len(wall) // 2], cpu[len(cpu) // 2]
        print(f"| {name} | {batch_size / median:.2f} | {median:.3f} | {wall[0]:.3f} | {cpu_median:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
