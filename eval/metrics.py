"""The results table: one ``Metric`` per column (name, report format, definition, how it is computed).

``METRICS`` drives both a method's row (``method_row``) and every report format (``eval/report.py``):
adding a metric is one entry here. Shared work (statistics, Frechet distances, the bootstrap) is done
once per row by ``RowInputs``'s cached properties.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from .features import MethodFeatures
from .frechet import FrechetResult, feature_statistics, frechet
from .inception_score import inception_score


@dataclass(frozen=True)
class ScoreProtocol:
    """How IS and the confidence intervals are computed (recorded in results.json)."""

    is_splits: int = 10
    is_shuffle: bool = False
    bootstrap: int = 100  # resamples for the 95% intervals; 0 turns them off
    bootstrap_seed: int = 0


class RowInputs:
    """One method's features, the exact run's, the reference statistics; each derived value computed once."""

    def __init__(self, run: MethodFeatures, exact: MethodFeatures | None, ref_mu, ref_sigma, device: torch.device,
                 is_exact: bool, published: bool, protocol: ScoreProtocol):
        self.run, self.exact, self.device, self.is_exact, self.published = run, exact, device, is_exact, published
        self.ref_mu, self.ref_sigma, self.protocol = ref_mu, ref_sigma, protocol

    @cached_property
    def stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        return feature_statistics(self.run.features.to(self.device))

    @cached_property
    def fid(self) -> FrechetResult:
        return frechet(*self.stats, self.ref_mu, self.ref_sigma, device=self.device)

    @cached_property
    def fid_to_exact(self) -> float | None:
        if self.exact is None:
            return None
        return frechet(*self.stats, *feature_statistics(self.exact.features.to(self.device)), device=self.device).value

    @cached_property
    def inception_score(self) -> tuple[float, float]:
        return inception_score(self.run.logits.to(self.device), self.protocol.is_splits, self.protocol.is_shuffle)

    @cached_property
    def intervals(self) -> dict[str, tuple[float, float] | None]:
        """95% percentile bootstrap intervals of FID and IS; resampled image sets are the same for every method."""
        b = self.protocol.bootstrap
        if b <= 0:
            return {"fid": None, "is": None}
        n = self.run.features.shape[0]
        gen = torch.Generator().manual_seed(self.protocol.bootstrap_seed)
        draws = torch.randint(n, (b, n), generator=gen)  # (b, N) image indices, paired across methods
        feats, logits = self.run.features.to(self.device), self.run.logits.to(self.device)
        fids, scores = [], []
        for idx in draws.to(self.device):
            fids.append(frechet(*feature_statistics(feats[idx]), self.ref_mu, self.ref_sigma, device=self.device).value)
            scores.append(inception_score(logits[idx], self.protocol.is_splits, self.protocol.is_shuffle)[0])

        def ci(values: list[float]) -> tuple[float, float]:
            low, high = np.percentile(np.asarray(values), [2.5, 97.5])
            return float(low), float(high)

        return {"fid": ci(fids), "is": ci(scores)}

    @cached_property
    def speed(self) -> dict[str, float | None]:
        """attn_share, attn_speedup and gen_speedup of this method (speed-ups against the exact run)."""
        return speed_metrics(_timing(self.run), None if self.exact is None else _timing(self.exact))

    @cached_property
    def top1_changed(self) -> float | None:
        if self.is_exact:
            return 0.0
        if self.exact is None:
            return None
        return float((self.run.logits.argmax(1) != self.exact.logits.argmax(1)).double().mean())


@dataclass(frozen=True)
class Metric:
    name: str
    fmt: str  # str.format pattern of the reports; None values print as "-"
    doc: str
    value: Callable[[RowInputs], float | int | bool | None]


@dataclass(frozen=True)
class GeneratorTiming:
    """A method's timed generator forward passes: what the speed metrics are computed from."""

    images: int
    gen_seconds: float  # the forward passes, the probe's exact reference excluded
    attn_seconds: float  # the backend's attention calls, timed within those passes
    attn_calls: int


