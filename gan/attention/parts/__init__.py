"""What the attention methods are built from; no module here imports a method module.

- parameter_groups: parameters several backends declare alike (the cluster trio, Scatterbrain's feature options)
- hashing: XBOX+ transforms, E2LSH draws and hashes, centroid sort keys
- planning: the budget search over hash rounds and cluster counts, explicit cluster sizes
- sorted_clusters: SMYRF's rank-cut clusters and their attention (smyrf, scatterbrain)
- round_layout: ``RoundLayout`` (who meets whom per round): query clusters, top keys, neighbour chunks
- round_attention: attention over the union of a layout's rounds (low-rank or sampled residual)
- coverage: covering key selection (each round picks keys its queries still miss)
- topkey_support: smyrf-topkeys' support (centroid hash + key selection, its budget plan)
- shared_qk_lsh: Reformer's shared-QK LSH attention on one sequence
- low_rank: ``LowRankTerms``, a low-rank estimate of exp(score) outside the support
- random_features: FAVOR+ orthogonal random features
- sb_features: Scatterbrain's cosh feature map (and its parameter checks)
- centred_favor: centred FAVOR+ with a group-spread noise estimate and shrinkage
- key_centroids: k-means key groups as a coarse residual
- probes: probe queries, their exact rows, how many and in what chunks
- probe_calibration: choosing a residual's weight and a candidate from the probes' errors
- sampled_rounds: top-key rounds mixed with uniformly sampled keys
"""
