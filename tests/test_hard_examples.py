"""--keep-hardest: later epochs train on the images whose loss was highest when last seen."""

from __future__ import annotations

import pytest
import torch

from c100 import UserError, checkpoint
from c100.augment import AugmentSpec, Normalize, train_batches
from c100.hard_examples import HardExamples
from c100.train import resume, train
from conftest import tiny_cfg

CPU = torch.device("cpu")


def test_the_highest_losses_are_kept_and_the_left_out_come_back():
    hard = HardExamples(8, 0.5, CPU)
    assert hard.subset(0) is None  # the first epoch: every image
    hard.record(torch.tensor([0, 1, 2, 3, 4, 5]), torch.tensor([0.1, 5.0, 0.2, 4.0, 3.0, 0.3]))
    hard.end_epoch()
    # 6 and 7 were never seen (drop_last): they count as the hardest, then the two highest losses
    assert hard.subset(1).tolist() == [1, 3, 6, 7]
    hard.record(torch.tensor([1, 3, 6, 7]), torch.tensor([0.01, 0.02, 0.03, 2.0]))
    hard.end_epoch()
    assert hard.subset(2).tolist() == [2, 4, 5, 7]  # 2, 4 and 5 left out for an epoch, back now
    assert hard.steps(epochs=3, batch_size=2) == 4 + 2 * 2


def test_batches_of_a_subset_cover_it_once_with_their_indices():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 4, 4).contiguous()
    labels = torch.arange(10) * 3
    spec, norm = AugmentSpec(0, "reflect", False, 0), Normalize("none", CPU)
    subset = torch.tensor([1, 4, 5, 8])
    batches = list(train_batches(images, labels, 2, spec, norm, torch.Generator().manual_seed(0), subset=subset,
                                 with_index=True))
    seen = torch.cat([idx for _, _, idx in batches])
    assert sorted(seen.tolist()) == subset.tolist()
    for _, y, idx in batches:
        assert torch.equal(y, labels[idx])


def cfg(cifar_dir, **kw):
    # 256 images in batches of 64: the first epoch 4 steps, the next ones 2 (the hardest half)
    return tiny_cfg(cifar_dir, train_size="256", epochs="3", keep_hardest="0.5", **kw)


def test_later_epochs_take_the_kept_fraction_and_resume_agrees(cifar_dir, tmp_path):
    straight = train(cfg(cifar_dir), tmp_path / "straight", log=lambda *_: None)
    assert straight.step == 4 + 2 + 2 == straight.total_steps
    assert torch.isfinite(straight.hard.losses).all()  # 256 = 4 x 64: drop_last left none unseen

    def killer(line):
        if line.startswith("epoch   2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg(cifar_dir), tmp_path / "killed", log=killer)
    assert checkpoint.load(tmp_path / "killed" / "last.pt")["example_losses"].shape == (256,)
    resumed = resume(tmp_path / "killed", log=lambda *_: None)
    assert torch.equal(resumed.hard.losses, straight.hard.losses)
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, straight.model.state_dict()[k]), f"{k} differs after resume"


def test_keep_hardest_must_be_a_fraction(cifar_dir):
    with pytest.raises(UserError, match=r"--keep-hardest must be a fraction of the training images in \(0, 1\]"):
        tiny_cfg(cifar_dir, keep_hardest="0")
