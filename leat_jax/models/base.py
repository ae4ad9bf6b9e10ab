"""Turning an NNX module into a pure function of a parameter pytree."""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from leat_jax.models import conv

Params = Any  # nested dict of arrays, as ``nnx.to_pure_dict`` gives


class Prepared(NamedTuple):
    """Parameters plus what the input gradient derives from them (``Functional.prepare``)."""

    params: Params
    input_grad_kernels: dict  # conv path ("a/0/conv") -> flipped HWIO kernel


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def _submodule(module, path):
    for k in path:
        module = module[k] if isinstance(k, int) else getattr(module, k)
    return module


class Functional:
    """A module factory seen as ``apply(params, *args)`` over plain pytrees.

    The module is only ever built abstractly (``nnx.eval_shape``), so creating
    one costs no memory however large the network is.
    """

    def __init__(self, factory: Callable[[nnx.Rngs], nnx.Module]):
        self._factory = factory
        abstract = nnx.eval_shape(lambda: factory(nnx.Rngs(0)))
        # Convolutions that take a ready-made input-gradient kernel (models.conv).
        self._convs = {"/".join(map(str, path)): path for path, m in nnx.iter_modules(abstract)
                       if isinstance(m, nnx.Conv) and m.conv_general_dilated is conv.conv_general_dilated}
        self.graphdef, state = nnx.split(abstract)
        self.template: Params = nnx.to_pure_dict(state)  # ShapeDtypeStruct leaves

    def apply(self, params: Params | Prepared, *args, **kwargs):
        if not isinstance(params, Prepared):
            return nnx.merge(self.graphdef, params)(*args, **kwargs)
        model = nnx.merge(self.graphdef, params.params)
        for key, w_t in params.input_grad_kernels.items():
            m = _submodule(model, self._convs[key])
            m.conv_general_dilated = functools.partial(conv.with_input_grad_kernel, w_t)
        return model(*args, **kwargs)

    def prepare(self, params: Params | Prepared) -> Prepared:
        """Work on the weights alone, done once before an attack's loop, not per iteration.

        XLA on CPU recomputes weight-only values inside a while loop each time
        round; the flipped kernels of every convolution's input gradient were
        a third of e4e's iteration (``models.conv``).
        """
        if isinstance(params, Prepared) or not self._convs:
            return params
        kernels = {key: conv.input_grad_kernel(_get(params, path)["kernel"]) for key, path in self._convs.items()}
        return Prepared(params, kernels)

    def init(self, seed: int = 0) -> Params:
        """Stand-in weights: the module's own initialisers, deterministic in seed.

        Jitted: one XLA program instead of hundreds of eager initialiser calls
        (a minute for e4e's 267 M parameters when eager).
        """
        factory = self._factory
        return jax.jit(lambda key: nnx.to_pure_dict(nnx.state(factory(nnx.Rngs(key)))))(jax.random.key(seed))


def cast_floating(params: Params, dtype) -> Params:
    """Cast every floating leaf (weights, BatchNorm statistics) to ``dtype``."""

    def cast(a):
        if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating):
            return jnp.asarray(a, dtype)
        return a

    return jax.tree.map(cast, params)
