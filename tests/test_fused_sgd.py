"""FusedSGD: torch's fused SGD's weights exactly (the default SGD's to rounding), one kernel per step
with no copies of channels-last weights, and momentum buffers in the weights' own shape and layout
(checkpoints load into either)."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from c100.fused_sgd import FusedSGD


def net() -> nn.Module:
    """3x3 and 1x1 convolutions (a 1x1 weight's gradient may differ from it in a size-1 stride), BatchNorm,
    a frozen layer, a linear head; channels-last as the trainer builds it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 1),
                          nn.Conv2d(16, 16, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    model[4].bias.requires_grad_(False)
    return model.to(memory_format=torch.channels_last)


def groups(model: nn.Module) -> list[dict]:
    return [{"params": [p for p in model.parameters() if p.ndim > 1], "weight_decay": 5e-4},
            {"params": [p for p in model.parameters() if p.ndim <= 1], "weight_decay": 0.0}]


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(4, 3, 6, 6, generator=g).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (4,), generator=g)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("nesterov", [True, False])
def test_same_weights_as_torch_sgd(nesterov):
    fused, default, ours = net(), net(), net()
    kw = {"lr": 0.1, "momentum": 0.9, "nesterov": nesterov}
    train(fused, torch.optim.SGD(groups(fused), fused=True, **kw), 4)
    train(default, torch.optim.SGD(groups(default), **kw), 4)
    opt = FusedSGD(groups(ours), **kw)
    train(ours, opt, 4)
    for a, b, c in zip(fused.parameters(), ours.parameters(), default.parameters(), strict=True):
        assert torch.equal(a, b) and a.stride() == b.stride()
        torch.testing.assert_close(b, c, rtol=1e-6, atol=1e-7)  # one fused multiply-add rounds once
    for p in ours.parameters():
        if p.requires_grad:
            buf = opt.state[p]["momentum_buffer"]
            assert buf.shape == p.shape and buf.stride() == p.stride()
    assert torch.equal(ours[4].bias, net()[4].bias)  # frozen: untouched


def test_checkpoint_moves_between_default_and_fused():
    """Two steps by one optimizer, its state_dict into the other, two more: the same weights either way
    (to rounding: the default SGD rounds its multiply-adds twice)."""
    kw = {"lr": 0.05, "momentum": 0.9, "nesterov": True}
    results = []
    for first, second in ((torch.optim.SGD, FusedSGD), (FusedSGD, torch.optim.SGD), (FusedSGD, FusedSGD)):
        model = net()
        opt = first(groups(model), **kw)
        train(model, opt, 2)
        state = copy.deepcopy(opt.state_dict())
        opt = second(groups(model), **kw)
        opt.load_state_dict(state)
        train(model, opt, 2, seed=2)
        results.append([p.detach().clone() for p in model.parameters()])
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_no_copies_of_channels_last_weights():
    """The reason it exists: torch's own fused SGD clones every channels-last weight, gradient and buffer."""
    def clones(opt_cls, **extra) -> int:
        model = net()
        opt = opt_cls(groups(model), lr=0.1, momentum=0.9, **extra)
        train(model, opt, 1)  # the first step makes the buffers
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            train(model, opt, 1)
        step = [e for e in prof.events() if e.name.startswith("Optimizer.step")]
        inside = [e for e in prof.events() if e.name == "aten::clone"
                  and any(s.time_range.start <= e.time_range.start <= s.time_range.end for s in step)]
        return len(inside)

    assert clones(torch.optim.SGD, fused=True) > 0  # the cost this avoids is real in this torch
    assert clones(FusedSGD) == 0
