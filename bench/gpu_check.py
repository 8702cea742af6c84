"""First-GPU check: tests, reduced-precision parity of every backend and the generator, main-job throughput.

    python bench/gpu_check.py                          # on one GPU, a few minutes; writes gpu_check/
    python bench/gpu_check.py --device cpu --quick     # tiny shapes on the CPU, seconds (run in CI)

Steps (each recorded with its status in ``gpu_check.json`` and a row of ``gpu_check.md``):

1. ``tests``: the test files that exercise devices, dtypes and the evaluator (skipped with ``--quick``);
2. ``pipeline``: ``eval/fid.py`` end to end on the device (tiny random generator and Inception); on a
   GPU its FID / IS / attention error agree with a CPU run of the same latents;
3. ``attention``: every backend of ``available_attentions()`` in fp16 and bf16 against its fp32
   self, at BigGAN-deep-128's shape (B=2, 4096 queries, 1024 keys, d=32, dv=128): finite, and its
   error against exact fp32 attention at most ``DTYPE_SLACK`` above the fp32 backend's;
4. ``generator``: BigGAN-deep-128 (random weights) in fp16 and bf16 against fp32 on the same latents;
5. ``throughput``: BigGAN-deep-128 random weights, batch 64, exact and smyrf: generation images/s,
   Inception images/s, attention ms per call and peak memory;
6. ``backends``: every backend alone at batch 64, 4096 x 1024 (fp32, default budget): GPU ms per forward
   (after warm-up), the host syncs of one steady-state forward (``torch.cuda.set_sync_debug_mode``), and
   whether the forward can be captured as a CUDA graph (``torch.cuda.CUDAGraph``, shapes static) and
   replayed to the eager output, or why not.

With ``--quick`` every shape is tiny (1/16-width generator, 1/16-width Inception, batch 4). Exit code 1
when a check fails.
"""
from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TEST_FILES = ["tests/test_attention_registry.py", "tests/test_attention_block.py", "tests/test_eval_probe.py",
              "tests/test_eval_inception.py", "tests/test_eval_frechet.py", "tests/test_eval_cli.py",
              "tests/test_biggan_deep.py"]
DTYPE_SLACK = {torch.float16: 0.02, torch.bfloat16: 0.05}  # allowed rise of the error against exact fp32 attention
GENERATOR_TOL = {torch.float16: 0.05, torch.bfloat16: 0.1}  # relative image difference against fp32
LOW_PRECISION = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def check_tests(quick: bool) -> dict:
    if quick:
        return {"status": "skipped", "detail": "--quick"}
    # -o addopts= : in this one process (the GPU), without pytest-xdist's workers
    cmd = [sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-x", "-p", "no:cacheprovider", *TEST_FILES]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    tail = (proc.stdout.strip().splitlines() or [""])[-1]
    return {"status": "ok" if proc.returncode == 0 else "FAIL", "detail": tail, "command": " ".join(cmd[1:])}


def check_pipeline(device: torch.device, quick: bool, tmp: Path) -> dict:
    """eval/fid.py on ``device`` with tiny random assets; on a GPU, compared with the same run on the CPU."""
    import numpy as np

    from eval.fid import main as fid_main
    from eval.inception import random_inception_state
    from weights import write_random_checkpoint

    model = write_random_checkpoint(tmp / "tiny-deep", seed=0, channel_width=8)
    torch.save(random_inception_state(1 / 16, seed=0), tmp / "inception.pth")
    feats = np.random.default_rng(0).normal(size=(400, 128))
    np.savez(tmp / "ref.npz", mu=feats.mean(0), sigma=np.cov(feats, rowvar=False))
    n = "4" if quick else "16"
    common = ["--model", str(model), "--attn", "exact,smyrf", "--num-samples", n, "--batch-size", "4",
              "--shard-size", "8", "--is-splits", "2", "--bootstrap", "0", "--inception-weights",
              str(tmp / "inception.pth"), "--ref-stats", str(tmp / "ref.npz")]
    devices = [device] if device.type == "cpu" else [device, torch.device("cpu")]
    results = {}
    for dev in devices:
        out = tmp / f"fid-{dev.type}"
        code = fid_main([*common, "--device", str(dev), "--out", str(out)])
        if code != 0:
            return {"status": "FAIL", "detail": f"eval/fid.py on {dev} exited {code}"}
        results[dev.type] = json.loads((out / "results.json").read_text())["methods"]
    keys = ("fid", "is_mean", "attn_rel_error")
    detail = {label: {k: row[k] for k in keys} for label, row in results[device.type].items()}
    status = "ok"
    if "cpu" in results and device.type != "cpu":
        for label, row in results[device.type].items():
            for key in ("fid", "is_mean", "attn_rel_error"):
                ref = results["cpu"][label][key]
                if abs(row[key] - ref) > 1e-3 * max(abs(ref), 1.0):
                    status = "FAIL"
                detail[label][f"{key}_cpu"] = ref
    return {"status": status, "detail": detail}


def check_attention(device: torch.device, quick: bool) -> dict:
    from gan.attention import available_attentions, build_attention

    b, nq, nk, d, dv = (1, 256, 64, 8, 16) if quick else (2, 4096, 1024, 32, 128)
    gen = torch.Generator().manual_seed(0)
    q = (torch.randn(b, nq, d, generator=gen) * d ** -0.25).to(device)  # logits of unit spread, no 1/sqrt(d)
    k = (torch.randn(b, nk, d, generator=gen) * d ** -0.25).to(device)
    v = torch.randn(b, nk, dv, generator=gen).to(device)
    exact = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=1.0)
    rows, status = [], "ok"
    for name in available_attentions():
        backend = build_attention(name, seed=0)
        try:
            ref = backend(q, k, v, scale=1.0)
            base_err = _rel(ref, exact)
            for label, dtype in LOW_PRECISION.items():
                out = backend(q.to(dtype), k.to(dtype), v.to(dtype), scale=1.0)
                finite = bool(torch.isfinite(out).all())
                err = _rel(out, exact) if finite else float("inf")
                ok = finite and out.dtype == dtype and err <= base_err + DTYPE_SLACK[dtype]
                status = status if ok else "FAIL"
                rows.append({"backend": name, "dtype": label, "ok": ok, "finite": finite, "error_vs_exact": err,
                             "fp32_error_vs_exact": base_err, "vs_fp32": _rel(out, ref) if finite else None})
        except Exception as err:  # noqa: BLE001 - a backend that cannot run in a dtype is a finding, not a crash
            status = "FAIL"
            rows.append({"backend": name, "ok": False, "error": f"{type(err).__name__}: {err}"})
    return {"status": status, "shape": {"B": b, "nq": nq, "nk": nk, "d": d, "dv": dv}, "detail": rows}


