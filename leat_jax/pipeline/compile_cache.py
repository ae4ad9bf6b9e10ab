"""JAX's persistent compilation cache for the immunize job, and a count of its hits.

On by default under the user's cache folder (``$XDG_CACHE_HOME/leat-jax/jax``,
else ``~/.cache/leat-jax/jax``), so a restarted job does not compile the
attack again (55 s for the five victims on a CPU). The cache is trusted
code: keep it in a folder only you can write.
"""
from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.monitoring
from jax.experimental.compilation_cache import compilation_cache

HIT = "/jax/compilation_cache/cache_hits"
MISS = "/jax/compilation_cache/cache_misses"


def default_dir() -> Path:
    """The user's cache folder for leat-jax's compilations."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "leat-jax" / "jax"


def resolve(setting: bool | str) -> Path | None:
    """The cache folder for ``ImmunizeConfig.compile_cache``: True the default, False none, a str that folder."""
    if setting is False:
        return None
    return default_dir() if setting is True else Path(setting)


def use(folder: Path | None) -> None:
    """Point JAX's persistent cache at ``folder`` (None: off) from the next compilation on."""
    current = jax.config.jax_compilation_cache_dir
    wanted = None if folder is None else str(folder)
    if current == wanted:
        return
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    compilation_cache.reset_cache()  # the cache object is built once per folder
    jax.config.update("jax_compilation_cache_dir", wanted)


class Counter:
    """Counts the persistent cache's hits and misses while it is open (a context manager)."""

    def __init__(self):
        self.hits = self.misses = 0
        self.listener = self._listen  # one object, to unregister the same one

    def _listen(self, event: str, **kwargs) -> None:
        if event == HIT:
            self.hits += 1
        elif event == MISS:
            self.misses += 1

    def __enter__(self):
        jax.monitoring.register_event_listener(self.listener)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_listener(self.listener)

    def stats(self) -> dict:
        return {"hits": self.hits, "misses": self.misses}
