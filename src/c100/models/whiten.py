"""Data-dependent initialisation of the stem: its 3x3 filters start as the whitening transform of
3x3 training patches (Page 2019, "How to train your ResNet"; Jordan 2024, airbench).

The first convolution then starts out decorrelating the pixels of each patch, the change that
speeds up early training most in those short-budget CIFAR recipes. Only the initial values change:
the architecture, the parameter count and the state dict stay those of the model.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from c100 import UserError
from c100.models.cpu_conv import unfold_patches

EPS = 5e-4  # added to the eigenvalues: caps the gain of the weakest (noisiest) patch directions


def patch_covariance(images: torch.Tensor, kernel: int = 3) -> torch.Tensor:
    """(C*k*k, C*k*k) second moments of every k x k patch of normalised images (N, C, H, W), in float64."""
    d = images.shape[1] * kernel * kernel
    total, count = torch.zeros(d, d, dtype=torch.float64, device=images.device), 0
    for chunk in images.split(256):  # 256 images of 32 px: 230k patches, 50 MB in float64
        patches = unfold_patches(chunk.double(), (kernel, kernel), (1, 1), (0, 0))  # in a conv weight's order
        total += patches.t() @ patches
        count += len(patches)
    return total / count


def whitening_filters(images: torch.Tensor, kernel: int = 3, eps: float = EPS) -> torch.Tensor:
    """(2*C*k*k, C, k, k) filters: each eigenvector of the patch covariance scaled by 1/sqrt(eigenvalue
    + eps), then its negation (so a ReLU after them loses no direction), strongest directions first."""
    eigval, eigvec = torch.linalg.eigh(patch_covariance(images, kernel))
    eigval, eigvec = eigval.flip(0), eigvec.flip(1)  # eigh sorts ascending
    w = (eigvec / (eigval.clamp(min=0) + eps).sqrt()).t()  # row i = direction i, whitened
    w = torch.cat([w, -w]).view(-1, images.shape[1], kernel, kernel)
    return w.float()


def stem_conv(model: nn.Module, flag: str = "--whiten-stem") -> nn.Conv2d:
    """The model's first convolution (it reads the image)."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None or conv.groups != 1:
        raise UserError(f"{flag} needs a model whose first layer is a plain convolution; drop the flag")
    return conv


@torch.no_grad()
def whiten_stem(model: nn.Module, images: torch.Tensor) -> int:
    """Set the stem's first filters to the whitening filters of `images` (normalised, N x C x H x W) and
    keep the rest of its random initialisation; returns how many filters were set."""
    conv = stem_conv(model)
    k = conv.kernel_size[0]
    if conv.kernel_size != (k, k) or conv.in_channels != images.shape[1]:
        raise UserError(f"--whiten-stem needs a square stem over {images.shape[1]} channels, not the "
                        f"{tuple(conv.weight.shape)} weight of this model; drop the flag")
    w = whitening_filters(images, k).to(conv.weight.device)
    n = min(len(w), conv.out_channels)
    conv.weight[:n] = w[:n]
    return n
