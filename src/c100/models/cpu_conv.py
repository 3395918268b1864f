"""A faster convolution backward for small feature maps on CPUs.

On an AVX2 CPU oneDNN computes the weight gradient of a 3x3 convolution on a tiny map very slowly:
for ResNet18's last stage at 16 px training (512 channels, 2x2 pixels, batch 64) it takes 121 ms,
against 18 ms as one GEMM over the unfolded input patches, and 16 ms for the forward pass
(benchmarks/results/archive/conv-backward-cpu-class-swap.json). On larger maps oneDNN wins. A whole
training step ran 1.37x faster at 16 px, 1.03x at 24 px and 1.02x at 32 px there; on a later, faster
AMD EPYC whose oneDNN ran the step 1.9x faster, 1.11x at 16 px and the same at 24 and 32 px
(benchmarks/results/records/conv-backward-cpu.json). So the GEMM path keeps
oneDNN for the forward pass and the input gradient, and computes the weight gradient as a GEMM when
the output map has at most `MAX_GEMM_PIXELS` pixels. Same math, so same results up to float rounding.
The training step enters `gemm_weight_grad()`, a torch function mode that routes the model's own
F.conv2d calls through it; the model itself stays plain nn.Conv2d.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

MAX_GEMM_PIXELS = 16  # 4x4 and below: 512 ch at 4x4 71 vs 131 ms; 256 ch at 4x4 about even (21 vs 18)


def unfold_patches(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
                   padding: tuple[int, int]) -> torch.Tensor:
    """(N*Ho*Wo, C*kh*kw) rows of input patches, in the weight's (C, kh, kw) order."""
    n, c = x.shape[:2]
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    p = F.pad(x, (pw, pw, ph, ph)).permute(0, 2, 3, 1).unfold(1, kh, sh).unfold(2, kw, sw)  # N, Ho, Wo, C, kh, kw
    return p.reshape(-1, c * kh * kw)


def weight_grad_gemm(x: torch.Tensor, grad: torch.Tensor, weight_shape: torch.Size, stride: tuple[int, int],
                     padding: tuple[int, int]) -> torch.Tensor:
    """dL/dW of a convolution as one GEMM: (N*Ho*Wo, Cout)^T @ (N*Ho*Wo, Cin*kh*kw)."""
    rows = grad.permute(0, 2, 3, 1).reshape(-1, grad.shape[1])
    return (rows.t() @ unfold_patches(x, weight_shape[2:], stride, padding)).view(weight_shape)


class _GemmWeightGradConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None
        return F.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        small = grad.shape[2] * grad.shape[3] <= MAX_GEMM_PIXELS
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad, x, weight, [weight.shape[0]] if ctx.has_bias else None, list(ctx.stride), list(ctx.padding),
            [1, 1], False, [0, 0], 1, [need_x, need_w and not small, need_b and ctx.has_bias])
        if need_w and small:
            grad_w = in_layout_of(weight, weight_grad_gemm(x, grad, weight.shape, ctx.stride, ctx.padding))
        return grad_x, grad_w, grad_b, None, None


def in_layout_of(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """`grad` with exactly the strides of `weight` (channels-last or not). Autograd's layout contract ignores
    the strides of size-1 dimensions, so it keeps a contiguous grad of a channels-last 1x1 weight as it is;
    DDP's gradient buckets are views with the parameter's exact strides, and a grad that differs from its
    bucket view (here only those of the 1x1 downsample convolutions) makes DDP warn "Grad strides do not
    match bucket view strides" and copy it the slow way. For a 3x3 weight this is the copy autograd would
    make anyway; for a 1x1 weight a small one."""
    if grad.stride() == weight.stride():
        return grad
    return torch.empty_like(weight).copy_(grad)


class GemmWeightGrad(TorchFunctionMode):
    """Within this context, every plain 2-D convolution (no groups or dilation, zero padding) run with
    gradients in fp32 on the CPU takes the GEMM weight gradient for small maps. The model is not
    touched: it stays a model of nn.Conv2d, which is what torch.fx, export and checkpoints expect.
    Under autocast (bf16) the convolutions run as before."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv2d and not kwargs and _plain(*args):
            x, weight, bias, stride, padding = args[:5]
            return _GemmWeightGradConv.apply(x, weight, bias, _pair(stride), _pair(padding))
        return func(*args, **kwargs)


def _plain(x=None, weight=None, bias=None, stride=1, padding=0, dilation=1, groups=1) -> bool:
    return (isinstance(x, torch.Tensor) and torch.is_grad_enabled() and x.device.type == "cpu"
            and x.dtype == torch.float32 and weight.dtype == torch.float32 and weight.requires_grad
            and not torch.is_autocast_enabled("cpu") and groups == 1 and _pair(dilation) == (1, 1)
            and not isinstance(padding, str))


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def gemm_weight_grad(enabled: bool = True):
    """The context the CPU training step runs in (a no-op context when not enabled)."""
    return GemmWeightGrad() if enabled else contextlib.nullcontext()
