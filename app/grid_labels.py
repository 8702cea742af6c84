"""What the app's grid PNG says about itself: a header with the settings, and a file name built from them.

The same settings (model, budget, seed, truncation, classes, backends and their parameters) always give
the same file name, so a downloaded grid can be matched to the run that drew it.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from gan.sampling import imagenet_class_names


def grid_setting(model: str, budget: str, seed: int, truncation: float, class_ids: list[int],
                 backends: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The settings a grid was drawn with (JSON-serialisable)."""
    return {"model": model, "budget": budget, "seed": seed, "truncation": truncation, "class_ids": list(class_ids),
            "backends": [[name, kwargs] for name, kwargs in backends]}


def _classes(class_ids: list[int]) -> str:
    names = imagenet_class_names()
    unique = list(dict.fromkeys(class_ids))
    return ", ".join(f"{c} {names[c]}" if 0 <= c < len(names) else str(c) for c in unique)


def grid_header(setting: dict[str, Any]) -> list[str]:
    """Two lines: model, budget, seed and truncation; then the classes (id and ImageNet name, image order)."""
    return [f"model: {Path(setting['model']).name} | budget: {setting['budget']} | seed: {setting['seed']} | "
            f"truncation: {setting['truncation']:g}",
            f"classes: {_classes(setting['class_ids'])}"]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_") or "x"


def grid_file_name(setting: dict[str, Any], heatmaps: bool) -> str:
    """``grid-<model>-budget<b>-seed<s>-trunc<t>-classes<ids>-<digest of every setting>[-heatmaps].png``."""
    digest = hashlib.sha256(json.dumps(setting, sort_keys=True, default=str).encode()).hexdigest()[:8]
    ids = "_".join(map(str, dict.fromkeys(setting["class_ids"])))
    name = (f"grid-{_slug(Path(setting['model']).name)}-budget{_slug(setting['budget'])}-seed{setting['seed']}"
            f"-trunc{setting['truncation']:g}-classes{ids[:48]}-{digest}")
    return name + ("-heatmaps" if heatmaps else "") + ".png"
