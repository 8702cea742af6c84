"""Metrics for BigGAN attention swaps: Inception features, FID, IS, attention error, the fid.py CLI."""
