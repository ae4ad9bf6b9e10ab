"""``benchmarks.generator_start`` keeps learned weights under a name that changes with what they depend on."""
from __future__ import annotations

import dataclasses

from benchmarks.generator_start import cache_name, network
from leat_jax.attack.universal import LearnConfig
from leat_jax.models.start_generator import GeneratorArch

ARCH = GeneratorArch(8, 1, 32)
LEARN = LearnConfig(steps=10, batch=4, rule="adam", rate=0.001)


def name(arch=ARCH, template=None, learn=LEARN, victims=("simswap_id",), faces=12) -> str:
    return cache_name(arch, network(arch).template if template is None else template, learn, victims, faces)


def test_the_weights_cache_name_changes_with_the_architecture_the_victims_and_the_learning():
    base = name()
    assert base == name() and base.startswith("generator-r0.001-") and base.endswith(".npz")
    changed = [name(GeneratorArch(16, 1, 32)), name(GeneratorArch(8, 2, 32)), name(GeneratorArch(8, 1, 64)),
               name(learn=dataclasses.replace(LEARN, steps=20)), name(learn=dataclasses.replace(LEARN, size=128)),
               name(victims=("simswap_G",)), name(faces=13),
               # the same fields, other layers (the generator's code changed): its parameter tree tells
               name(template=network(GeneratorArch(16, 1, 32)).template)]
    assert base not in changed and len(set(changed)) == len(changed)
