"""SGD as one fused kernel per step, also over channels-last weights.

On CPU torch's default SGD walks the weights op by op (weight decay, momentum, Nesterov, update: a pass
over memory each); ResNet18's 11 M weights make that ~23 ms a step on 2 cores, a fifth of a 16 px bf16
step. `fused=True` does it in one pass (4 ms), but its kernel wants contiguous tensors: a channels-last
convolution weight is cloned and copied back each step, which ate most of the gain. Yet such a weight is
dense: permuted to (out, kh, kw, in) it is contiguous, and so are its gradient and momentum buffer when they
share its strides. This optimizer hands the fused kernel those views. The arithmetic is torch's own fused
SGD, so the weights are those of torch's fused SGD exactly and of its default one to rounding (a fused
multiply-add rounds once; tests/test_fused_sgd.py); the momentum buffers stay in the weights' shape and
layout, so checkpoints load into either.
"""

from __future__ import annotations

import torch
from torch.optim.sgd import sgd


def _channels_last(t: torch.Tensor) -> bool:
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _as_param(t: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """`t` with `p`'s strides (a gradient of a 1x1 weight may differ in a size-1 dimension's stride)."""
    return t if t.stride() == p.stride() else torch.empty_like(p).copy_(t)


def _dense(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return t.permute(0, 2, 3, 1) if channels_last else t


class FusedSGD(torch.optim.SGD):
    """torch.optim.SGD(..., fused=True) whose channels-last weights reach the kernel as contiguous views."""

    def __init__(self, params, **kwargs):
        super().__init__(params, fused=True, **kwargs)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, buffers = [], [], []
            sparse = self._init_group(group, params, grads, buffers)
            cl = [_channels_last(p) for p in params]
            views = [_dense(p, c) for p, c in zip(params, cl, strict=True)]
            grad_views = [_dense(_as_param(g, p), c) for p, g, c in zip(params, grads, cl, strict=True)]
            buffer_views = [None if b is None else _dense(_as_param(b, p), c)
                            for p, b, c in zip(params, buffers, cl, strict=True)]
            sgd(views, grad_views, buffer_views, weight_decay=group["weight_decay"], momentum=group["momentum"],
                lr=group["lr"], dampening=group["dampening"], nesterov=group["nesterov"],
                maximize=group["maximize"], has_sparse_grad=sparse, fused=True,
                grad_scale=getattr(self, "grad_scale", None), found_inf=getattr(self, "found_inf", None))
            if group["momentum"] != 0:  # a first step made the buffers, as views: back to the weights' shape
                for p, b, c in zip(params, buffer_views, cl, strict=True):
                    self.state[p]["momentum_buffer"] = b.permute(0, 3, 1, 2) if c else b
        return loss
