"""Parameters several backends declare alike, declared once: unpack a group into a class body in its order.

- ``CLUSTERS``: (n_hashes, q_cluster_size, k_cluster_size) of the clustered backends (smyrf, scatterbrain and
  their variants), each None (resolved from the budget) or an int >= 1; ``planning`` checks them against the
  shapes (``explicit_cluster_count``).
- ``SB_FEATURE_OPTIONS``: (ortho_scaling, softmax_eps), the Scatterbrain feature map's options (scatterbrain,
  sblocal), with the reference's defaults; ``SB_NUM_FEATURES``: its feature count (pairs: None or >= 2).
"""
from __future__ import annotations

from ..base import Parameter, nonnegative_number, positive_int
from .sb_features import check_num_features, check_ortho_scaling

CLUSTERS = (Parameter(positive_int), Parameter(positive_int), Parameter(positive_int))
SB_NUM_FEATURES = Parameter(lambda name, value: check_num_features(value))  # the check names num_features itself
SB_FEATURE_OPTIONS = (
    Parameter(lambda name, value: check_ortho_scaling(value), default=0),  # the check names ortho_scaling itself
    Parameter(nonnegative_number, default=0.0),
)
