"""Plumbing shared by every layer above ``gan``: atomic files and safe checkpoint reading, one-line
CLI errors, torchrun sharding, image tensors as PNGs hold them. Imports nothing from the project."""
