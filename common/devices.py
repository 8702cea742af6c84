"""Device and dtype names as users type them -> torch objects, with one-line errors."""
from __future__ import annotations

import torch

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None -> cuda when available, else cpu; a named device must parse and, if CUDA, be present."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use e.g. 'cpu', 'cuda' or 'cuda:1'") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for but CUDA is not available; use 'cpu'")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """None -> float32; accepted: float32/fp32, float16/fp16/half, bfloat16/bf16 (or the torch dtypes)."""
    if dtype is None:
        return torch.float32
    resolved = DTYPES.get(dtype.lower()) if isinstance(dtype, str) else dtype
    if resolved not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"unsupported dtype {dtype!r}; accepted: float32, float16, bfloat16")
    return resolved


def check_compile_backend(backend: str | None, option: str = "--compile") -> str | None:
    """``backend`` if None or a name torch.compile knows (inductor, aot_eager, cudagraphs, ...), else ValueError."""
    if backend is None:
        return None
    import torch._dynamo

    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        raise ValueError(f"{option} {backend!r} is not a torch.compile backend; accepted: {', '.join(sorted(known))}")
    return backend
