import numpy as np
import pytest
import torch

from c100.augment import (
    AugmentSpec,
    MixPlan,
    Normalize,
    cutout,
    epoch_generator,
    flip,
    mix,
    steps_per_epoch,
    train_batches,
    translate,
)
from c100.data import MEAN, STD


def _gen(seed=0):
    return epoch_generator(seed, 0, torch.device("cpu"))


def _images(n=16):
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def _shift_of(out, img, shift, mode):
    """Find the (dy, dx) for which `out` equals `img` shifted, by brute force over the padded image."""
    padded = torch.nn.functional.pad(img.float()[None], (shift,) * 4,
                                     mode={"reflect": "reflect", "zero": "constant", "edge": "replicate"}[mode])[0]
    hits = [(dy, dx) for dy in range(2 * shift + 1) for dx in range(2 * shift + 1)
            if torch.equal(padded[:, dy:dy + 32, dx:dx + 32].to(torch.uint8), out)]
    return hits


@pytest.mark.parametrize("mode", ["reflect", "zero", "edge"])
def test_translate_is_a_shifted_crop_of_the_padded_image(mode):
    x = _images(8)
    out = translate(x, 4, mode, _gen())
    assert out.shape == x.shape and out.dtype == torch.uint8
    shifts = [_shift_of(out[i], x[i], 4, mode) for i in range(8)]
    assert all(len(s) >= 1 for s in shifts)  # every image is some crop of its padded self
    assert len({s[0] for s in shifts}) > 1  # and the shifts differ between images


def test_translate_zero_and_edge_fill():
    x = torch.full((64, 3, 32, 32), 200, dtype=torch.uint8)
    z = translate(x, 6, "zero", _gen())
    assert (z == 0).any() and set(z.unique().tolist()) <= {0, 200}
    e = translate(x, 6, "edge", _gen())
    assert torch.equal(e, x)  # replicating a constant image changes nothing


def test_flip_flips_about_half_exactly():
    x = _images(200)
    out = flip(x, _gen())
    flipped = torch.tensor([torch.equal(out[i], x[i].flip(2)) for i in range(200)])
    same = torch.tensor([torch.equal(out[i], x[i]) for i in range(200)])
    assert (flipped | same).all()
    assert 60 < flipped.sum() < 140


def test_cutout_zeroes_a_square_at_most():
    x = torch.ones(32, 3, 32, 32)
    out = cutout(x, 8, _gen())
    zeros = (out == 0).all(1)  # all channels zeroed together
    assert torch.equal((out == 0).any(1), zeros)
    counts = zeros.flatten(1).sum(1)
    assert counts.max() == 64 and counts.min() >= 16  # a square that may hang off the edge
    ys, xs = torch.nonzero(zeros[int(counts.argmax())], as_tuple=True)
    assert ys.max() - ys.min() == 7 and xs.max() - xs.min() == 7


def test_normalize():
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    y = Normalize("cifar100", torch.device("cpu"))(x)
    assert torch.allclose(y[0, :, 0, 0], (1 - torch.tensor(MEAN)) / torch.tensor(STD))
    assert torch.equal(Normalize("none", torch.device("cpu"))(x), torch.ones(1, 3, 2, 2))


def _epoch(seed, epoch, n=100, bs=32):
    x, y = _images(n), torch.arange(n)
    spec = AugmentSpec(translate=4, pad_mode="reflect", flip=True, cutout=8)
    norm = Normalize("cifar100", torch.device("cpu"))
    return list(train_batches(x, y, bs, spec, norm, epoch_generator(seed, epoch, torch.device("cpu"))))


def test_batches_are_seeded_and_cover_the_data():
    a, b = _epoch(0, 0), _epoch(0, 0)
    assert len(a) == steps_per_epoch(100, 32) == 3
    assert all(xa.shape == (32, 3, 32, 32) and xa.dtype == torch.float32 for xa, _ in a)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True))
    labels = torch.cat([y for _, y in a])
    assert len(set(labels.tolist())) == 96  # a permutation without repeats; the 4-image tail dropped
    c = _epoch(0, 1)
    assert not torch.equal(torch.cat([y for _, y in c]), labels)  # another epoch, another order
    d = _epoch(1, 0)
    assert not torch.equal(torch.cat([x for x, _ in d]), torch.cat([x for x, _ in a]))


def test_mix_plans_are_seeded_and_take_what_is_asked():
    a, b = MixPlan.draw(0, 3, 50, 0.4, 1.0), MixPlan.draw(0, 3, 50, 0.4, 1.0)
    assert all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("cut", "lam", "centre"))
    assert not np.array_equal(a.lam, MixPlan.draw(0, 4, 50, 0.4, 1.0).lam)  # a new epoch, new draws
    assert 10 < a.cut.sum() < 40 and ((a.lam >= 0) & (a.lam <= 1)).all()  # both kinds, about half each
    assert not MixPlan.draw(0, 3, 50, 0.4, 0).cut.any() and MixPlan.draw(0, 3, 50, 0, 1.0).cut.all()


def test_mixup_blends_each_image_with_its_reversed_partner():
    x = torch.rand(4, 3, 8, 8)
    plan = MixPlan(cut=np.array([False]), lam=np.array([0.3]), centre=np.zeros((1, 2)))
    out, lam = mix(x, plan, 0)
    assert lam == pytest.approx(0.3)
    torch.testing.assert_close(out, 0.3 * x + 0.7 * x.flip(0))


@pytest.mark.parametrize("lam, centre", [(0.75, (0.5, 0.5)), (0.75, (0.0, 0.95)), (0.0, (0.3, 0.3))])
def test_cutmix_pastes_a_box_and_reports_its_real_share(lam, centre):
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 16, 16).clone()  # image i is the constant i
    plan = MixPlan(cut=np.array([True]), lam=np.array([lam]), centre=np.array([centre]))
    out, share = mix(x, plan, 0)
    from_partner = out != x  # image i's pixels that now hold its partner's value 3 - i
    assert torch.equal(out[from_partner], x.flip(0)[from_partner])
    assert share == pytest.approx(1 - from_partner[0, 0].float().mean().item())
    if centre == (0.5, 0.5):
        assert share == pytest.approx(0.75)  # the whole box inside the image: the area drawn
    else:
        assert share >= lam  # clipped at the border: less pasted than drawn
