"""What the bench scripts share: their option parsers, the exact reference and error, timing and peak memory.

Parsers raise ``ValueError`` naming the option and what it accepts; each script's ``main`` reports it
with ``common.cli.report_error`` (one line, exit code 2). Errors are ||o - o_exact|| / ||o_exact||
against float64 exact attention at scale 1 (BigGAN's attention has no 1/sqrt(d)).
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from common.cli import parse_budget

MEMORY_EVENT = "[memory]"  # name of the profiler's allocation / free records


def split(text: str) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c']."""
    return [part.strip() for part in text.split(",") if part.strip()]


def choices(text: str, accepted: Sequence[str], what: str) -> list[str]:
    """Comma-separated names, each one of ``accepted``; ``what`` names them in the error (e.g. 'regime(s)')."""
    items = split(text)
    unknown = [item for item in items if item not in accepted]
    if unknown or not items:
        raise ValueError(f"unknown {what} {', '.join(unknown) or '(none given)'}; accepted: {', '.join(accepted)}")
    return items


def budgets(text: str, option: str = "--budgets") -> list[Fraction]:
    """'1/32,0.125' -> [1/32, 1/8]: fractions in (0, 1] of the dense score matrix (``common.cli.parse_budget``)."""
    values = []
    for item in split(text):
        parse_budget(item, option)  # ValueError unless a fraction in (0, 1]
        values.append(Fraction(item))
    if not values:
        raise ValueError(f"{option} takes fractions in (0, 1] like 1/8 or 0.125, got nothing")
    return values


def counts(text: str, option: str, least: int = 0) -> list[int]:
    """'0,1,2' -> [0, 1, 2]: one or more integers >= ``least`` (seeds, repeats: 0; sizes: 1)."""
    items = split(text)
    if not items or not all(item.isdigit() and int(item) >= least for item in items):
        kind = "non-negative integers" if least == 0 else f"integers >= {least}"
        raise ValueError(f"{option} takes comma-separated {kind}, got {text!r}")
    return [int(item) for item in items]


def count(text: str | int, option: str, least: int = 1) -> int:
    """One integer >= ``least`` (threads, repeats)."""
    item = str(text).strip()
    if not item.isdigit() or int(item) < least:
        raise ValueError(f"{option} takes one integer >= {least}, got {text!r}")
    return int(item)


def add_sweep_options(parser: argparse.ArgumentParser, budgets: str = "1/32,1/8,1/4", seeds: str = "0,1,2",
                      threads: str = "2") -> None:
    """--budgets, --seeds and --threads, as every sweep over budgets and seeds takes them (read by ``sweep``)."""
    parser.add_argument("--budgets", default=budgets, help="comma-separated fractions of the dense score matrix "
                        "(default: %(default)s)")
    parser.add_argument("--seeds", default=seeds, help="comma-separated seeds of the inputs and of every backend "
                        "(default: %(default)s)")
    parser.add_argument("--threads", default=threads, help="torch.set_num_threads (default: %(default)s)")


def sweep(args: argparse.Namespace) -> tuple[list[Fraction], list[int], int]:
    """(budgets, seeds, threads) from the options of ``add_sweep_options``."""
    return budgets(args.budgets), counts(args.seeds, "--seeds"), count(args.threads, "--threads")


def exact_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T) v in float64 on the inputs' device: q (B,Nq,d), k (B,Nk,d), v (B,Nk,dv) -> (B,Nq,dv)."""
    return torch.softmax(q.double() @ k.double().transpose(1, 2), -1) @ v.double()


def mean_of_values(v: torch.Tensor, nq: int) -> torch.Tensor:
    """(B, Nq, dv): every query outputs mean(v), the baseline an approximation has to beat."""
    return v.mean(1, keepdim=True).expand(-1, nq, -1)


def relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    """||out - reference|| / ||reference|| in float64 on the reference's device."""
    out = out.to(device=reference.device, dtype=torch.float64)
    return float((out - reference).norm() / reference.norm())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_call(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(output, wall ms) of one call at scale 1, CUDA synchronised on both sides."""
    synchronize(q.device)
    start = time.perf_counter()
    out = attn(q, k, v, scale=1.0)
    synchronize(q.device)
    return out, (time.perf_counter() - start) * 1e3


def time_calls(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, repeats: int) -> list[float]:
    """Wall time in ms of ``repeats`` calls."""
    return [timed_call(attn, q, k, v)[1] for _ in range(repeats)]


def wall_and_cpu(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall s, process CPU s, value) of one call; CPU time is less disturbed by other processes on the machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, value


def call_with_peak_memory(
    attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, float, int | None]:
    """(output, wall ms, peak bytes allocated during the call beyond what was live before it, or None if
    unmeasurable)."""
    if q.device.type == "cuda":
        torch.cuda.synchronize(q.device)
        torch.cuda.reset_peak_memory_stats(q.device)
        before = torch.cuda.memory_allocated(q.device)
        out, ms = timed_call(attn, q, k, v)
        return out, ms, torch.cuda.max_memory_allocated(q.device) - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out, ms = timed_call(attn, q, k, v)
    return out, ms, peak_live_bytes(prof)


def peak_live_bytes(prof: profile) -> int | None:
    """Peak of the running sum of the profiler's allocation (+bytes) and free (-bytes) records, in time order.

    Reads the ``[memory]`` records that torch.autograd.profiler itself builds its memory columns
    from (a private interface, stable across torch 2.x); None if a torch version lacks it.
    """
    try:
        events = prof.profiler.kineto_results.events()
        records = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == MEMORY_EVENT)
    except AttributeError:
        return None
    live = peak = 0
    for _, nbytes in records:
        live += nbytes
        peak = max(peak, live)
    return peak