def speed_metrics(run: GeneratorTiming, exact: GeneratorTiming | None) -> dict[str, float | None]:
    """{"attn_share", "attn_speedup", "gen_speedup"} of ``run``; the speed-ups are None without ``exact``
    (> 1: faster than exact)."""
    def per_call(t: GeneratorTiming) -> float:
        return t.attn_seconds / max(t.attn_calls, 1)

    def per_image(t: GeneratorTiming) -> float:
        return t.gen_seconds / max(t.images, 1)

    return {
        "attn_share": run.attn_seconds / run.gen_seconds if run.gen_seconds > 0 else None,
        "attn_speedup": None if exact is None else _speedup(per_call(exact), per_call(run)),
        "gen_speedup": None if exact is None else _speedup(per_image(exact), per_image(run)),
    }


def _timing(run: MethodFeatures) -> GeneratorTiming:
    return GeneratorTiming(int(run.features.shape[0]), run.gen_seconds, run.attn_seconds, run.attn_calls)


def _speedup(exact_seconds: float, seconds: float) -> float | None:
    return exact_seconds / seconds if seconds > 0 else None


def _ci(key: str, end: int) -> Callable[[RowInputs], float | None]:
    return lambda r: None if r.intervals[key] is None else r.intervals[key][end]


METRICS: tuple[Metric, ...] = (
    Metric("published", "{}", "the backend is a published algorithm (attention_info(name)['published'])",
           lambda r: r.published),
    Metric("fid", "{:.3f}", "Frechet distance to the reference statistics", lambda r: r.fid.value),
    Metric("fid_ci_low", "{:.3f}", "2.5th percentile of FID over bootstrap resamples of the images", _ci("fid", 0)),
    Metric("fid_ci_high", "{:.3f}", "97.5th percentile of FID over bootstrap resamples", _ci("fid", 1)),
    Metric("fid_to_exact", "{:.3f}",
           "paired FID between this method's and exact attention's features on the same latents",
           lambda r: r.fid_to_exact),
    Metric("fid_eps", "{:g}", "pytorch-fid's offset when the exact Frechet distance was not computable, else null",
           lambda r: r.fid.eps),
    Metric("is_mean", "{:.3f}", "Inception Score, mean over splits", lambda r: r.inception_score[0]),
    Metric("is_std", "{:.3f}", "Inception Score, population std over splits", lambda r: r.inception_score[1]),
    Metric("is_ci_low", "{:.3f}", "2.5th percentile of the IS mean over bootstrap resamples", _ci("is", 0)),
    Metric("is_ci_high", "{:.3f}", "97.5th percentile of the IS mean over bootstrap resamples", _ci("is", 1)),
    Metric("attn_rel_error", "{:.4f}",
           "mean per-image ||o - e||_F / ||e||_F against exact attention on the same q, k, v",
           lambda r: 0.0 if r.is_exact else float(r.run.attn_error.mean())),
    Metric("top1_changed", "{:.4f}", "fraction of images whose top-1 Inception class differs from exact's",
           lambda r: r.top1_changed),
    Metric("images_per_s", "{:.2f}", "images / time in the generator (Inception and probe excluded)",
           lambda r: r.run.features.shape[0] / r.run.gen_seconds),
    Metric("attn_ms", "{:.3f}", "backend time per attention call",
           lambda r: 1000.0 * r.run.attn_seconds / max(r.run.attn_calls, 1)),
    Metric("attn_share", "{:.3f}", "share of the generator's time spent in attention calls",
           lambda r: r.speed["attn_share"]),
    Metric("attn_speedup", "{:.2f}", "exact attention's time per call / this backend's (> 1: faster than exact)",
           lambda r: r.speed["attn_speedup"]),
    Metric("gen_speedup", "{:.2f}", "exact's generator time per image / this method's: the end-to-end speed-up",
           lambda r: r.speed["gen_speedup"]),
    Metric("attn_peak_mb", "{:.2f}", "peak memory of one backend call (GPU) or its score/feature entries (CPU)",
           lambda r: r.run.attn_peak_bytes / 2**20),
    Metric("n", "{}", "images evaluated", lambda r: int(r.run.features.shape[0])),
)
METRIC_NAMES = tuple(m.name for m in METRICS)


def method_row(inputs: RowInputs) -> dict[str, float | int | bool | None]:
    """One value per entry of ``METRICS``, in table order."""
    return {m.name: m.value(inputs) for m in METRICS}
