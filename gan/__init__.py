"""BigGAN generators with a swappable self-attention layer (model library: tensors in, tensors out)."""
