"""Engines that run the immunize job's stages (``leat_jax.pipeline.job``) beyond one process.

The in-process engine is ``leat_jax.pipeline.immunize.run`` (the default: one
machine, every local device). ``ray_engine`` runs the same stages on Ray Data,
across a cluster of accelerator hosts; it needs the optional ``leat-jax[ray]``.
``sharded_job`` runs a job on tar or Parquet shards under either of them.
"""
