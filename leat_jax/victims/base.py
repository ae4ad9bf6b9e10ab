"""What a victim is: one network whose latent encoding the attack disrupts."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from leat_jax.faces.align import Rule

Params = Any
Latent = Any  # an array or a pytree of arrays


@dataclasses.dataclass(frozen=True)
class Victim:
    """A network under attack, as pure functions over plain pytrees.

    Images follow one convention everywhere: float32, NHWC, values in [-1, 1],
    any spatial size. ``preprocess`` turns them into exactly what the official
    network receives (size, normalisation); ``apply`` is the official network
    on that input, returning the latent the attack moves.

    Attributes:
      name: registry name, the golden folder's name (``e4e``, ``diffae``, ...).
      input_size: the official network's (height, width).
      preprocess: ``images -> official input`` (NHWC), differentiable.
      apply: ``(params, official input) -> latent``.
      init_params: ``seed -> params``, stand-in weights of the real architecture
        (for tests and demos; they protect against nothing).
      template: the parameter tree's shapes and dtypes (``ShapeDtypeStruct``).
      prepare: ``params -> params`` that ``apply`` also accepts, with the work
        that depends on the weights alone done ahead (the attack calls it once,
        outside its loop); identity by default.
      crop_rule: how ``--faces detect`` cuts this victim's crop from a photo
        (a ``leat_jax.faces.align.Rule``: its official alignment); None: the
        victim takes aligned crops only, and detection refuses it.
    """

    name: str
    input_size: tuple[int, int]
    preprocess: Callable[[jax.Array], jax.Array]
    apply: Callable[[Params, jax.Array], Latent]
    init_params: Callable[[int], Params]
    template: Params = dataclasses.field(default=None, compare=False, hash=False, repr=False)
    prepare: Callable[[Params], Params] = dataclasses.field(default=lambda params: params, compare=False, repr=False)
    crop_rule: Rule | None = None

    def encode(self, params: Params, images: jax.Array) -> Latent:
        return self.apply(params, self.preprocess(images))

    @classmethod
    def of(cls, network, *, name: str, input_size: tuple[int, int], preprocess, apply=None,
           crop_rule: Rule | None = None) -> "Victim":
        """A victim around a ``models.base.Functional`` network (``apply`` defaults to its own)."""
        return cls(name=name, input_size=input_size, preprocess=preprocess, apply=apply or network.apply,
                   init_params=network.init, template=network.template, prepare=network.prepare,
                   crop_rule=crop_rule)


def resize(images: jax.Array, size: tuple[int, int], method: str = "linear") -> jax.Array:
    """Differentiable resize of NHWC images, antialiased when shrinking.

    ``method`` "linear" is PIL's ``BILINEAR`` (torchvision's ``Resize`` on a
    PIL image), "cubic" PIL's ``BICUBIC``: the same filters, support scaled
    when shrinking (checked on random images in ``tests/test_preprocess_official.py``).
    Identity when the size already matches, so an aligned crop at the native
    size reaches the network untouched.
    """
    h, w = size
    if images.shape[1:3] == (h, w):
        return images
    shape = (images.shape[0], h, w, images.shape[3])
    return jax.image.resize(images, shape, method=method, antialias=True)


def to_unit(images: jax.Array) -> jax.Array:
    """[-1, 1] -> [0, 1]."""
    return (images + 1.0) * 0.5


def imagenet_normalize(images01: jax.Array) -> jax.Array:
    """[0, 1] RGB -> ImageNet mean/std normalisation (torchvision's constants)."""
    mean = jnp.asarray([0.485, 0.456, 0.406], images01.dtype)
    std = jnp.asarray([0.229, 0.224, 0.225], images01.dtype)
    return (images01 - mean) / std
