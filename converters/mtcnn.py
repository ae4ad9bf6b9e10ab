"""MTCNN weights of facenet-pytorch 2.6.0 -> Flax parameters.

The package ships the real pretrained P-Net, R-Net and O-Net as three plain
state_dicts in the legacy (pre-1.6, non-zip) torch format:
``facenet_pytorch/data/{pnet,rnet,onet}.pt``. The package itself is not a
dependency (its pins would downgrade torch): the three members are read
straight out of the wheel, or out of a folder holding them (facenet_pytorch's
installed ``data`` folder, the package folder above it, or a copy).

Every key maps by name (the Flax modules use the official attribute names):
conv weights OIHW -> HWIO, dense weights transposed, PReLU slopes as they
are. The (W, H, C) flatten order of R-Net/O-Net stays in the model
(``leat_jax.models.mtcnn.wh_flatten``), so ``dense4``/``dense5`` are plain
transposes here.

Weights: MIT (Copyright (c) 2019 Timothy Esler), converted by facenet-pytorch
from davidsandberg/facenet's ``det1-3.npy``, from the Caffe/MATLAB MTCNN of
Zhang et al. 2016.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from converters.keymap import ConversionError, convert_state_dict

NETS = ("pnet", "rnet", "onet")
WHEEL_DIR = "facenet_pytorch/data"
WHEEL_NAME = "facenet_pytorch-2.6.0-py3-none-any.whl"
WHEEL_SHA256 = "ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca"
# sha256 of the members of the 2.6.0 wheel (the files this port was checked on)
MEMBER_SHA256 = {
    "pnet": "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f",
    "rnet": "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86",
    "onet": "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
}


def read_members(src) -> dict[str, tuple[str, bytes]]:
    """``{net: (display name, file bytes)}`` for the three files in ``src``.

    ``src``: the facenet-pytorch wheel (any zip holding
    ``facenet_pytorch/data/*.pt``), or a folder holding ``pnet.pt``,
    ``rnet.pt``, ``onet.pt`` (directly or under ``data/``).
    """
    src = Path(src)
    if not src.exists():
        raise ConversionError(
            f"{src}: no such file or folder "
            "(give the facenet-pytorch wheel or a folder with pnet.pt, rnet.pt, onet.pt)"
        )
    out = {}
    if src.is_dir():
        folder = src if (src / "pnet.pt").exists() or not (src / "data").is_dir() else src / "data"
        for net in NETS:
            path = folder / f"{net}.pt"
            if not path.is_file():
                raise ConversionError(f"{path}: missing (a folder source needs pnet.pt, rnet.pt and onet.pt)")
            out[net] = (str(path), path.read_bytes())
        return out
    try:
        with zipfile.ZipFile(src) as zf:
            names = set(zf.namelist())
            for net in NETS:
                member = f"{WHEEL_DIR}/{net}.pt"
                if member not in names:
                    raise ConversionError(f"{src}: no member {member} (not a facenet-pytorch wheel?)")
                out[net] = (f"{src}!{member}", zf.read(member))
    except zipfile.BadZipFile:
        raise ConversionError(
            f"{src}: not a zip file (give the facenet-pytorch wheel or a folder with pnet.pt, rnet.pt, onet.pt)"
        ) from None
    return out


def _load_state_dict(display: str, data: bytes) -> Mapping[str, np.ndarray]:
    """One legacy torch file, read by the project's safe loader (it wants a path)."""
    from converters import torch_io

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "member.pt"
        path.write_bytes(data)
        try:
            obj = torch_io.load(path)
        except torch_io.CheckpointReadError as e:
            raise type(e)(str(e).replace(str(path), display)) from None
    if not (isinstance(obj, Mapping) and obj and all(isinstance(v, np.ndarray) for v in obj.values())):
        raise ConversionError(f"{display}: expected a state_dict (a dict of tensors), found {type(obj).__name__}")
    return obj


def state_dicts_to_params(
    state_dicts: Mapping[str, Mapping[str, np.ndarray]], sources: Mapping[str, str] | None = None
) -> dict:
    """``{net: state_dict}`` -> ``{net: Flax params}``; exact key and shape match per net."""
    from leat_jax.models import mtcnn

    template = mtcnn.mtcnn().template
    sources = sources or {}
    return {
        net: convert_state_dict(state_dicts[net], template[net], source=sources.get(net, f"{net}.pt"))
        for net in NETS
    }


def to_params(src) -> dict:
    """The parameters of all three nets, ``{"pnet", "rnet", "onet"}``, from a wheel or folder."""
    members = read_members(src)
    sds = {net: _load_state_dict(display, data) for net, (display, data) in members.items()}
    return state_dicts_to_params(sds, {net: display for net, (display, _) in members.items()})


def source_meta(src) -> dict:
    """What ``meta.json`` records of the source: the sha256 of each member file."""
    members = read_members(src)
    digests = {net: hashlib.sha256(data).hexdigest() for net, (_, data) in members.items()}
    return {
        "source_members_sha256": digests,
        "source_is_facenet_pytorch_2_6_0": digests == MEMBER_SHA256,
    }


# ``converters.convert`` hands SRC itself (a wheel or folder, not one torch file) to this converter.
to_params.reads_source = True
to_params.source_meta = source_meta


def params_digest(params) -> str:
    """sha256 over the parameter arrays (sorted flat keys, float32 little-endian bytes)."""
    from leat_jax.checkpoints import flatten

    h = hashlib.sha256()
    for key, value in sorted(flatten(params).items()):
        h.update(key.encode() + b"\0")
        h.update(np.ascontiguousarray(value, "<f4").tobytes())
    return h.hexdigest()


def write_shipped(src, folder) -> dict:
    """Write the package's copy of the weights (``params.npz`` + ``meta.json``) into ``folder``.

    How ``leat_jax/faces/weights/mtcnn`` was made (from the 2.6.0 wheel):
    ``python -c "from converters.mtcnn import write_shipped; write_shipped('facenet_pytorch-2.6.0-py3-none-any.whl', 'leat_jax/faces/weights/mtcnn')"``.
    """  # noqa: E501
    from converters import CONVERTER_VERSION
    from leat_jax.checkpoints import flatten

    params = to_params(src)
    meta = {
        "model": "mtcnn",
        "source": f"facenet-pytorch 2.6.0 wheel ({WHEEL_NAME}), members {WHEEL_DIR}/{{pnet,rnet,onet}}.pt",
        "source_wheel_sha256": WHEEL_SHA256,
        **source_meta(src),
        "params_sha256": params_digest(params),
        "converter_version": CONVERTER_VERSION,
        "license": "MIT (Copyright (c) 2019 Timothy Esler), see LICENSE-facenet-pytorch.txt",
    }
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "params.npz", **{k: np.asarray(v, np.float32) for k, v in sorted(flatten(params).items())})
    (folder / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta
