"""Per-network support for the golden cases (test code: may use torch).

One module per golden folder, named as the folder, exposing:

- ``NAME``: the golden folder and victim name;
- ``OUTPUT``: which ``out_<OUTPUT>`` / ``grad_<OUTPUT>`` arrays to compare;
- ``CHECKPOINT_NAME``: the official file's name;
- ``write_checkpoint(path, layout, seed, case)``: rebuild the recipe weights
  for ``seed`` and write them as the official file is structured;
- optional ``to_golden(latent) -> array``: our latent in the golden layout
  (e.g. NHWC -> NCHW); identity by default;
- optional ``apply(victim, params, x, case) -> latent``: when the case fixes
  something beyond ``x`` (defaults to ``victim.apply(params, x)``);
- optional ``X64 = True``: compare in float64 (JAX x64 mode, own process);
- optional ``torch_forward(state_dict, x_nchw, case) -> torch output``: the
  torch reference of ``benchmarks/``, checked on the same case.

A pipeline (whose inputs are not one image) instead defines
``check(case_path, workdir) -> [{"what", "dtype", "out_err", "grad_err"
(or None), optional "out_tol", "grad_tol"}]``: it writes the official file,
converts it with our converter, runs our port and measures the errors; the
test asserts them (default tolerances from the golden README).
"""
import importlib
import pkgutil


def ported() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def support(name: str):
    return importlib.import_module(f"{__name__}.{name}")
