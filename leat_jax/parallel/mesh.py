"""The attack sharded over local devices with ``jax.shard_map``.

Images are independent, so each device runs the per-image attack on its
slice of the batch; parameters are replicated. The batch goes through in
steps of (devices x microbatch) images, the last one padded (the padding
dropped), so each device runs one program of ``microbatch`` images whatever
the batch size or the device count.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from leat_jax.attack import AttackConfig, AttackResult, default_microbatch, make_attack
from leat_jax.attack.pgd import in_steps
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


def mesh_microbatch(mesh: Mesh, microbatch: int | None = None) -> int:
    """``microbatch``, or (None) the default of the mesh's platform (``attack.default_microbatch``)."""
    return default_microbatch(mesh.devices.flat[0].platform) if microbatch is None else microbatch


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
    microbatch: int | None = None,
) -> AttackResult:
    """Run the attack on ``images`` (B, H, W, C) split over ``mesh``; B is any size.

    Args:
      microbatch: images per device per compiled step; None: the platform's
        default (``mesh_microbatch``). An image's result depends on it and on
        the platform, never on B or the device count.
    Returns:
      The ``AttackResult`` of the B images, in order.
    """
    microbatch = mesh_microbatch(mesh, microbatch)
    if type(microbatch) is not int or microbatch < 1:
        raise ValueError(f"microbatch must be a positive integer, got {microbatch!r}")
    fn = _compiled(tuple(victims), config, mesh)
    sharding = NamedSharding(mesh, P(AXIS))
    params, seed = tuple(params), jnp.uint32(seed)

    def step(x, ids):
        x = jax.device_put(np.asarray(x, np.float32), sharding)
        return fn(params, x, jax.device_put(np.asarray(ids, np.uint32), sharding), seed)

    return in_steps(step, mesh.devices.size * microbatch, np.asarray(images), np.asarray(image_ids))
