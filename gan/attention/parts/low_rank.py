"""Low-rank estimates of exp(score) that sparse + low-rank attention adds outside its support.

Scatterbrain's FAVOR+ part, the centred FAVOR+ of scatterbrain-centred, its mean-field and key-centroid
residuals: each is an ``a_i . b_j`` kernel with per-query log-offsets and its sums over all keys, which
``round_attention.clustered_attention`` and ``sorted_clusters.sorted_cluster_attention`` consume.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LowRankTerms:
    """A low-rank estimate exp(log_offset_i) * a_i . b_j of exp(score_ij) (Scatterbrain's FAVOR+ part).

    log_offset (B,Nq); a (B,Nq,m) and b (B,Nk,m) non-negative; num (B,Nq,dv) = a (b^T v) and
    den (B,Nq) = a (b^T 1): the estimate's sums over ALL keys, in units of exp(log_offset).
    """

    log_offset: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    num: torch.Tensor
    den: torch.Tensor
