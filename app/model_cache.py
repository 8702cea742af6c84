"""Generators loaded once per (model, device) and kept while in use (least recently used dropped)."""
from __future__ import annotations

import threading
from collections import OrderedDict

from gan.generator import Generator
from weights import load_generator


class GeneratorCache:
    """``get(model, device)`` loads a generator on first use and returns the same object afterwards."""

    def __init__(self, max_models: int = 2, compile_backend: str | None = None):
        if max_models < 1:
            raise ValueError(f"max_models must be >= 1, got {max_models}")
        self.max_models = max_models
        self.compile_backend = compile_backend  # torch.compile backend for every generator, None: eager
        self._models: OrderedDict[tuple[str, str], Generator] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, model: str, device: str) -> Generator:
        key = (model.strip(), str(device))
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            G = load_generator(key[0], attention="exact", device=key[1]).eval()
            if self.compile_backend is not None:
                G.compile(backend=self.compile_backend)  # a swapped attention backend recompiles on its first call
            self._models[key] = G
            while len(self._models) > self.max_models:
                self._models.popitem(last=False)
            return G
