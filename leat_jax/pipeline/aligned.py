"""The attack stage for aligned face crops (``--faces aligned``): whole images, in batches.

Images are grouped by size into batches of one fixed shape (the last one of
a size padded by repeating an image), which the sharded attack spreads over
the mesh; every image therefore meets the same program whatever batch it is
in. The sharded attack runs ``microbatch`` images per device per compiled
call, so results do not depend on the batch. A device out-of-memory error
halves the images per device and retries the batch (recorded in ``stats``);
at the microbatch it stops the job (a smaller microbatch changes results:
the user chooses it with ``--microbatch``).

Each image size compiles its own program: padding to a few size buckets
would change what every victim's resize reads, hence the results (README,
*Images of many sizes*). The persistent compilation cache keeps each
program for later runs; past ``SIZES_WARNING`` sizes the user is told once.
"""
from __future__ import annotations

import threading

import numpy as np

from leat_jax import parallel
from leat_jax.pipeline import faults, writing
from leat_jax.pipeline.job import IN_FLIGHT, Context, Prepared, finite

# Distinct image sizes in a run after which the user is told that each compiles its own attack.
SIZES_WARNING = 8


class AlignedAttack:
    """Batches decoded crops by size, attacks them on the mesh, writes the results.

    Args:
      ctx: the job's context.
      victims, attack, params, seed: what the attack needs (``params`` replicated on ``mesh``).
      mesh: the devices' mesh.
      per_device: images per device per batch.
      say: shows a line of progress to the user (compilations, out-of-memory retries).
      warn: shows a warning (many image sizes) even where ``say`` is quiet; None: ``say``.
      microbatch: images per device per compiled call (``parallel.mesh_microbatch``).
    """

    def __init__(self, ctx: Context, victims, attack, params, seed: int, mesh, per_device: int, say,
                 microbatch: int = 1, warn=None):
        self.ctx, self.victims, self.attack, self.params, self.seed = ctx, victims, attack, params, seed
        self.mesh = mesh
        self.devices = int(mesh.devices.size)
        self.per_device = per_device
        self.microbatch = microbatch
        self.say = say
        self.warn = warn or say  # warnings show even where ``say`` (progress) is quiet
        self.buckets: dict[tuple[int, int], list[Prepared]] = {}
        self.compiled: set[tuple[int, int, int]] = set()
        self.out_of_memory: list[dict] = []
        self.lock = threading.Lock()
        self.in_flight = IN_FLIGHT

    @property
    def batch(self) -> int:
        return self.per_device * self.devices

    def inspect(self, got: Prepared) -> Prepared:
        return got

    def submit(self, got: Prepared) -> list:
        key = got.image.size
        self.buckets.setdefault(key, []).append(got)
        if len(self.buckets[key]) >= self.batch:
            return self.launch(self.buckets.pop(key))
        if sum(map(len, self.buckets.values())) > 4 * self.batch:  # images held before a partial batch goes
            largest = max(self.buckets, key=lambda k: len(self.buckets[k]))
            return self.launch(self.buckets.pop(largest))
        return []

    def flush(self) -> list:
        return [piece for key in sorted(self.buckets) for piece in self.launch(self.buckets.pop(key))]

    def launch(self, chunk: list[Prepared]) -> list:
        """Dispatch ``chunk`` in batches; a list of (images, batch, device results)."""
        todo, out = [chunk], []
        while todo:
            part = todo.pop(0)
            if len(part) > self.batch:
                todo[:0] = [part[: self.batch], part[self.batch:]]
                continue
            try:
                out.append((part, self.batch, self.dispatch(part)))
            except Exception as e:
                if not faults.is_out_of_memory(e):
                    raise
                self.shrink(len(part), e)
                todo.insert(0, part)
        return out

    def dispatch(self, part: list[Prepared]):
        batch = self.batch
        size = part[0].image.size
        if (*size, batch) not in self.compiled:
            self.say(f"leat-jax: compiling the attack for {size[1]}x{size[0]} images, batch {batch} "
                     "(once per image size)")
            self.compiled.add((*size, batch))
            if len(self.sizes()) == SIZES_WARNING:
                self.warn(f"leat-jax: warning: {SIZES_WARNING} image sizes so far; each compiles its own attack "
                         "(results depend on the size, so sizes are not padded into buckets); for fewer "
                         "compilations, resize the crops to one size first (compiled attacks are kept in the "
                         "compilation cache for later runs)")
        x = np.stack([p.x for p in part])
        ids = np.asarray([p.item.image_id for p in part], np.uint32)
        pad = batch - len(part)
        if pad:  # every batch of a size has one shape: one compilation, one program per image
            x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
            ids = np.concatenate([ids, np.repeat(ids[-1:], pad)])
        return parallel.sharded_attack(self.victims, self.attack, self.mesh, self.params, x, ids, self.seed,
                                       self.microbatch)

    def shrink(self, failed_batch: int, error: BaseException) -> None:
        """Halve the images per device after an out-of-memory error at ``failed_batch``."""
        with self.lock:
            if self.batch < failed_batch:
                return  # another thread shrank it already
            if self.per_device <= self.microbatch:
                raise faults.JobFailed(
                    f"device out of memory at {self.per_device} image(s) per device, the microbatch: "
                    f"try a smaller --microbatch ({str(error).strip().splitlines()[0]})"
                ) from None
            old = self.batch
            self.per_device = max(self.microbatch, self.per_device // 2)
            self.out_of_memory.append({"batch": old, "retried_at": self.batch})
        self.say(f"leat-jax: device out of memory at batch {old}; retrying at batch {self.batch}")

    def collect(self, launched) -> list[tuple[Prepared, np.ndarray, dict]]:
        """Wait for one batch: (input, protected image, distances) per image (an engine writes them)."""
        part, batch, result = launched
        try:
            protected = np.asarray(result.protected)
            d0, d1 = np.asarray(result.dist_start), np.asarray(result.dist_end)
        except Exception as e:
            if not faults.is_out_of_memory(e):
                raise
            self.shrink(batch, e)
            return [r for piece in self.launch(part) for r in self.collect(piece)]
        names = self.ctx.names
        return [
            (p, protected[i], {n: {"start": finite(d0[i, k]), "end": finite(d1[i, k])} for k, n in enumerate(names)})
            for i, p in enumerate(part)
        ]

    def finish(self, launched) -> list[dict]:
        """Wait for one batch; quantise, encode, check and write each image (writer threads)."""
        return [writing.write_image(self.ctx, p, x, d) for p, x, d in self.collect(launched)]

    def sizes(self) -> set[tuple[int, int]]:
        """The distinct image sizes attacked so far (each one compiled program per batch)."""
        return {(h, w) for h, w, _ in self.compiled}

    def stats(self) -> dict:
        return {"batch": self.batch, "image_sizes": len(self.sizes()), "out_of_memory": list(self.out_of_memory)}
