"""Convolutions on small feature maps as plain matrix products, for the CPU training step.

oneDNN is slow on tiny maps, in every direction and in both precisions. ResNet18's last stage at
16 px training (512 channels, 2x2 pixels, batch 64) is 1.2 GFLOP per pass, a 256 x 4608 x 512 matrix
product that runs in 0.95 ms at the bf16 rate of an Intel Xeon with AMX (1,300 GFLOP/s on 2 cores);
oneDNN takes 6.6 ms for its forward pass, 7.1 ms for the input gradient and 15.7 ms for the weight
gradient in bf16 (16.8 / 20.3 / 22.8 ms in fp32). Computed as GEMMs over a matrix of input patches,
the three take 4.6 ms in all in bf16 (13.6 ms in fp32): 6.4x and 4.4x faster. On maps of 36 pixels
and more oneDNN is as fast or faster (benchmarks/results/records/roofline-cpu-*.json). An AVX2-only
AMD EPYC showed the same for the weight gradient alone (121 ms against 18 ms,
benchmarks/results/archive/conv-backward-cpu-class-swap.json).

So, on maps of at most `MAX_GEMM_PIXELS` output pixels, the training step computes each convolution
(forward, input gradient, weight gradient) as GEMMs in the precision it runs in: bf16 under bf16
autocast (inputs and weight cast as autocast would), else fp32. Same math, so the same results up to
float rounding. The step enters `small_map_gemm()`, a torch function mode that routes the model's
own F.conv2d calls through it; the model itself stays plain nn.Conv2d (what torch.fx, export and
checkpoints expect), and inference (no gradients) runs oneDNN's convolutions as before.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

MAX_GEMM_PIXELS = 16  # up to 4x4 output maps; 6x6 (256 channels) was even with oneDNN on the AMX Xeon


def unfold_patches(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
                   padding: tuple[int, int]) -> torch.Tensor:
    """(N*Ho*Wo, C*kh*kw) rows of input patches, in the weight's (C, kh, kw) order (whiten.py's order)."""
    n, c = x.shape[:2]
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    p = F.pad(x, (pw, pw, ph, ph)).permute(0, 2, 3, 1).unfold(1, kh, sh).unfold(2, kw, sw)  # N, Ho, Wo, C, kh, kw
    return p.reshape(-1, c * kh * kw)


def out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def tap_slices(kernel: tuple[int, int], stride: tuple[int, int], out: tuple[int, int]):
    """For each kernel tap (i, j), the (rows, columns) slices of the padded NHWC input it reads."""
    (kh, kw), (sh, sw), (ho, wo) = kernel, stride, out
    for i in range(kh):
        for j in range(kw):
            yield slice(i, i + sh * (ho - 1) + 1, sh), slice(j, j + sw * (wo - 1) + 1, sw)


def patch_rows(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
               padding: tuple[int, int]) -> torch.Tensor:
    """(N*Ho*Wo, kh*kw*C) rows of input patches, taps first, channels last: each tap is a strided slice
    of the padded NHWC input, so a channels_last input is copied once, by the stack."""
    n, c, h, w = x.shape
    out = out_size(h, kernel[0], stride[0], padding[0]), out_size(w, kernel[1], stride[1], padding[1])
    xh = F.pad(x.permute(0, 2, 3, 1), (0, 0, padding[1], padding[1], padding[0], padding[0]))
    taps = [xh[:, rows, cols, :] for rows, cols in tap_slices(kernel, stride, out)]
    return torch.stack(taps, dim=3).reshape(n * out[0] * out[1], -1)


def weight_rows(weight: torch.Tensor) -> torch.Tensor:
    """(Cout, kh*kw*C): the weight in patch_rows' order (a view when the weight is channels_last)."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


def fold_rows(rows: torch.Tensor, shape: torch.Size, kernel: tuple[int, int], stride: tuple[int, int],
              padding: tuple[int, int]) -> torch.Tensor:
    """The inverse of patch_rows' gather: each tap's (N, Ho, Wo, C) part added back where it was read,
    returned as an (N, C, H, W) channels_last tensor."""
    n, c, h, w = shape
    out = out_size(h, kernel[0], stride[0], padding[0]), out_size(w, kernel[1], stride[1], padding[1])
    parts = rows.view(n, out[0], out[1], kernel[0] * kernel[1], c)
    grad = rows.new_zeros(n, h + 2 * padding[0], w + 2 * padding[1], c)
    for t, (r, s) in enumerate(tap_slices(kernel, stride, out)):
        grad[:, r, s, :] += parts[:, :, :, t, :]
    return grad[:, padding[0]:padding[0] + h, padding[1]:padding[1] + w, :].permute(0, 3, 1, 2)


