"""Scatterbrain with local attention (Chen et al., NeurIPS 2021): a sliding window plus low-rank SB features.

As HazyResearch/scatterbrain ``SBLocalAttention`` (src/models/attention/sblocal_attention.py) computes
it: the exact scores of each query's window of ``local_context`` keys are combined with the low-rank
estimate of Scatterbrain's feature map (``sb_features``) for all keys, with the low-rank part's own
window contribution subtracted so no pair is counted twice:

    f_ij    = phi_q(q_i) . phi_k(k_j),   c_i = exp(log_scale_i - log Z_i)
    log Z_i = logaddexp(lse_{j in W(i)} s q_i.k_j,  log(sum_j f_ij - sum_{j in W(i)} f_ij) + log_scale_i)
    out_i   = sum_{j in W(i)} (exp(s q_i.k_j - log Z_i) - f_ij c_i) v_j + c_i sum_j f_ij v_j

(the low-rank mass clamped at 1e-24)
with the window W(i) = {i - w//2, ..., i - w//2 + w - 1} clipped to [0, Nk) (fast-transformers'
``local_dot_product``). The features are drawn once and kept (the reference's ``SBPerformerFeatures``
never redraws); ``redraw=True`` draws fresh ones per call, as majid-daliri/kdeformer's BigGAN script
does by building the module inside ``forward``. A CPU generator seeded with s draws the projection
the reference draws after ``torch.manual_seed(s)``.

Nq != Nk: the published BigGAN experiments (microsoft/thinformer and majid-daliri/kdeformer,
``biggan_models/model_sblocal.py``) call the module on four chunks of 1024 queries against all 1024
keys and concatenate, so query t uses the window centred on position t mod Nk. This module does the
same for any shape, vectorised: queries are cut into consecutive chunks of Nk (the last may be
shorter) and query t's window is W(t mod Nk). Every chunk sees the same features and key log-scale,
so one pass over all queries equals the reference's chunk loop.

Memory: the window scores are computed block by block (w queries against the 2w keys their windows
span), so the exact and the feature window scores are held as two (Nq, 2w) tensors; the features are
(Nq + Nk) x m. ``score_entries`` counts exactly that.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange

from ..base import REDRAW, AttentionBackend, Parameter, positive_int
from ..parts.parameter_groups import SB_FEATURE_OPTIONS, SB_NUM_FEATURES
from ..parts.sb_features import sb_key_features, sb_projection, sb_query_features

FEATURES_PER_WINDOW_KEY = 4  # the BigGAN experiments' ratio of features to local_context: 128 / 32


class SBLocalAttention(AttentionBackend):
    """Scatterbrain-local: exact softmax on a window of ``local_context`` keys plus ``num_features`` SB features.

    From a budget (default 1/8): local_context = w, num_features = 4 w (the BigGAN experiments'
    32 / 128), the largest w with 4 Nq w + (Nq + Nk) 4 w <= budget Nq Nk. An explicit parameter
    overrides; the other then takes what the budget leaves. ``local_context=32, num_features=128``
    is the published BigGAN setting. ``ortho_scaling`` and ``softmax_eps`` are the reference's
    ``SBPerformerFeatures`` options (0 and 0.0 by default).
    """

    name = "sblocal"
    published = True
    paper = "Chen et al., NeurIPS 2021"
    variant_of = None

    local_context = Parameter(positive_int)
    num_features = SB_NUM_FEATURES
    ortho_scaling, softmax_eps = SB_FEATURE_OPTIONS
    redraw = REDRAW

    def parameters_for(self, nq: int, nk: int) -> tuple[int, int]:
        """(local_context, num_features) used for these shapes."""
        allowed = self.effective_budget * nq * nk
        window, features = self.local_context, self.num_features
        if window is None and features is None:
            window = max(1, math.floor(allowed / (4 * nq + FEATURES_PER_WINDOW_KEY * (nq + nk)) + 1e-9))
            features = FEATURES_PER_WINDOW_KEY * window
        elif window is None:
            window = max(1, math.floor((allowed - (nq + nk) * features) / (4 * nq) + 1e-9))
        elif features is None:
            features = max(2, math.floor((allowed - 4 * nq * window) / (nq + nk) + 1e-9))
        return window, features

    def projection(self, num_features: int, d: int, device) -> torch.Tensor:
        """(num_features // 2, d) fp32 projection: drawn once from ``seed``, or fresh per call with ``redraw``."""

        def draw(generator):
            return sb_projection(num_features, d, generator, scaling=self.ortho_scaling)

        return self.seeded_draws(("sb", num_features, d, self.ortho_scaling), device, draw)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        if scale <= 0:
            raise ValueError(f"sblocal attention needs scale > 0 (softmax kernel features), got {scale}")
        window, features = self.parameters_for(q.shape[1], k.shape[1])
        proj = self.projection(features, q.shape[2], q.device)
        return sblocal_attention(q, k, v, scale, window, proj, eps=self.softmax_eps).to(q.dtype)

    def score_entries(self, nq: int, nk: int, d: int) -> int:
        window, features = self.parameters_for(nq, nk)
        return 4 * nq * window + (nq + nk) * 2 * (features // 2)

    def resolve(self, nq: int, nk: int, d: int) -> dict[str, Any]:
        window, features = self.parameters_for(nq, nk)
        return {"local_context": window, "num_features": features, "redraw": self.redraw}


def sblocal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, window: int, proj: torch.Tensor, eps: float = 0.0
) -> torch.Tensor:
    """q (B, Nq, d), k (B, Nk, d), v (B, Nk, dv), proj (rows, d) -> (B, Nq, dv) fp32 (module docstring)."""
    batch, nq, nk = q.shape[0], q.shape[1], k.shape[1]
    qf, q_log_scale = sb_query_features(q, proj, scale, eps=eps)  # (B, Nq, m), (B, Nq, 1)
    kf, k_log_scale = sb_key_features(k, proj, scale, eps=eps)  # (B, Nk, m), (B, 1, 1)
    prime_log_scale = q_log_scale + k_log_scale  # (B, Nq, 1)
    v = v.float()
    key_sum = rearrange(kf.sum(dim=1), "b m -> b 1 1 m 1")  # sum_j phi_k(k_j)
    key_values = rearrange(torch.einsum("bnm,bne->bme", kf, v), "b m e -> b 1 1 m e")  # phi_k(K)^T V

    # Window blocks: local positions i = j w + a (j < nb blocks); their windows lie in padded keys [j w, j w + 2 w).
    n_blocks, chunks = -(-nk // window), -(-nq // nk)
    span = n_blocks * window  # local positions per chunk, padded
    valid = _window_mask(n_blocks, window, nk, q.device)  # (nb, w, 2w)

    def blocks_of_queries(x):  # (B, Nq, c) -> (B, chunks, nb, w, c)
        x = F.pad(x, (0, 0, 0, chunks * nk - nq)).view(batch, chunks, nk, -1)
        return rearrange(F.pad(x, (0, 0, 0, span - nk)), "b c (j a) e -> b c j a e", a=window)

    def key_blocks(x):  # (B, Nk, c) -> (B, nb + 1, w, c), left-padded by w // 2
        return F.pad(x, (0, 0, window // 2, (n_blocks + 1) * window - nk - window // 2)).view(
            batch, n_blocks + 1, window, -1
        )

    def window_products(xq, xk):  # (B, C, nb, w, c) x (B, nb+1, w, c) -> (B, C, nb, w, 2w)
        left = torch.einsum("bcjae,bjue->bcjau", xq, xk[:, :-1])
        right = torch.einsum("bcjae,bjue->bcjau", xq, xk[:, 1:])
        return torch.cat([left, right], dim=-1)

    qk = window_products(blocks_of_queries(q.float()), key_blocks(k.float())).mul_(scale)  # exact window logits
    qk.masked_fill_(~valid, -math.inf)
    qf_blocks = blocks_of_queries(qf)  # (B, C, nb, w, m)
    dots_prime = window_products(qf_blocks, key_blocks(kf)).masked_fill_(~valid, 0.0)  # feature window products

    prime_log_scale = blocks_of_queries(prime_log_scale)  # (B, C, nb, w, 1)
    qk_lse = torch.logsumexp(qk, dim=-1, keepdim=True)  # every query sees its own position, so finite
    lr_mass = (qf_blocks @ key_sum).sub_(dots_prime.sum(dim=-1, keepdim=True))  # low-rank mass outside the window
    log_norm = torch.logaddexp(qk_lse, lr_mass.clamp_min_(1e-24).log_().add_(prime_log_scale))  # (B, C, nb, w, 1)
    prime_scale = torch.exp(prime_log_scale - log_norm)
    dots = qk.sub_(log_norm).exp_().sub_(dots_prime.mul_(prime_scale))  # (B, C, nb, w, 2w)
    vb = key_blocks(v)  # (B, nb+1, w, dv)
    out = (qf_blocks @ key_values).mul_(prime_scale)  # the low-rank part, (B, C, nb, w, dv)
    out += torch.einsum("bcjau,bjue->bcjae", dots[..., :window], vb[:, :-1])
    out += torch.einsum("bcjau,bjue->bcjae", dots[..., window:], vb[:, 1:])
    return rearrange(out, "b c j a e -> b c (j a) e")[:, :, :nk].reshape(batch, chunks * nk, -1)[:, :nq]


def _window_mask(n_blocks: int, window: int, nk: int, device) -> torch.Tensor:
    """(nb, w, 2w) bool: local query j w + a sees padded key j w + u iff 0 <= u - a < w and the key exists."""
    a = torch.arange(window, device=device).view(1, window, 1)
    u = torch.arange(2 * window, device=device).view(1, 1, 2 * window)
    key = torch.arange(n_blocks, device=device).view(n_blocks, 1, 1) * window + u - window // 2
    return (u - a >= 0) & (u - a < window) & (key >= 0) & (key < nk)
