"""Names of the pretrained generators and where their files come from."""
from __future__ import annotations

from dataclasses import dataclass, field

from .formats import BIGGAN, BIGGAN_DEEP
from .hf_deep import CONFIG_NAME, WEIGHTS_NAME

_HF_S3 = "https://s3.amazonaws.com/models.huggingface.co/biggan"


@dataclass(frozen=True)
class ModelSource:
    """A named pretrained generator: a Hugging Face Hub repo and/or direct URLs (file name -> URL)."""

    name: str
    family: str
    hub_repo: str | None = None
    urls: dict[str, str] = field(default_factory=dict)
    where: str = ""  # for models that cannot be downloaded automatically: where the public copies are


def _deep(resolution: int, hub_repo: str | None = None) -> ModelSource:
    name = f"biggan-deep-{resolution}"
    urls = {CONFIG_NAME: f"{_HF_S3}/{name}-config.json", WEIGHTS_NAME: f"{_HF_S3}/{name}-pytorch_model.bin"}
    return ModelSource(name, BIGGAN_DEEP, hub_repo, urls)


MODELS: dict[str, ModelSource] = {
    source.name: source
    for source in (
        _deep(128, hub_repo="osanseviero/BigGAN-deep-128"),
        _deep(256),
        _deep(512),
        ModelSource(
            "biggan-128",
            BIGGAN,
            where=(
                "ajbrock's BigGAN-PyTorch ImageNet-128 '138k' G_ema.pth (https://drive.google.com/open?id="
                "1nAle7FCVFZdix2--ks0r5JBkFnKw8ctW) or OpenMMLab's conversion (https://download.openmmlab.com/mmgen/"
                "biggan/biggan_imagenet1k_128x128_cvt_BigGAN-PyTorch_rgb_20210730_125223-3e353fef.pth)"
            ),
        ),
    )
}


def available_models() -> list[str]:
    """Names ``load_generator`` accepts besides local paths."""
    return list(MODELS)