class _GemmConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):
        kernel = tuple(weight.shape[2:])
        cols = patch_rows(x, kernel, stride, padding)
        w = weight_rows(weight)
        y = torch.addmm(bias, cols, w.t()) if bias is not None else cols @ w.t()
        n, h, wd = x.shape[0], x.shape[2], x.shape[3]
        out = out_size(h, kernel[0], stride[0], padding[0]), out_size(wd, kernel[1], stride[1], padding[1])
        ctx.save_for_backward(cols, weight)  # small maps: keeping the patches costs little memory
        ctx.shape, ctx.stride, ctx.padding, ctx.has_bias = x.shape, stride, padding, bias is not None
        return y.view(n, *out, weight.shape[0]).permute(0, 3, 1, 2)  # channels_last, as oneDNN's output

    @staticmethod
    def backward(ctx, grad):
        cols, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        rows = grad.permute(0, 2, 3, 1).reshape(-1, grad.shape[1]).to(cols.dtype)  # (N*Ho*Wo, Cout)
        grad_x = grad_w = grad_b = None
        if need_x:
            grad_x = fold_rows(rows @ weight_rows(weight), ctx.shape, tuple(weight.shape[2:]), ctx.stride,
                               ctx.padding)
        if need_w:
            co, c, kh, kw = weight.shape
            grad_w = in_layout_of(weight, (rows.t() @ cols).view(co, kh, kw, c).permute(0, 3, 1, 2))
        if need_b and ctx.has_bias:
            grad_b = rows.sum(0)
        return grad_x, grad_w, grad_b, None, None


def in_layout_of(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """`grad` with exactly the strides of `weight` (channels-last or not). Autograd's layout contract ignores
    the strides of size-1 dimensions, so it would keep a gradient of a 1x1 weight whose size-1 strides
    differ; DDP's gradient buckets are views with the parameter's exact strides, and a gradient that
    differs from its bucket view makes DDP warn "Grad strides do not match bucket view strides" and copy
    it the slow way. For a channels_last weight the GEMM's gradient already has its strides."""
    if grad.stride() == weight.stride():
        return grad
    return torch.empty_like(weight).copy_(grad)


class SmallMapGemm(TorchFunctionMode):
    """Within this context, every plain 2-D convolution (no groups or dilation, numeric padding) run
    with gradients on the CPU, in fp32 or under bf16 autocast, whose output map has at most
    MAX_GEMM_PIXELS pixels, runs as GEMMs (_GemmConv). Everything else runs as before."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv2d and not kwargs and _small(*args):
            x, weight, bias, stride, padding = (list(args) + [None, 1, 0])[:5]
            dtype = compute_dtype(x)
            if dtype is None:
                return func(*args, **kwargs)
            x, weight = x.to(dtype), weight.to(dtype)  # what autocast does; no copy in fp32
            bias = bias.to(dtype) if bias is not None else None
            with torch.autocast("cpu", enabled=False):
                return _GemmConv.apply(x, weight, bias, _pair(stride), _pair(padding))
        return func(*args, **kwargs)


def compute_dtype(x: torch.Tensor) -> torch.dtype | None:
    """bf16 under bf16 autocast, fp32 outside autocast; None (leave it to oneDNN) otherwise."""
    if torch.is_autocast_enabled("cpu"):
        return torch.bfloat16 if torch.get_autocast_dtype("cpu") == torch.bfloat16 else None
    return torch.float32 if x.dtype == torch.float32 else None


def _small(x=None, weight=None, bias=None, stride=1, padding=0, dilation=1, groups=1) -> bool:
    if not (isinstance(x, torch.Tensor) and x.dim() == 4 and torch.is_grad_enabled() and x.device.type == "cpu"
            and (weight.requires_grad or x.requires_grad) and groups == 1 and _pair(dilation) == (1, 1)
            and not isinstance(padding, str)):
        return False
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    pixels = out_size(x.shape[2], weight.shape[2], sh, ph) * out_size(x.shape[3], weight.shape[3], sw, pw)
    return pixels <= MAX_GEMM_PIXELS


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def small_map_gemm(enabled: bool = True):
    """The context the CPU training step runs in (a no-op context when not enabled)."""
    return SmallMapGemm() if enabled else contextlib.nullcontext()
