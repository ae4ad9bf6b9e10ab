"""Reading official PyTorch checkpoint files without executing anything in them.

Official files are pickles. Some hold plain state_dicts, some whole
``nn.Module`` objects whose classes live in repositories we do not import
(SimSwap's ArcFace), some PyTorch Lightning dicts with optimizer states and
hyper-parameter objects (DiffAE). We read them all with ``torch.load``'s own
storage handling, both the zip format (torch >= 1.6) and the legacy one, but
through a restricted unpickler:

* tensor and container rebuilders on an allow-list are real;
* any global from a module that can run code (``os``, ``subprocess``,
  ``builtins.eval``...) is refused with ``UnsafeCheckpointError``;
* every other global (``torch.nn.modules.conv.Conv2d``,
  ``models.arcface_models.ResNet``, Lightning callbacks...) becomes an inert
  stand-in class that only records what the pickle gives it.

So nothing named by the file is ever called, whatever the file says.
"""
from __future__ import annotations

import collections
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np


class CheckpointReadError(ValueError):
    """A checkpoint file cannot be read (missing, truncated, not a torch file)."""


class UnsafeCheckpointError(CheckpointReadError):
    """A checkpoint asks to run code on load; nothing was run."""


# Modules whose globals a weight file has no reason to name: a pickle that
# does is refused outright, so the user hears about it.
_DENIED_ROOTS = frozenset(
    {
        "os", "posix", "nt", "subprocess", "sys", "shutil", "socket", "importlib", "runpy",
        "pickle", "_pickle", "marshal", "types", "ctypes", "code", "codeop", "pty", "webbrowser",
        "multiprocessing", "threading", "signal", "io", "_io", "pathlib", "tempfile", "glob",
        "functools", "operator", "inspect", "builtins", "__builtin__", "platform", "pdb",
        "timeit", "asyncio", "urllib", "http", "ftplib", "smtplib", "telnetlib", "requests",
        "commands", "popen2", "posixpath", "ntpath", "site", "sysconfig", "zipimport",
    }
)

_SAFE_BUILTINS = {"set": set, "frozenset": frozenset, "slice": slice, "complex": complex,
                  "bytearray": bytearray, "object": object, "tuple": tuple, "list": list,
                  "dict": dict, "int": int, "float": float, "bool": bool, "str": str, "bytes": bytes}


class Stub:
    """Inert stand-in for a class named by a checkpoint: records, never acts."""

    _stub_name = "?"

    def __init__(self, *args, **kwargs):
        self.__dict__["_stub_args"] = args
        self.__dict__["_stub_kwargs"] = kwargs

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], (dict, type(None))):
            state = {**(state[0] or {}), **(state[1] or {})}  # (dict, slots) form
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_stub_state"] = state

    def __repr__(self):
        return f"<stand-in {self._stub_name}>"


def _safe_reconstructor(cls, base, state):
    if not (isinstance(cls, type) and issubclass(cls, Stub)):
        raise UnsafeCheckpointError(f"copyreg._reconstructor on {cls!r}")
    return object.__new__(cls)


def _allowed(module: str, name: str):
    import torch

    table = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("collections", "defaultdict"): collections.defaultdict,
        ("copyreg", "_reconstructor"): _safe_reconstructor,
        ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
        ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
        ("numpy.core.multiarray", "_reconstruct"): np.core.multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): np.core.multiarray._reconstruct,
        ("numpy.core.multiarray", "scalar"): np.core.multiarray.scalar,
        ("numpy._core.multiarray", "scalar"): np.core.multiarray.scalar,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): __import__("codecs").encode,
    }
    if (module, name) in table:
        return table[(module, name)]
    if module == "torch" and name in {"float32", "float64", "float16", "bfloat16", "int64", "int32", "uint8", "bool"}:
        return getattr(torch, name)
    if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
        return _SAFE_BUILTINS[name]
    return None


class _RestrictedUnpickler(pickle.Unpickler):
    _stubs: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str):
        real = _allowed(module, name)
        if real is not None:
            return real
        if module.split(".")[0] in _DENIED_ROOTS:
            raise UnsafeCheckpointError(
                f"the file asks to call {module}.{name} while loading; "
                "a weight file has no reason to, so it was refused and nothing ran"
            )
        key = (module, name)
        if key not in self._stubs:
            self._stubs[key] = type(
                name, (Stub,), {"_stub_name": f"{module}.{name}", "__module__": "converters.torch_io.stubs"}
            )
        return self._stubs[key]


class _RestrictedPickleModule:
    """What ``torch.load(pickle_module=...)`` needs: Unpickler and load."""

    __name__ = "leat_restricted_pickle"
    Unpickler = _RestrictedUnpickler

    @staticmethod
    def load(f, **kwargs):
        return _RestrictedUnpickler(f, **kwargs).load()


def load(path) -> Any:
    """The object pickled in ``path``, tensors as numpy arrays, classes as stand-ins."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointReadError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    if path.stat().st_size == 0:
        raise CheckpointReadError(f"{path}: empty file")
    try:
        with warnings.catch_warnings():  # legacy files: "couldn't retrieve source code" of stand-ins
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", pickle_module=_RestrictedPickleModule, weights_only=False)
    except UnsafeCheckpointError as e:
        raise UnsafeCheckpointError(f"{path}: {e}") from None
    except Exception as e:  # truncated zip, bad magic number, unpickling errors...
        raise CheckpointReadError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None
    return to_numpy(obj)


def to_numpy(obj):
    """Tensors -> float32/int64 numpy arrays, recursively through containers and stand-ins."""
    import torch

    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        if t.dtype in (torch.float16, torch.bfloat16, torch.float64):
            t = t.float()
        return t.numpy().copy()
    if isinstance(obj, dict):
        return type(obj)((k, to_numpy(v)) for k, v in obj.items()) if isinstance(obj, collections.OrderedDict) else {
            k: to_numpy(v) for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_numpy(v) for v in obj) if not hasattr(obj, "_fields") else obj
    if isinstance(obj, Stub):
        for k, v in list(obj.__dict__.items()):
            obj.__dict__[k] = to_numpy(v)
    return obj


def module_state_dict(module: Stub, prefix: str = "") -> dict[str, np.ndarray]:
    """``state_dict()`` of a pickled ``nn.Module`` read as stand-ins.

    Walks ``_parameters``, ``_buffers`` and ``_modules`` in order, as torch's
    own ``state_dict`` does (non-persistent buffers excluded).
    """
    if not isinstance(module, Stub) or "_modules" not in module.__dict__:
        raise CheckpointReadError(f"expected a pickled torch module, found {type(module).__name__}")
    d = module.__dict__
    out: dict[str, np.ndarray] = {}
    for name, p in (d.get("_parameters") or {}).items():
        if p is not None:
            out[prefix + name] = p
    skip = set(d.get("_non_persistent_buffers_set") or ())
    for name, b in (d.get("_buffers") or {}).items():
        if b is not None and name not in skip:
            out[prefix + name] = b
    for name, child in (d.get("_modules") or {}).items():
        if child is not None:
            out.update(module_state_dict(child, prefix + name + "."))
    return out


def stub_class_name(obj) -> str | None:
    """The dotted name a stand-in (instance or class) replaces; None for real objects."""
    cls = obj if isinstance(obj, type) else type(obj)
    return getattr(cls, "_stub_name", None) if issubclass(cls, Stub) else None
