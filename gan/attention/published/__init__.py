"""Published attention methods, one module each, computed as their authors' code computes them.

exact, smyrf, reformer, performer, scatterbrain, sblocal, topk, kdeformer, thinformer. A module here
imports only ``..base`` and ``..parts``: never another method module (tests/test_imports.py).
"""
