"""Multi-host runs: ``jax.distributed`` set-up and a disjoint share of the work.

Images are independent, so hosts never talk during the attack: each process
takes its own share of the inputs and runs on its local devices. Because an
image's result depends only on (seed, image id, settings), the union of the
shares equals a single-host run.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence, TypeVar

import jax

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """Where the coordinator is and who we are; ``None`` means from the environment.

    Attributes:
      coordinator: ``host:port`` of process 0 (env ``LEAT_COORDINATOR`` or
        JAX's own cluster detection: Slurm, Open MPI, TPU).
      num_processes: how many processes take part (env ``LEAT_NUM_PROCESSES``).
      process_id: this process's index (env ``LEAT_PROCESS_ID``).
    """

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    @classmethod
    def from_env(cls, **overrides) -> "DistributedConfig":
        env = os.environ
        values = {
            "coordinator": env.get("LEAT_COORDINATOR"),
            "num_processes": int(env["LEAT_NUM_PROCESSES"]) if "LEAT_NUM_PROCESSES" in env else None,
            "process_id": int(env["LEAT_PROCESS_ID"]) if "LEAT_PROCESS_ID" in env else None,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def initialize(config: DistributedConfig | None = None) -> tuple[int, int]:
    """Join the job; returns (process index, process count). Call before any JAX work."""
    config = config or DistributedConfig.from_env()
    jax.distributed.initialize(
        coordinator_address=config.coordinator,
        num_processes=config.num_processes,
        process_id=config.process_id,
    )
    return jax.process_index(), jax.process_count()


def process_share(items: Sequence[T], process_index: int | None = None, process_count: int | None = None) -> list[T]:
    """This process's disjoint share of ``items`` (round robin over a fixed order)."""
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if not 0 <= index < count:
        raise ValueError(f"process index {index} outside 0..{count - 1}")
    return [item for i, item in enumerate(items) if i % count == index]
