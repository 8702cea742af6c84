"""The FID InceptionV3 of pytorch-fid, returning pool3 features and unbiased logits in one pass.

The layer names, shapes and the TF-port quirks (average pools that ignore padding, a max pool in the
last block, BatchNorm eps 1e-3, a 1008-way fc) are those of ``pytorch_fid.inception.fid_inception_v3``,
so its checkpoint ``pt_inception-2015-12-05-6726825d.pth`` loads strictly. A checkpoint in the same
key layout with every channel count scaled by one factor (the width, read from the first conv's shape)
loads too: tests use such a tiny random network.

Input: images in [-1, 1], any size, turned into the 299 x 299 input by the network's ``input_mode``
(``eval/inception_input.py``: ``tf``, ``pytorch-fid`` or ``clean``).
Output: pool3 features (B, 2048 * width) and logits ``features @ fc.weight.T`` (B, 1008): the fc bias
is left out, as the original TF Inception Score and torch-fidelity do.
"""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from common.download import RemoteFile, cache_root, fetch_files

from .inception_input import INPUT_SIZE, check_input_mode, inception_input

FID_WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
# its name carries the SHA-256 prefix 6726825d (torch.hub's convention); the full digest (95,628,359 bytes)
FID_WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
NUM_LOGITS = 1008


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm(eps=1e-3) -> ReLU, torchvision's key layout (``conv``, ``bn``)."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_same(x: torch.Tensor) -> torch.Tensor:
    """3x3 stride-1 average pool that, like TF, does not count the zero padding."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool: int, c):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, c(64), 1)
        self.branch5x5_1 = BasicConv2d(cin, c(48), 1)
        self.branch5x5_2 = BasicConv2d(c(48), c(64), 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, c(64), 1)
        self.branch3x3dbl_2 = BasicConv2d(c(64), c(96), 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(c(96), c(96), 3, padding=1)
        self.branch_pool = BasicConv2d(cin, c(pool), 1)
        self.out_channels = c(64) + c(64) + c(96) + c(pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool_same(x)),
        ], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int, c):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, c(384), 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, c(64), 1)
        self.branch3x3dbl_2 = BasicConv2d(c(64), c(96), 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(c(96), c(96), 3, stride=2)
        self.out_channels = c(384) + c(96) + cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int, c):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, c(192), 1)
        self.branch7x7_1 = BasicConv2d(cin, c(c7), 1)
        self.branch7x7_2 = BasicConv2d(c(c7), c(c7), (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c(c7), c(192), (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c(c7), 1)
        self.branch7x7dbl_2 = BasicConv2d(c(c7), c(c7), (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c(c7), c(c7), (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c(c7), c(c7), (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c(c7), c(192), (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, c(192), 1)
        self.out_channels = 4 * c(192)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dbl = self.branch7x7dbl_2(self.branch7x7dbl_1(x))
        dbl = self.branch7x7dbl_5(self.branch7x7dbl_4(self.branch7x7dbl_3(dbl)))
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            dbl,
            self.branch_pool(_avg_pool_same(x)),
        ], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int, c):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, c(192), 1)
        self.branch3x3_2 = BasicConv2d(c(192), c(320), 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, c(192), 1)
        self.branch7x7x3_2 = BasicConv2d(c(192), c(192), (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(c(192), c(192), (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(c(192), c(192), 3, stride=2)
        self.out_channels = c(320) + c(192) + cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7x3_2(self.branch7x7x3_1(x))
        return torch.cat([
            self.branch3x3_2(self.branch3x3_1(x)),
            self.branch7x7x3_4(self.branch7x7x3_3(b7)),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class InceptionE(nn.Module):
    """The last two blocks; the FID network pools with average in Mixed_7b and max in Mixed_7c."""

    def __init__(self, cin: int, c, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, c(320), 1)
        self.branch3x3_1 = BasicConv2d(cin, c(384), 1)
        self.branch3x3_2a = BasicConv2d(c(384), c(384), (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(c(384), c(384), (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, c(448), 1)
        self.branch3x3dbl_2 = BasicConv2d(c(448), c(384), 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(c(384), c(384), (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(c(384), c(384), (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, c(192), 1)
        self.out_channels = c(320) + 4 * c(384) + c(192)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool_same(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl),
            self.branch_pool(pooled),
        ], 1)


class FIDInception(nn.Module):
    """FID InceptionV3; ``width`` scales every channel count (1.0 is the published network)."""

    def __init__(self, width: float = 1.0, input_mode: str = "pytorch-fid"):
        super().__init__()
        if not 0.0 < width <= 1.0:
            raise ValueError(f"Inception width must be in (0, 1], got {width}")
        self.width = width
        self.input_mode = check_input_mode(input_mode)

        def c(n: int) -> int:
            return max(1, round(n * width))

        self.Conv2d_1a_3x3 = BasicConv2d(3, c(32), 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(c(32), c(32), 3)
        self.Conv2d_2b_3x3 = BasicConv2d(c(32), c(64), 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(c(64), c(80), 1)
        self.Conv2d_4a_3x3 = BasicConv2d(c(80), c(192), 3)
        self.Mixed_5b = InceptionA(c(192), 32, c)
        self.Mixed_5c = InceptionA(self.Mixed_5b.out_channels, 64, c)
        self.Mixed_5d = InceptionA(self.Mixed_5c.out_channels, 64, c)
        self.Mixed_6a = InceptionB(self.Mixed_5d.out_channels, c)
        self.Mixed_6b = InceptionC(self.Mixed_6a.out_channels, 128, c)
        self.Mixed_6c = InceptionC(self.Mixed_6b.out_channels, 160, c)
        self.Mixed_6d = InceptionC(self.Mixed_6c.out_channels, 160, c)
        self.Mixed_6e = InceptionC(self.Mixed_6d.out_channels, 192, c)
        self.Mixed_7a = InceptionD(self.Mixed_6e.out_channels, c)
        self.Mixed_7b = InceptionE(self.Mixed_7a.out_channels, c, max_pool=False)
        self.Mixed_7c = InceptionE(self.Mixed_7b.out_channels, c, max_pool=True)
        self.feature_dim = self.Mixed_7c.out_channels
        self.fc = nn.Linear(self.feature_dim, NUM_LOGITS)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B,3,H,W) in [-1,1] -> pool3 features (B, feature_dim), logits without bias (B, 1008)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"Inception expects images (B,3,H,W), got {tuple(images.shape)}")
        return self.from_input(inception_input(images, self.input_mode))

    def from_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B,3,299,299), the network's input -> pool3 features (B, feature_dim), unbiased logits (B, 1008)."""
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"the Inception input must be (B,3,{INPUT_SIZE},{INPUT_SIZE}), got {tuple(x.shape)}")
        x = F.max_pool2d(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))), 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        features = x.mean(dim=(2, 3))  # (B, feature_dim): adaptive average pool to 1x1
        return features, features @ self.fc.weight.T


