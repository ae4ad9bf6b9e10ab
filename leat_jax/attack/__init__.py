"""The attack: losses, ensembles and the PGD loop, as pure functions."""
from leat_jax.attack.config import ENSEMBLES, UPDATES, AttackConfig
from leat_jax.attack.losses import LOSSES, latent_mse
from leat_jax.attack.pgd import (
    AttackResult,
    attack_image,
    clean_latents,
    default_microbatch,
    ensemble_direction,
    image_key,
    latent_distances,
    make_attack,
    prepared,
    run,
)

__all__ = [
    "ENSEMBLES", "LOSSES", "UPDATES", "AttackConfig", "AttackResult", "attack_image", "clean_latents",
    "default_microbatch", "ensemble_direction", "image_key", "latent_distances", "latent_mse", "make_attack",
    "prepared", "run",
]
