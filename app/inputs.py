"""The app's form values -> a validated comparison request (ValueError with a readable message otherwise).

Nothing is clamped: a value outside its range is refused with a message saying what is accepted.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from common.cli import parse_attention_kwargs, parse_budget, parse_truncation
from gan.attention import available_attentions
from gan.sampling import balanced_class_ids, class_ids_from, imagenet_class_names

from .compare import REFERENCE

RANDOM_CLASS = "random"
MAX_IMAGES = 8
MAX_BACKENDS = 8  # rows the page lays out without scrolling, exact included
# the budgets eval/fid.py's --budget is usually given (any fraction in (0, 1] is accepted, as there)
BUDGET_PRESETS = ("1/64", "1/32", "1/16", "1/8", "1/4", "1/2", "1")
DEFAULT_BUDGET_TEXT = "1/8"


@dataclass(frozen=True)
class CompareRequest:
    model: str
    class_ids: list[int]  # one per image
    seed: int
    truncation: float
    num_images: int
    budget: str  # as typed, e.g. "1/8"
    backends: list[tuple[str, dict[str, Any]]]  # approximate backends with their kwargs, exact excluded


def class_choices() -> list[str]:
    """'random' and '<id>: <ImageNet name>' for the class dropdown (searchable by name or id)."""
    return [RANDOM_CLASS] + [f"{i}: {name}" for i, name in enumerate(imagenet_class_names())]


def _integer(value: Any, what: str, low: int, high: int | None = None) -> int:
    accepted = f"{low}..{high}" if high is not None else f">= {low}"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a whole number in {accepted}, got {value!r}") from None
    if not math.isfinite(number) or not number.is_integer() or number < low or (high is not None and number > high):
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
    backends: Sequence[str] | None, budget: float, parameters: str | None, seed: int
) -> list[tuple[str, dict[str, Any]]]:
    """Selected approximate backends -> (name, kwargs): the shared budget and seed, then each backend's own
    parameters from the text box (one ``--attn-kwargs`` value per line, the CLI's grammar)."""
    known = available_attentions()
    chosen = [name for name in dict.fromkeys(backends or []) if name != REFERENCE]
    unknown = [name for name in chosen if name not in known]
    if unknown:
        raise ValueError(f"unknown attention backend(s) {', '.join(unknown)}; available: {', '.join(known)}")
    if len(chosen) + 1 > MAX_BACKENDS:
        raise ValueError(f"choose at most {MAX_BACKENDS - 1} backends besides exact (got {len(chosen)})")
    lines = [line for line in (parameters or "").splitlines() if line.strip()]
    try:
        own = parse_attention_kwargs(lines, chosen)
    except ValueError as err:  # the CLI's grammar and messages, named as the page names the field
        raise ValueError(str(err).replace("--attn-kwargs", "backend parameters")) from None
    shared = {"seed": seed, "budget": budget}
    return [(name, shared | own.get(name, {})) for name in chosen]


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
    budget: Any,
    parameters: str | None,
    num_classes: int,
) -> CompareRequest:
    """Validate the form; ``num_classes`` comes from the loaded generator."""
    seed = _integer(seed, "seed", 0, 2**31 - 1)
    count = _integer(num_images, "number of images", 1, MAX_IMAGES)
    trunc = parse_truncation(truncation)
    fraction = parse_budget(budget)
    return CompareRequest(
        model=model_name(model),
        class_ids=resolve_classes(class_choice, count, seed, num_classes),
        seed=seed,
        truncation=trunc,
        num_images=count,
        budget=str(budget).strip(),
        backends=backend_kwargs(backends, fraction, parameters, seed),
    )
