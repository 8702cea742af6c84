"""Folding spectral norm into plain weights, as each published format's layer computes it in eval mode.

Both folds return ``weight / sigma``, where sigma is the layer's own inference-time estimate, so the
folded network computes exactly what the spectral-normed one does. Half-precision checkpoints are
folded in float32 (float64 stays float64).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _at_least_fp32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def _divide(weight: torch.Tensor, sigma: torch.Tensor, key: str) -> torch.Tensor:
    if not torch.isfinite(sigma) or sigma <= 0:
        raise ValueError(
            f"{key}: spectral-norm estimate {float(sigma):.3g} is not a positive number; the checkpoint is corrupt"
        )
    return weight / sigma


def fold_torch_spectral_norm(
    weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, key: str = "weight"
) -> torch.Tensor:
    """``torch.nn.utils.spectral_norm`` in eval mode (no power iteration): W / (u . W v).

    weight (out, ...) is ``weight_orig``; u (out,) and v (in*k*k,) are ``weight_u`` / ``weight_v``.
    """
    weight = _at_least_fp32(weight)
    sigma = torch.dot(u.to(weight.dtype), torch.mv(weight.reshape(weight.shape[0], -1), v.to(weight.dtype)))
    return _divide(weight, sigma, key)


def fold_ajbrock_spectral_norm(weight: torch.Tensor, u0: torch.Tensor, eps: float, key: str = "weight") -> torch.Tensor:
    """ajbrock's ``SN.W_()`` in eval mode: one power iteration from u0 (not stored back), W / sv.

    weight (out, ...), u0 (1, out): v = normalize(u0 W), u = normalize(v W^T), sv = (v W^T) . u.
    """
    weight = _at_least_fp32(weight)
    w = weight.reshape(weight.shape[0], -1)  # (out, in)
    v = F.normalize(u0.to(weight.dtype) @ w, eps=eps)  # (1, in)
    wv = v @ w.t()  # (1, out)
    sigma = (wv @ F.normalize(wv, eps=eps).t()).squeeze()
    return _divide(weight, sigma, key)
