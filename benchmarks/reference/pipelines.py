"""Whole deepfake pipelines in PyTorch, wired as the official inference scripts wire them.

The networks are this folder's modules (``simswap``, ``icface``); what this
module adds is the wiring between them: which input feeds which network, in
which range and at which size. Each step cites the official file and line it
follows (SimSwap at commit bd7b768, ICface at 3b9fad8). Images enter and leave
in the project's convention, NCHW in [-1, 1], already at the official input
size (224 aligned crops for SimSwap, 128 for ICface), so what is compared is
the wiring and the networks, not a resize. Used by
``tests/test_pipeline_references.py`` against ``leat_jax.deepfakes``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks.reference.simswap import ArcFaceResNet, Generator

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_tensor_range(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], the range ``transforms.ToTensor()`` gives an image file."""
    return (x + 1) / 2


def simswap_latent_id(arcface: ArcFaceResNet, source: torch.Tensor) -> torch.Tensor:
    """SimSwap ``test_one_image.py``: the identity of the source face (``pic_a``)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=source.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=source.dtype).view(1, 3, 1, 1)
    img_id = (to_tensor_range(source) - mean) / std  # transformer_Arcface, lines 20-23 and 42
    img_id_downsample = F.interpolate(img_id, size=(112, 112))  # line 56 (default mode: nearest)
    latent_id = arcface(img_id_downsample)  # line 57
    return latent_id / torch.linalg.norm(latent_id, dim=1, keepdim=True)  # line 59


def simswap_swap(generator: Generator, arcface: ArcFaceResNet, source: torch.Tensor, target: torch.Tensor):
    """SimSwap ``test_one_image.py``: ``source``'s identity onto ``target``, both aligned 224 crops in [-1, 1].

    Returns:
        The swapped 224 crop, in [-1, 1].
    """
    latent_id = simswap_latent_id(arcface, source)
    img_att = to_tensor_range(target)  # transformer (ToTensor only), lines 15-18 and 48
    # model(img_id, img_att, latend_id, latend_id, True), line 64 -> fsModel.forward: netG.forward(img_att,
    # latent_id) and, not training, returned as is (models/fs_model.py lines 151-153); G ends with
    # (x + 1) / 2 (models/fs_networks.py line 160).
    img_fake = generator(img_att, latent_id)
    return img_fake * 2 - 1  # [0, 1] -> the project's [-1, 1]


def icface_reenact(neutralizer, generator, image: torch.Tensor, param_b: torch.Tensor) -> torch.Tensor:
    """ICface ``test_code_released_new``: one driving frame ``param_b`` (N, 20), normalised as
    ``data/aligned_dataset.py`` lines 47-48 do, animating ``image`` (the loader's 128 crop in [-1, 1],
    lines 40-42).

    Returns:
        The reenacted frame, tanh range ([-1, 1]).
    """
    # models/pix2pix_model.py lines 151-154: the neutral vector is the frame's own, scaled by 1e-5, with the
    # pose set to frontal (0.5); lines 156: netGN on cat[image, its planes].
    aun = param_b / 100000
    aun[:, 0:3] = 0.5
    fake_b = neutralizer(image, aun)
    # lines 160-161 and 166: netG on cat[neutral face, the frame's planes].
    return generator(fake_b, param_b)
