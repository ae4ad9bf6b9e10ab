"""leat-jax: the Latent Ensemble Attack (LEAT, arXiv 2307.01520) in JAX.

Rooms, with arrows that run one way:
``cli -> pipeline -> attack, parallel -> victims -> models``.
Nothing here imports torch.
"""

__version__ = "0.1.0"
