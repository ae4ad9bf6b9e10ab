"""The one error every room raises when a run cannot start (bad victims, pipelines, checkpoints, settings).

It sits below every room so the pipeline, the deepfake pipelines' own
declarations and the CLI raise and catch the same class.
"""
from __future__ import annotations


class SetupError(ValueError):
    """The run cannot start (bad victims, checkpoint, settings or folders): one line."""


__all__ = ["SetupError"]
