"""Generation throughput: ours vs pytorch-pretrained-biggan on the same random BigGAN-deep checkpoint.

    python bench/generate.py                      # full-size biggan-deep-128, fp32 CPU, exact attention, batch 8

Both models load the same files and see the same latents; timed batches alternate between them so
load from other processes on a shared CPU hits both alike. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch


def _time(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call; CPU time is less disturbed by other processes."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=3, help="timed batches per model (after one warm-up each)")
    parser.add_argument("--resolution", type=int, default=128, choices=(128, 256, 512))
    parser.add_argument("--channel-width", type=int, default=128, help="128 is the published size")
    parser.add_argument("--truncation", type=float, default=0.4)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.batches < 1 or args.threads < 1:
        print("error: --batch-size, --batches and --threads must be >= 1", file=sys.stderr)
        return 2

    from pytorch_pretrained_biggan import BigGAN

    from gan.sampling import one_hot, per_image_latents
    from weights import load_generator, write_random_checkpoint

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_random_checkpoint(
            Path(tmp) / "deep", output_dim=args.resolution, channel_width=args.channel_width, seed=0
        )
        ours = load_generator(folder, attention="exact", device="cpu")
        reference = BigGAN.from_pretrained(str(folder)).eval()

    z = per_image_latents(range(args.batch_size), ours.z_dim, args.truncation, seed=0)
    class_ids = torch.arange(args.batch_size) * 97 % ours.num_classes
    labels = one_hot(class_ids, ours.num_classes)

    def run_ours() -> torch.Tensor:
        return ours.generate(z, class_ids, args.truncation)

    def run_reference() -> torch.Tensor:
        with torch.no_grad():
            return reference(z, labels, args.truncation)

    max_diff = (run_ours() - run_reference()).abs().max().item()  # also the warm-up
    times: dict[str, list[tuple[float, float]]] = {"biggan-attn": [], "pytorch-pretrained-biggan": []}
    for _ in range(args.batches):
        times["biggan-attn"].append(_time(run_ours))
        times["pytorch-pretrained-biggan"].append(_time(run_reference))

    print(
        f"BigGAN-deep-{args.resolution} (channel_width {args.channel_width}, random weights), "
        "fp32 CPU, exact attention, "
        f"batch {args.batch_size}, truncation {args.truncation}, {args.threads} thread(s), torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}; {args.batches} timed batches after 1 warm-up; "
        f"max abs diff between the two: {max_diff:.2e}\n"
    )
    print("| implementation | images/s (median batch) | s/batch median | s/batch min | CPU s/batch median |")
    print("|---|---:|---:|---:|---:|")
    for name, samples in times.items():
        wall = sorted(w for w, _ in samples)
        cpu = sorted(c for _, c in samples)
        median, cpu_median = wall[len(wall) // 2], cpu[len(cpu) // 2]
        print(f"| {name} | {args.batch_size / median:.2f} | {median:.3f} | {wall[0]:.3f} | {cpu_median:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
