"""The app's form values -> a validated comparison request (ValueError with a readable message otherwise)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from gan.attention import available_attentions
from gan.sampling import balanced_class_ids, class_ids_from, imagenet_class_names

from .compare import REFERENCE
from .params import parse_value

RANDOM_CLASS = "random"
TRUNCATION_RANGE = (0.02, 1.0)
MAX_IMAGES = 8
ADVANCED_HEADERS = ["backend", "parameter", "default", "value"]


@dataclass(frozen=True)
class CompareRequest:
    model: str
    class_ids: list[int]  # one per image
    seed: int
    truncation: float
    num_images: int
    backends: list[tuple[str, dict[str, Any]]]  # approximate backends with their kwargs, exact excluded


def class_choices() -> list[str]:
    """'random' and '<id>: <ImageNet name>' for the class dropdown (searchable by name or id)."""
    return [RANDOM_CLASS] + [f"{i}: {name}" for i, name in enumerate(imagenet_class_names())]


def _integer(value: Any, what: str, low: int, high: int | None = None) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a whole number, got {value!r}") from None
    if not number.is_integer() or number < low or (high is not None and number > high):
        accepted = f"{low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{what} must be a whole number in {accepted}, got {value!r}")
    return int(number)


def resolve_classes(choice: str | None, num_images: int, seed: int, num_classes: int) -> list[int]:
    """'random' (drawn from seed), '207: golden retriever', '207', 'goldfish' or 'goldfish,207' -> one id per image."""
    text = (choice or "").strip()
    if not text:
        raise ValueError("pick an ImageNet class (by name or id) or 'random'")
    if text.lower() == RANDOM_CLASS:
        generator = torch.Generator().manual_seed(seed)
        return torch.randint(num_classes, (num_images,), generator=generator).tolist()
    labelled = re.fullmatch(r"(\d+):.*", text)
    ids = class_ids_from(labelled.group(1) if labelled else text, num_classes=num_classes)
    return balanced_class_ids(range(num_images), ids).tolist()


def backend_kwargs(
    backends: Sequence[str] | None, budget: float | None, advanced: Sequence[Sequence[Any]] | None, seed: int
) -> list[tuple[str, dict[str, Any]]]:
    """Selected approximate backends -> (name, kwargs): the shared budget and seed plus filled-in advanced rows."""
    known = available_attentions()
    chosen = [name for name in dict.fromkeys(backends or []) if name != REFERENCE]
    unknown = [name for name in chosen if name not in known]
    if unknown:
        raise ValueError(f"unknown attention backend(s) {', '.join(unknown)}; available: {', '.join(known)}")
    if budget is not None and not (0.0 < float(budget) <= 1.0):
        raise ValueError(f"budget must be a fraction of the dense score matrix in (0, 1], got {budget!r}")
    overrides: dict[str, dict[str, Any]] = {}
    for row in advanced or []:
        if len(row) < len(ADVANCED_HEADERS):
            raise ValueError(f"advanced parameter rows need the columns {', '.join(ADVANCED_HEADERS)}")
        name, param, value = str(row[0]).strip(), str(row[1]).strip(), "" if row[3] is None else str(row[3]).strip()
        if value:
            overrides.setdefault(name, {})[param] = parse_value(value)
    shared = {"seed": seed} | ({} if budget is None else {"budget": float(budget)})
    return [(name, shared | overrides.get(name, {})) for name in chosen]


def model_name(model: str | None) -> str:
    """The model field, stripped; ValueError when empty."""
    if not model or not str(model).strip():
        raise ValueError("choose a model: a registry name such as biggan-deep-128 or a local checkpoint path")
    return str(model).strip()


def parse_request(
    model: str | None,
    class_choice: str | None,
    seed: Any,
    truncation: Any,
    num_images: Any,
    backends: Sequence[str] | None,
    budget: float | None,
    advanced: Sequence[Sequence[Any]] | None,
    num_classes: int,
) -> CompareRequest:
    """Validate the form; ``num_classes`` comes from the loaded generator."""
    seed = _integer(seed, "seed", 0, 2**31 - 1)
    count = _integer(num_images, "number of images", 1, MAX_IMAGES)
    try:
        trunc = float(truncation)
    except (TypeError, ValueError):
        raise ValueError(f"truncation must be a number in [{TRUNCATION_RANGE[0]}, {TRUNCATION_RANGE[1]}], got {truncation!r}") from None
    if not TRUNCATION_RANGE[0] <= trunc <= TRUNCATION_RANGE[1]:
        raise ValueError(f"truncation must be in [{TRUNCATION_RANGE[0]}, {TRUNCATION_RANGE[1]}], got {trunc}")
    return CompareRequest(
        model=model_name(model),
        class_ids=resolve_classes(class_choice, count, seed, num_classes),
        seed=seed,
        truncation=trunc,
        num_images=count,
        backends=backend_kwargs(backends, budget, advanced, seed),
    )
