"""The project's own variants of published methods, one module each (each class names its ``variant_of``).

smyrf_topkeys, scatterbrain_centred, performer_shrunk, scatterbrain_meanfield, scatterbrain_centroids. A module here
imports only ``..base`` and ``..parts``: never another method module, published or variant (tests/test_imports.py).
"""
