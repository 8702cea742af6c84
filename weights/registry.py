"""Names of the pretrained generators and where their files come from."""
from __future__ import annotations

from dataclasses import dataclass

from common.download import HubRepo, RemoteFile

from .formats.biggan_deep import CONFIG_NAME, WEIGHTS_NAME

_HF_S3 = "https://s3.amazonaws.com/models.huggingface.co/biggan"


@dataclass(frozen=True)
class ModelSource:
    """A named pretrained generator: its files (URL, SHA-256 where published) and optionally a Hub repo to try first.

    No SHA-256 is published for the Hugging Face port's S3 files, nor a commit for the Hub copy: they are
    ``None`` here and pinned to what the first download gets (``common.download``).
    """

    name: str
    family: str
    files: tuple[RemoteFile, ...] = ()
    hub: HubRepo | None = None
    where: str = ""  # for models that cannot be downloaded automatically: where the public copies are


def _deep(resolution: int, hub: HubRepo | None = None) -> ModelSource:
    name = f"biggan-deep-{resolution}"
    files = tuple(RemoteFile(file, f"{_HF_S3}/{name}-{file}") for file in (CONFIG_NAME, WEIGHTS_NAME))
    return ModelSource(name, "biggan-deep", files, hub)


MODELS: dict[str, ModelSource] = {
    source.name: source
    for source in (
        _deep(128, hub=HubRepo("osanseviero/BigGAN-deep-128", revision=None)),
        _deep(256),
        _deep(512),
        ModelSource(
            "biggan-128",
            "biggan",
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
