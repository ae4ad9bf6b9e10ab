"""Whole deepfake pipelines in PyTorch, wired as the official inference scripts wire them.

The networks are this folder's modules (``simswap``, ``icface``, ``e4e``,
``stylegan2``, ``diffae``); what this module adds is the wiring between them:
which input feeds which network, in which range and at which size. Each step
cites the official file and line it follows (SimSwap at commit bd7b768, ICface
at 3b9fad8, StyleCLIP at f87a47f, encoder4editing at 99ea505, DiffAE at
00c57d3). Images enter and leave in the project's convention, NCHW in [-1, 1],
already at the official input size (224 aligned crops for SimSwap, 128 for
ICface, 256 for e4e, the model's size for DiffAE), so what is compared is the
wiring and the networks, not a resize. Used by
``tests/test_pipeline_references.py`` against ``leat_jax.deepfakes``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.reference.diffae import ConditionalUNet, SemanticEncoder
from benchmarks.reference.e4e import E4EReference
from benchmarks.reference.simswap import ArcFaceResNet, Generator
from benchmarks.reference.stylegan2 import Generator as StyleGAN2
from benchmarks.reference.stylegan2 import LevelsMapper

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


def styleclip_edit(e4e: E4EReference, mapper: LevelsMapper, generator: StyleGAN2, images: torch.Tensor,
                   randomize_noise: bool = False) -> torch.Tensor:
    """StyleCLIP's latent-mapper edit of 256 faces in [-1, 1] (e4e's inference transform already applied).

    Returns:
        G's raw image (no clamp) pooled to 256.
    """
    # encoder4editing scripts/inference.py lines 66-72 (get_latents): codes = net.encoder(x) + latent_avg
    # (start_from_latent_avg); the input is configs/transforms_config.py lines 32-35, Resize 256 and [-1, 1].
    w = e4e(images)
    # StyleCLIP mapper/scripts/inference.py line 98: w_hat = w + 0.1 * net.mapper(w), the LevelsMapper of
    # mapper/latent_mappers.py lines 61-80 (slots 0-3, 4-7, 8-17).
    w_hat = w + 0.1 * mapper(w)
    # lines 99-100: net.decoder([w_hat], input_is_latent=True, randomize_noise=False, truncation=1).
    image = generator(w_hat, randomize_noise=randomize_noise)
    # mapper/styleclip_mapper.py line 22 (and e4e's models/psp.py lines 86-87): face_pool, AdaptiveAvgPool2d 256.
    return F.adaptive_avg_pool2d(image, (256, 256))


def ddim_schedule(count: int, num_timesteps: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """(kept original timesteps, their alpha-bar) of the respaced sampler ``_make_diffusion_conf(count)``, float64."""
    # diffusion/base.py lines 959-968: get_named_beta_schedule('linear', 1000); base.py line 73: alpha-bar.
    scale = 1000 / num_timesteps
    base = np.cumprod(1.0 - np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64))
    # diffusion/diffusion.py lines 28-32: 'ddim<count>' keeps range(0, T, stride), the first stride that fits.
    stride = next(i for i in range(1, num_timesteps) if len(range(0, num_timesteps, i)) == count)
    kept = list(range(0, num_timesteps, stride))
    # diffusion/diffusion.py lines 84-92: betas re-derived from alpha-bar at the kept steps.
    last, betas = 1.0, []
    for abar in base[kept]:
        betas.append(1 - abar / last)
        last = abar
    return np.asarray(kept), np.cumprod(1.0 - np.asarray(betas))


def ddim_step(unet: ConditionalUNet, x: torch.Tensor, t: int, abar: float, abar_to: float, cond: torch.Tensor):
    """One deterministic DDIM step (eta 0) from alpha-bar ``abar`` at original timestep ``t`` to ``abar_to``."""
    # diffusion/diffusion.py lines 139-153 (_WrappedModel): the UNet sees the original timestep.
    eps = unet(x, torch.full((x.shape[0],), t, dtype=torch.long), cond)
    recip, recipm1 = math.sqrt(1 / abar), math.sqrt(1 / abar - 1)
    x0 = (recip * x - recipm1 * eps).clamp(-1, 1)  # base.py lines 332-345 and 363-368, clip_denoised=True
    eps = (recip * x - x0) / recipm1  # base.py lines 617 and 658-660: eps re-derived from the clamped x0
    return x0 * math.sqrt(abar_to) + math.sqrt(1 - abar_to) * eps  # base.py lines 626-627 and 665-666


def diffae_edit(encoder: SemanticEncoder, unet: ConditionalUNet, classifier: dict, images: torch.Tensor,
                attribute: int, alpha: float, inversion_steps: int, render_steps: int) -> torch.Tensor:
    """DiffAE's ``manipulate.ipynb``: one attribute edit of faces at the model's size, in [-1, 1].

    ``classifier``: ``ClsModel``'s ``conds_mean``, ``conds_std`` (1, D) and ``classifier.weight`` (40, D).

    Returns:
        The render, in [-1, 1] (the notebook's image before ``LitModel.render``'s ``(x + 1) / 2``).
    """
    # manipulate.ipynb line 114 (cell 6): cond = model.encode(batch), the EMA encoder (experiment.py line 144);
    # the batch is dataset.py lines 47-56 (Resize, CenterCrop, Normalize 0.5): [-1, 1] at the model's size.
    cond = encoder(images)
    # line 115: xT = model.encode_stochastic(batch, cond, T), i.e. experiment.py lines 147-155,
    # ddim_reverse_sample_loop (diffusion/base.py lines 685-697): steps 0 .. T-1, target alpha-bar next (0 last).
    kept, abar = ddim_schedule(inversion_steps)
    x = images
    for i in range(inversion_steps):
        x = ddim_step(unet, x, int(kept[i]), abar[i], abar[i + 1] if i + 1 < len(abar) else 0.0, cond)
    # lines 193-195 (cell 10): normalise, step alpha * sqrt(512) along the unit classifier row, denormalise
    # (experiment_classifier.py lines 104-112); sqrt of the z_sem width, 512 for the released models.
    mean, std = classifier["conds_mean"], classifier["conds_std"]
    row = F.normalize(classifier["classifier.weight"][attribute][None, :], dim=1)
    cond2 = ((cond - mean) / std + alpha * math.sqrt(cond.shape[1]) * row) * std + mean
    # line 220 (cell 11): model.render(xT, cond2, T), i.e. experiment.py lines 120-139 -> renderer.py lines
    # 56-58 -> ddim_sample_loop (base.py lines 776-807): steps T-1 .. 0, target alpha-bar prev (1 first).
    kept, abar = ddim_schedule(render_steps)
    for i in reversed(range(render_steps)):
        x = ddim_step(unet, x, int(kept[i]), abar[i], abar[i - 1] if i else 1.0, cond2)
    return x
