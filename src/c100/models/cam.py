"""Class-activation maps: where in an image a network found the evidence for a class.

Grad-CAM (Selvaraju et al. 2017, arXiv:1610.02391): the feature maps of the last layer that still has a
spatial extent, weighted by the mean gradient of the class's logit over each map, summed over channels
and kept where positive. Computed by captum's LayerGradCam (captum 0.9 imports beside torch without
torchvision, unlike grad-cam 1.5, which pulls torchvision and its own torch), then upsampled to the
image's 32 x 32 pixels. The layer is found by one forward pass with hooks, so every registered
architecture (and a test's tiny network) gets its maps without a per-model table.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from c100 import UserError


def cam_layer(net: nn.Module, x: torch.Tensor, name: str | None = None) -> nn.Module:
    """The module whose output Grad-CAM weighs: `name` if given, else the last module to finish whose
    output is a feature map larger than 1 x 1 (ResNet's layer4, VGG's last ReLU): the last one that still
    says where, with the most class-specific features."""
    modules = dict(net.named_modules())
    if name is not None:
        if name not in modules or name == "":
            raise UserError(f"no layer '{name}' in the network; its layers: {', '.join(n for n in modules if n)}")
        return modules[name]
    finished: list[nn.Module] = []

    def record(module, inputs, output):
        if isinstance(output, torch.Tensor) and output.ndim == 4 and output.shape[2] * output.shape[3] > 1:
            finished.append(module)

    hooks = [m.register_forward_hook(record) for n, m in modules.items() if n]
    try:
        with torch.no_grad():
            net(x[:1])
    finally:
        for h in hooks:
            h.remove()
    if not finished:
        raise UserError("the network has no layer with a spatial feature map to explain")
    return finished[-1]


def grad_cam(net: nn.Module, x: torch.Tensor, targets: torch.Tensor, layer: nn.Module, size: int = 32) -> torch.Tensor:
    """Grad-CAM maps, N x k x size x size, non-negative and not normalised, of the network input `x`
    (normalised, at the network's input size) for the classes `targets` (N x k indices)."""
    try:
        from captum.attr import LayerGradCam
    except ImportError:
        raise UserError("explanations need captum; pip install 'captum>=0.9'") from None
    gc = LayerGradCam(net, layer)
    maps = []
    with torch.enable_grad():
        for j in range(targets.shape[1]):
            m = gc.attribute(x, target=targets[:, j].tolist(), relu_attributions=True).detach().float()
            maps.append(F.interpolate(m, size=(size, size), mode="bilinear", align_corners=False))
    return torch.cat(maps, 1).clamp_min(0)