def _generator(tmp: Path, quick: bool, device: torch.device, dtype: str):
    from weights import load_generator, write_random_checkpoint

    path = tmp / ("gen-tiny" if quick else "gen-128")
    if not path.exists():
        write_random_checkpoint(path, seed=0, **({"channel_width": 8} if quick else {}))
    return load_generator(path, attention="exact", device=device, dtype=dtype)


def check_generator(device: torch.device, quick: bool, tmp: Path) -> dict:
    batch = 2 if quick else 8
    idx = torch.arange(batch)
    classes = idx * 97 % 1000
    G = _generator(tmp, quick, device, "fp32")
    ref = G.sample(idx, classes, truncation=0.4, seed=0)
    rows, status = [], "ok"
    for label, dtype in LOW_PRECISION.items():
        try:
            low = _generator(tmp, quick, device, label)  # loaded in fp32, cast once (never fp16 -> bf16)
            out = low.sample(idx, classes, truncation=0.4, seed=0)
            del low
            finite = bool(torch.isfinite(out).all())
            diff = _rel(out, ref) if finite else float("inf")
            ok = finite and diff <= GENERATOR_TOL[dtype]
            rows.append({"dtype": label, "ok": ok, "finite": finite, "rel_diff_vs_fp32": diff})
        except Exception as err:  # noqa: BLE001
            ok = False
            rows.append({"dtype": label, "ok": False, "error": f"{type(err).__name__}: {err}"})
        status = status if ok else "FAIL"
    return {"status": status, "batch": batch, "detail": rows}


