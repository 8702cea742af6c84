"""Scatterbrain (Chen et al., NeurIPS 2021). PLACEHOLDER until the published algorithm lands (issue 8):
today this is the scatterbrain-centred algorithm under the published name."""
from __future__ import annotations

from .scatterbrain_centred import ScatterbrainCentredAttention


class ScatterbrainAttention(ScatterbrainCentredAttention):
    name = "scatterbrain"
    published = True
    paper = "Chen et al., NeurIPS 2021"
    variant_of = None
