"""Lookahead: every k steps the slow weights move alpha of the way to the fast ones, which restart from
them; frozen weights stay as they froze; a checkpoint continues bit for bit, in the trainer too."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from c100 import UserError
from c100.fused_sgd import FusedSGD
from c100.lookahead import Lookahead
from c100.train import resume, train
from conftest import tiny_cfg

KW = {"lr": 0.1, "momentum": 0.9, "nesterov": True}


def net() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    model[0].bias.requires_grad_(False)  # frozen from the start, as --freeze-stem's filters
    return model.to(memory_format=torch.channels_last)


def batches(n: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 3, 6, 6, generator=g).contiguous(memory_format=torch.channels_last),
             torch.randint(0, 10, (4,), generator=g)) for _ in range(n)]


def fit(model: nn.Module, opt, data) -> None:
    for x, y in data:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()


def weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_between_synchronisations_it_is_the_inner_optimizer_then_the_weights_move_alpha_of_the_way():
    data = batches(3)
    plain, ahead = net(), net()
    start = weights(ahead)
    plain_opt, opt = FusedSGD(plain.parameters(), **KW), Lookahead(FusedSGD(ahead.parameters(), **KW), 3, 0.25)
    fit(plain, plain_opt, data[:2])
    fit(ahead, opt, data[:2])
    for a, b in zip(plain.parameters(), ahead.parameters(), strict=True):
        assert torch.equal(a, b)  # two steps: no synchronisation yet
    fit(plain, plain_opt, data[2:])
    fit(ahead, opt, data[2:])
    for s, fast, p, slow in zip(start, plain.parameters(), ahead.parameters(), opt.slow, strict=True):
        torch.testing.assert_close(p, s + 0.25 * (fast - s))
        assert torch.equal(p, slow) and p.stride() == fast.stride()  # restarted from the slow copy, channels-last
    assert torch.equal(ahead[0].bias, net()[0].bias)  # frozen: untouched
    assert not torch.equal(ahead[0].weight, start[0])


def test_alpha_one_is_the_inner_optimizer_alone():
    data = batches(5)
    plain, ahead = net(), net()
    fit(plain, FusedSGD(plain.parameters(), **KW), data)
    fit(ahead, Lookahead(FusedSGD(ahead.parameters(), **KW), 2, 1.0), data)
    for a, b in zip(plain.parameters(), ahead.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_weight_frozen_between_synchronisations_keeps_the_value_it_froze_at():
    data = batches(2)
    model = net()
    opt = Lookahead(FusedSGD(model.parameters(), **KW), 2, 0.5)
    fit(model, opt, data[:1])
    model[3].weight.requires_grad_(False)  # as --freeze-early-at does mid-run
    frozen = model[3].weight.detach().clone()
    fit(model, opt, data[1:])  # the second step synchronises the others
    assert torch.equal(model[3].weight, frozen)


def test_a_saved_state_continues_bit_for_bit():
    data = batches(7)
    straight = net()
    fit(straight, Lookahead(FusedSGD(straight.parameters(), **KW), 3, 0.5), data)
    first = net()
    opt = Lookahead(FusedSGD(first.parameters(), **KW), 3, 0.5)
    fit(first, opt, data[:4])
    state, saved = copy.deepcopy(opt.state_dict()), copy.deepcopy(first.state_dict())
    fit(first, opt, batches(2, seed=9))  # what the restored state must forget
    second = net()
    second.load_state_dict(saved)
    opt = Lookahead(FusedSGD(second.parameters(), **KW), 3, 0.5)
    opt.load_state_dict(state)
    fit(second, opt, data[4:])
    for a, b in zip(straight.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="slow weights saved"):
        opt.load_state_dict({"optimizer": state["optimizer"], "lookahead": {**state["lookahead"], "slow": []}})


def cfg(cifar_dir, **kw):
    return tiny_cfg(cifar_dir, **{"train_size": "256", "epochs": "3", "lookahead_k": "3", **kw})


def test_the_trainer_resumes_a_lookahead_run_as_if_never_stopped(cifar_dir, tmp_path):
    straight = train(cfg(cifar_dir), tmp_path / "straight", log=lambda *_: None)
    assert isinstance(straight.optimizer, Lookahead) and straight.optimizer.steps == straight.step == 12
    plain = train(cfg(cifar_dir, lookahead_k="0"), tmp_path / "plain", log=lambda *_: None)
    assert not torch.equal(plain.model.state_dict()["8.weight"], straight.model.state_dict()["8.weight"])

    def killer(line):
        if line.startswith("epoch   2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg(cifar_dir), tmp_path / "killed", log=killer)
    resumed = resume(tmp_path / "killed", log=lambda *_: None)
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, straight.model.state_dict()[k]), f"{k} differs after resume"


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("lookahead_k", "-1", r"--lookahead-k must be >= 0 \(e\.g\. 5\), got -1"),
    ("lookahead_alpha", "0", r"--lookahead-alpha must be a fraction in \(0, 1\]")])
def test_bad_values_are_refused(cifar_dir, flag, value, message):
    with pytest.raises(UserError, match=message):
        tiny_cfg(cifar_dir, **{flag: value})