def default_weights_path() -> Path:
    """Where the default checkpoint is downloaded to (or may be put by hand): ``<cache root>/inception/<file>``."""
    return cache_root() / "inception" / FID_WEIGHTS_FILE


def _fetch_default_weights() -> Path:
    """pytorch-fid's checkpoint from the cache (SHA-256 checked) or downloaded into it."""
    remote = RemoteFile(FID_WEIGHTS_FILE, FID_WEIGHTS_URL, FID_WEIGHTS_SHA256)
    folder = default_weights_path().parent
    what = "the FID Inception weights"  # the error adds the URL
    alternative = "(set BIGGAN_ATTN_CACHE to move it), or pass --inception-weights PATH"
    return fetch_files((remote,), folder, what, alternative=alternative) / FID_WEIGHTS_FILE


@functools.lru_cache(maxsize=16)
def _file_sha256(resolved: str, mtime_ns: int, size: int) -> str:
    """SHA-256 of a whole file; cached by (path, mtime, size), so a file is read once per process."""
    digest = hashlib.sha256()
    with open(resolved, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_id(path: Path) -> str:
    """A content id of a weights file for cache keys: its name, size and the SHA-256 of all its bytes."""
    st = path.stat()
    return f"{path.name}:{st.st_size}:{_file_sha256(str(path.resolve()), st.st_mtime_ns, st.st_size)[:16]}"


def load_inception(weights: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                   input_mode: str = "pytorch-fid") -> tuple[FIDInception, str]:
    """Build the FID Inception from ``weights`` (default: pytorch-fid's cached checkpoint); returns (net, weights id).

    ``input_mode`` picks the resize/normalisation protocol (``eval/inception_input.py``); it is not part
    of the weights id (cache keys record it separately).

    The width is read from ``Conv2d_1a_3x3.conv.weight`` (32 output channels at full size); every other
    key must be present with the matching shape (``num_batches_tracked`` buffers are optional).
    """
    from common.files import read_checkpoint
    from weights.strict import check_state_dict

    path = _fetch_default_weights() if weights is None else Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights file not found: {path} "
                                f"(expected pytorch-fid's {FID_WEIGHTS_FILE} layout)")
    state = read_checkpoint(path)
    if "Conv2d_1a_3x3.conv.weight" not in state:
        raise ValueError(f"{path} is not an FID Inception state dict (no Conv2d_1a_3x3.conv.weight key)")
    check_input_mode(input_mode)
    net = FIDInception(width=state["Conv2d_1a_3x3.conv.weight"].shape[0] / 32, input_mode=input_mode)
    expected = {k: v.shape for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    check_state_dict(expected, {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, str(path))
    net.load_state_dict(state, strict=False)
    return net.eval().requires_grad_(False).to(device), weights_id(path)


def random_inception_state(width: float = 1.0, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random-weight state dict in the checkpoint's layout (non-trivial BatchNorm statistics), for tests."""
    gen = torch.Generator().manual_seed(seed)
    net = FIDInception(width)
    state = {}
    for key, value in net.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        if key.endswith("running_var") or key.endswith("bn.weight"):
            state[key] = 0.5 + torch.rand(value.shape, generator=gen)
        elif key.endswith("conv.weight") or key == "fc.weight":
            fan_in = value[0].numel()
            state[key] = torch.randn(value.shape, generator=gen) * (2.0 / fan_in) ** 0.5
        else:
            state[key] = 0.1 * torch.randn(value.shape, generator=gen)
    return state
