"""SMYRF (Daras et al., NeurIPS 2020). PLACEHOLDER until the published algorithm lands (issue 8):
today this is the smyrf-topkeys algorithm under the published name."""
from __future__ import annotations

from .smyrf_topkeys import SmyrfTopKeysAttention


class SmyrfAttention(SmyrfTopKeysAttention):
    name = "smyrf"
    published = True
    paper = "Daras et al., NeurIPS 2020"
    variant_of = None
