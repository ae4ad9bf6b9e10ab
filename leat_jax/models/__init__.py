"""Flax (NNX) ports of the official networks, one module per family.

Each module mirrors the official PyTorch structure (attribute names, list
indices), so that a checkpoint's key map is a short table. Models never import
the attack.
"""
