"""Devices: the batch sharded over a 1-D mesh, and multi-host set-up."""
from leat_jax.parallel.distributed import DistributedConfig, initialize, process_share
from leat_jax.parallel.mesh import AXIS, data_mesh, mesh_microbatch, sharded_attack

__all__ = ["AXIS", "DistributedConfig", "data_mesh", "initialize", "mesh_microbatch", "process_share",
           "sharded_attack"]
