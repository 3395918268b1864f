"""--freeze-early-at: the stem and layer1 stop training from a fraction of training on."""

from __future__ import annotations

import pytest
import torch

from c100 import UserError, checkpoint
from c100.train import build_trainer, resume, train
from conftest import tiny_cfg

EARLY = ("conv1.", "bn1.", "layer1.")


def resnet_cfg(cifar_dir, **kw):
    # 128 images in batches of 64 at 8 px: 2 steps an epoch, 8 in all; frozen from step 4 (progress 0.5)
    return tiny_cfg(cifar_dir, model="resnet18", train_size="128", epochs="4", resolutions=["8"],
                    freeze_early_at="0.5", **kw)


def params(state: dict, early: bool) -> dict:
    names = [k for k in state if k.endswith(("weight", "bias")) and k.startswith(EARLY) == early]
    return {k: state[k] for k in names}


def test_early_layers_train_until_the_fraction_then_stay_and_resume_agrees(cifar_dir, tmp_path):
    start = build_trainer(resnet_cfg(cifar_dir), tmp_path / "fresh", log=lambda *_: None).model.state_dict()
    straight = train(resnet_cfg(cifar_dir), tmp_path / "straight", log=lambda *_: None)

    def killer(line):  # stop right after epoch 2 (step 4, progress 0.5) is saved
        if line.startswith("epoch   2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(resnet_cfg(cifar_dir), tmp_path / "killed", log=killer)
    half = checkpoint.load(tmp_path / "killed" / "last.pt")["model"]
    end = straight.model.state_dict()
    for k, v in params(half, early=True).items():
        assert torch.equal(v, end[k]), f"{k} moved after the freeze"
    assert any(not torch.equal(v, start[k]) for k, v in params(half, early=True).items())  # it trained before
    assert all(not torch.equal(v, half[k]) for k, v in params(end, early=False).items() if k.startswith("layer2"))
    assert not any(p.requires_grad for p in straight.early)

    resumed = resume(tmp_path / "killed", log=lambda *_: None)
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, end[k]), f"{k} differs after resume"


def test_freeze_early_needs_a_resnet(cifar_dir, tmp_path):
    with pytest.raises(UserError, match="needs a ResNet model"):
        build_trainer(tiny_cfg(cifar_dir, freeze_early_at="0.5"), tmp_path, log=lambda *_: None)
    with pytest.raises(UserError, match="fraction of training in"):
        tiny_cfg(cifar_dir, freeze_early_at="1.5")
