"""The attack sharded over local devices with ``jax.shard_map``.

Images are independent, so each device runs the per-image attack on its
slice of the batch; parameters are replicated. The last batch is padded to a
multiple of the device count and the padding dropped, so results are those
of one device (to float32 round-off).
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from leat_jax.attack import AttackConfig, AttackResult, make_attack
from leat_jax.victims import Victim

AXIS = "data"


def data_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh over this process's devices (all, or the first ``num_devices``)."""
    devices = jax.local_devices()
    if num_devices is not None:
        if not 1 <= num_devices <= len(devices):
            raise ValueError(f"asked for {num_devices} devices, this process has {len(devices)}")
        devices = devices[:num_devices]
    return Mesh(np.array(devices), (AXIS,))


@functools.cache
def _compiled(victims: tuple[Victim, ...], config: AttackConfig, mesh: Mesh):
    attack = make_attack(victims, config)
    batch = P(AXIS)
    out_specs = AttackResult(batch, batch, batch, batch if config.record_history else None)
    fn = jax.shard_map(attack, mesh=mesh, in_specs=(P(), batch, batch, P()), out_specs=out_specs)
    return jax.jit(fn)


def replicate(params, mesh: Mesh):
    """Put parameters on every device of the mesh once, outside the loop."""
    return jax.device_put(params, NamedSharding(mesh, P()))


def sharded_attack(
    victims: Sequence[Victim],
    config: AttackConfig,
    mesh: Mesh,
    params,
    images,
    image_ids,
    seed: int,
) -> AttackResult:
    """Run the attack on ``images`` (B, H, W, C) split over ``mesh``; B is any size."""
    n = mesh.devices.size
    b = images.shape[0]
    pad = (-b) % n
    if pad:  # repeat the last image; its copies are dropped below
        images = jnp.concatenate([images, jnp.repeat(images[-1:], pad, axis=0)])
        image_ids = jnp.concatenate([image_ids, jnp.repeat(image_ids[-1:], pad, axis=0)])
    fn = _compiled(tuple(victims), config, mesh)
    sharding = NamedSharding(mesh, P(AXIS))
    images = jax.device_put(jnp.asarray(images, jnp.float32), sharding)
    image_ids = jax.device_put(jnp.asarray(image_ids, jnp.uint32), sharding)
    out = fn(tuple(params), images, image_ids, jnp.uint32(seed))
    return jax.tree.map(lambda a: a[:b], out)