@torch.no_grad()
def check_throughput(device: torch.device, quick: bool, tmp: Path) -> dict:
    from common.images import quantize
    from eval.attention_probe import AttentionProbe, probed
    from eval.inception import FIDInception, random_inception_state

    batch, repeats = (4, 1) if quick else (64, 5)
    G = _generator(tmp, quick, device, "fp32")
    width = 1 / 16 if quick else 1.0
    inception = FIDInception(width, input_mode="tf")
    inception.load_state_dict(random_inception_state(width, seed=0), strict=False)
    inception = inception.eval().requires_grad_(False).to(device)
    rows = []
    for name in ("exact", "smyrf"):
        G.set_attention(name, seed=0)
        idx = torch.arange(batch)
        classes = idx % 1000
        images = G.sample(idx, classes, truncation=1.0, seed=0)  # warm-up (kernels, allocator)
        inception(quantize(images))
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        probe = AttentionProbe(measure_error=False)
        gen_s = inc_s = 0.0
        with probed(G, probe):
            for r in range(repeats):
                idx = torch.arange(r * batch, (r + 1) * batch)
                t0 = time.perf_counter()
                images = G.sample(idx, idx % 1000, truncation=1.0, seed=0)
                _sync(device)
                t1 = time.perf_counter()
                inception(quantize(images))
                _sync(device)
                gen_s, inc_s = gen_s + t1 - t0, inc_s + time.perf_counter() - t1
                probe.flush()
        rows.append({
            "backend": name, "batch": batch, "batches": repeats,
            "generation_images_per_s": batch * repeats / gen_s,
            "inception_images_per_s": batch * repeats / inc_s,
            "attn_ms": 1000.0 * probe.seconds / max(probe.calls, 1),
            "attn_peak_mb": probe.peak_bytes / 2**20,
            "peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        })
    return {"status": "ok", "model": "biggan-deep-128 (random weights)" + (", 1/16 width" if quick else ""),
            "detail": rows}


def _steady_syncs(backend, q, k, v) -> int:
    """Synchronising CUDA calls made by one forward (torch's sync debug mode warns once per call)."""
    import warnings

    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            backend(q, k, v, scale=1.0)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def _capture(backend, q, k, v) -> str:
    """'captured' when one forward is captured as a CUDA graph and its replay gives the eager output; else why not."""
    eager = backend(q, k, v, scale=1.0)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up on a side stream, as torch.cuda.graphs asks
        backend(q, k, v, scale=1.0)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            static_out = backend(q, k, v, scale=1.0)
        graph.replay()
        torch.cuda.synchronize()
    except Exception as err:  # noqa: BLE001 - the reason is the finding
        torch.cuda.synchronize()
        return f"not captured: {type(err).__name__}: {str(err).strip().splitlines()[0][:160]}"
    diff = _rel(static_out, eager)
    return "captured" if diff <= 1e-5 else f"captured, but the replay differs from eager by {diff:.1e}"


@torch.no_grad()
def check_backends(device: torch.device, quick: bool) -> dict:
    """Every backend alone at batch 64 (4096 x 1024): GPU ms per forward, steady-state syncs, CUDA-graph capture."""
    from gan.attention import available_attentions, build_attention

    b, nq, nk, d, dv = (2, 256, 64, 8, 16) if quick else (64, 4096, 1024, 32, 128)
    repeats = 2 if quick else 10
    gen = torch.Generator().manual_seed(0)
    q = (torch.randn(b, nq, d, generator=gen) * d ** -0.25).to(device)
    k = (torch.randn(b, nk, d, generator=gen) * d ** -0.25).to(device)
    v = torch.randn(b, nk, dv, generator=gen).to(device)
    rows, status, backends = [], "ok", {}
    for name in available_attentions():
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        try:
            backend = backends[name] = build_attention(name, seed=0)
            backend(q, k, v, scale=1.0)  # plans and draws for this shape
            backend(q, k, v, scale=1.0)
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(repeats):
                backend(q, k, v, scale=1.0)
            _sync(device)
            row = {"backend": name, "batch": b, "ms_per_forward": 1000.0 * (time.perf_counter() - t0) / repeats}
            if device.type == "cuda":
                row["syncs"] = _steady_syncs(backend, q, k, v)
                row["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20  # inputs included
            rows.append(row)
        except Exception as err:  # noqa: BLE001 - e.g. out of memory at batch 64: a finding
            status = "FAIL"
            rows.append({"backend": name, "batch": b, "error": f"{type(err).__name__}: {err}"[:300]})
    # Captures last: a failed capture can leave the device unusable for the rest of the step.
    for row in rows:
        if "error" in row:
            continue
        if device.type != "cuda":
            row["cuda_graph"] = "skipped (needs CUDA)"
            continue
        try:
            row["cuda_graph"] = _capture(backends[row["backend"]], q, k, v)
        except Exception as err:  # noqa: BLE001
            row["cuda_graph"] = f"not captured: {type(err).__name__}: {err}"[:200]
    return {"status": status, "shape": {"B": b, "nq": nq, "nk": nk, "d": d, "dv": dv}, "detail": rows}


def markdown(report: dict) -> str:
    lines = [f"# GPU check on {report['device']} ({report['device_name']}){' --quick' if report['quick'] else ''}", "",
             "| step | status | seconds |", "|---|---|---|"]
    lines += [f"| {name} | {step['status']} | {step['seconds']:.1f} |" for name, step in report["steps"].items()]
    attention = report["steps"].get("attention", {}).get("detail", [])
    if attention:
        lines += ["", "| backend | dtype | ok | error vs exact | fp32 error vs exact | vs fp32 |",
                  "|---|---|---|---|---|---|"]
        for r in attention:
            if "error" in r:
                lines.append(f"| {r['backend']} | - | no | {r['error']} | | |")
            else:
                vs = "-" if r["vs_fp32"] is None else f"{r['vs_fp32']:.2e}"
                ok = "yes" if r["ok"] else "no"
                lines.append(f"| {r['backend']} | {r['dtype']} | {ok} | {r['error_vs_exact']:.2e} | "
                             f"{r['fp32_error_vs_exact']:.2e} | {vs} |")
    generator = report["steps"].get("generator", {}).get("detail", [])
    if generator:
        lines += ["", "| generator dtype | ok | rel. difference vs fp32 |", "|---|---|---|"]
        lines += [f"| {r['dtype']} | {'yes' if r['ok'] else 'no'} | {r.get('rel_diff_vs_fp32', r.get('error'))} |"
                  for r in generator]
    throughput = report["steps"].get("throughput", {}).get("detail", [])
    if throughput:
        lines += ["", "| backend | batch | generation img/s | Inception img/s | attention ms | attention peak MB "
                      "| peak MB |", "|---|---|---|---|---|---|---|"]
        for r in throughput:
            peak = "-" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}"
            lines.append(f"| {r['backend']} | {r['batch']} | {r['generation_images_per_s']:.1f} | "
                         f"{r['inception_images_per_s']:.1f} | {r['attn_ms']:.2f} | {r['attn_peak_mb']:.1f} | {peak} |")
    backends = report["steps"].get("backends", {}).get("detail", [])
    if backends:
        lines += ["", "| backend | batch | ms per forward | syncs | CUDA graph |", "|---|---|---|---|---|"]
        for r in backends:
            if "error" in r:
                lines.append(f"| {r['backend']} | {r['batch']} | {r['error']} | | |")
            else:
                lines.append(f"| {r['backend']} | {r['batch']} | {r['ms_per_forward']:.2f} | {r.get('syncs', '-')} | "
                             f"{r.get('cuda_graph', '-')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from common.cli import USER_ERRORS, OneLineParser, report_error
    from common.files import write_atomic

    p = OneLineParser(prog="bench/gpu_check.py", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny shapes, no test run (seconds on a CPU)")
    p.add_argument("--out", default="gpu_check", help="folder for gpu_check.json and gpu_check.md")
    try:
        args = p.parse_args(argv)
        from common.devices import resolve_device

        device = resolve_device(args.device)
    except USER_ERRORS as err:
        return report_error(err)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    report = {"device": str(device), "quick": args.quick, "python": platform.python_version(),
              "torch": torch.__version__, "device_name": name, "steps": {}}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp_name:
        tmp = Path(tmp_name)
        steps = {
            "tests": lambda: check_tests(args.quick),
            "pipeline": lambda: check_pipeline(device, args.quick, tmp),
            "attention": lambda: check_attention(device, args.quick),
            "generator": lambda: check_generator(device, args.quick, tmp),
            "throughput": lambda: check_throughput(device, args.quick, tmp),
            "backends": lambda: check_backends(device, args.quick),
        }
        for name, step in steps.items():
            t0 = time.perf_counter()
            try:
                result = step()
            except Exception as err:  # noqa: BLE001 - record the failure, run the remaining steps
                result = {"status": "FAIL", "detail": f"{type(err).__name__}: {err}",
                          "traceback": traceback.format_exc(limit=5)}
            result["seconds"] = time.perf_counter() - t0
            report["steps"][name] = result
            print(f"{name}: {result['status']} ({result['seconds']:.1f} s)", flush=True)
    out = Path(args.out)
    write_atomic(out / "gpu_check.json", lambda f: f.write(json.dumps(report, indent=2, default=str).encode()))
    write_atomic(out / "gpu_check.md", lambda f: f.write(markdown(report).encode()))
    print(f"wrote {out / 'gpu_check.json'}, {out / 'gpu_check.md'}")
    return 1 if any(s["status"] == "FAIL" for s in report["steps"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
