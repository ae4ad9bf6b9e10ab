"""Engines that run the immunize job's stages (``leat_jax.pipeline.job``), and ``run``, which picks one.

``run(cfg)`` is the immunize job's one entry from Python (the CLI calls it
too): ``cfg.engine == "ray"`` runs it on Ray Data (``ray_engine``; needs the
optional ``leat-jax[ray]``), a SRC of tar or Parquet shards runs
``sharded_job`` in this process, anything else is the folder job
(``leat_jax.pipeline.immunize.run``: one machine, every local device).
"""
from __future__ import annotations

import functools

from leat_jax.engines import ray_engine, sharded_job
from leat_jax.pipeline import immunize, sources
from leat_jax.pipeline.config import ImmunizeConfig


def run(cfg: ImmunizeConfig, stream=None) -> immunize.Summary:
    """Run the immunize job under the engine ``cfg`` names, on whatever SRC holds; its summary.

    Args:
      cfg: the run's settings (``leat_jax.pipeline.config.build``).
      stream: where the job's lines and progress go (default stderr).
    Returns:
      What the run did (``immunize.Summary``; ``exit_code`` 1 when images failed).
    Raises:
      SetupError: (one line) the job could not start.
      faults.JobFailed: (one line) the job failed on the way; finished work is kept.
    """
    if cfg.engine == "ray":
        return ray_engine.run(cfg, stream)
    if cfg.src is not None and sources.is_sharded(cfg.src):
        return sharded_job.run(cfg, functools.partial(sharded_job.local, stream=stream), stream)
    return immunize.run(cfg, stream)
