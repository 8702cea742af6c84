"""How an image becomes the Inception network's 299 x 299 input: the three protocols researchers use.

Images arrive as (B,3,H,W) float in [-1, 1] holding 8-bit values (``common.images.quantize``).

- ``tf``: TensorFlow-1 bilinear resize without the half-pixel offset on the [0, 255] values, then
  ``(x - 128) / 128``: the TF Inception graph of the original FID/IS code, ADM's evaluator and
  torch-fidelity. The resize is torch-fidelity's ``interpolate_bilinear_2d_like_tensorflow1x``
  (Apache-2.0), bit-exact with TF1 on the CPU.
- ``pytorch-fid``: torch bilinear (``align_corners=False``, no antialias) of the [-1, 1] image, which
  equals pytorch-fid's resize of the [0, 1] image followed by ``2x - 1``.
- ``clean``: clean-fid's resize, PIL bicubic on each channel as a float image, clipped to [0, 255],
  then ``(x - 128) / 128``.
"""
from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

INPUT_SIZE = 299
INCEPTION_INPUTS = ("tf", "pytorch-fid", "clean")
TF_EVALUATOR_DEFAULT = "tf"  # reference statistics from a TensorFlow evaluator (ADM's batches)
OTHER_DEFAULT = "pytorch-fid"  # statistics of unknown origin (an .npz) or computed here


def check_input_mode(mode: str) -> str:
    if mode not in INCEPTION_INPUTS:
        raise ValueError(f"unknown Inception input {mode!r}; accepted: {', '.join(INCEPTION_INPUTS)}")
    return mode


def _levels(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> float32 [0, 255] 8-bit levels (exact for quantised images)."""
    return ((images.float() + 1.0) * 127.5).round_()


@functools.cache
def _tf1_resize():
    """torch-fidelity's ``interpolate_bilinear_2d_like_tensorflow1x``, read from its module file: importing the
    ``torch_fidelity`` package would also import torchvision and every feature extractor it ships (seconds)."""
    loaded = sys.modules.get("torch_fidelity.interpolate_compat_tensorflow")
    if loaded is None:
        spec = importlib.util.find_spec("torch_fidelity")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("the tf Inception input needs torch-fidelity (pip install torch-fidelity)")
        path = Path(next(iter(spec.submodule_search_locations))) / "interpolate_compat_tensorflow.py"
        module_spec = importlib.util.spec_from_file_location("_torch_fidelity_tf1_resize", path)
        loaded = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(loaded)
    return loaded.interpolate_bilinear_2d_like_tensorflow1x


def _tf_bilinear(images: torch.Tensor) -> torch.Tensor:
    x = _tf1_resize()(_levels(images), size=(INPUT_SIZE, INPUT_SIZE), align_corners=False)
    return (x - 128) / 128


def _pil_bicubic(images: torch.Tensor) -> torch.Tensor:
    from PIL import Image

    levels = _levels(images).cpu().numpy()  # (B,3,H,W) float32
    out = np.empty((*levels.shape[:2], INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
    for b, c in np.ndindex(*levels.shape[:2]):  # PIL resizes one float channel at a time, as clean-fid does
        plane = Image.fromarray(levels[b, c]).resize((INPUT_SIZE, INPUT_SIZE), resample=Image.BICUBIC)
        out[b, c] = np.asarray(plane)
    x = torch.from_numpy(out.clip(0, 255)).to(images.device)
    return (x - 128) / 128


def inception_input(images: torch.Tensor, mode: str) -> torch.Tensor:
    """(B,3,H,W) in [-1, 1] -> (B,3,299,299) float32, the network's input under protocol ``mode``."""
    if mode == "tf":
        return _tf_bilinear(images)
    if mode == "pytorch-fid":
        return F.interpolate(images.float(), size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    if mode == "clean":
        return _pil_bicubic(images)
    raise ValueError(f"unknown Inception input {mode!r}; accepted: {', '.join(INCEPTION_INPUTS)}")
