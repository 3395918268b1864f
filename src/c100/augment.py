"""Batched augmentation on the training device, and the batch iterator.

Each split lives on the device as one uint8 tensor N x 3 x 32 x 32. A batch is gathered by a seeded
permutation, augmented as a whole (translate with padding, horizontal flip, cutout) with no per-image
Python, then normalised. Randomness comes from a generator seeded by (seed, epoch), so an epoch's
batches depend only on those two numbers: a resumed run sees exactly the batches a straight run sees.
Under DistributedDataParallel each rank keeps one slice of every global batch (`part`): the random
numbers are still drawn for the whole global batch, so N processes augment exactly as one does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from c100.data import MEAN, STD

PAD_MODES = {"reflect": "reflect", "zero": "constant", "edge": "replicate"}


@dataclass
class AugmentSpec:
    translate: int = 0  # max shift in pixels each way; the padding fills what the shift uncovers
    pad_mode: str = "reflect"  # reflect | zero | edge (edge = Keras' 'nearest' fill)
    flip: bool = False
    cutout: int = 0  # side of a square zeroed (after normalisation) at a random centre; 0 = off


# A rank's slice of a global batch: (index of its first image, global batch size); None = all of it.
Part = tuple[int, int] | None


def _rows(x: torch.Tensor, part: Part, draw) -> torch.Tensor:
    """Per-image random numbers: `draw(n)` for the whole global batch, then this slice's rows."""
    lo, n = part or (0, x.shape[0])
    return draw(n)[lo:lo + x.shape[0]]


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed * 1_000_003 + epoch)
    return g


def translate(x: torch.Tensor, shift: int, mode: str, gen: torch.Generator, part: Part = None) -> torch.Tensor:
    """Shift every image by its own random (dy, dx) in [-shift, shift], filling by `mode` padding."""
    if shift <= 0:
        return x
    _, _, h, w = x.shape
    # reflect/replicate padding is not implemented for uint8 on every backend: pad as float16-safe
    # integers instead (values <= 255 are exact in any float type we use).
    padded = F.pad(x.float(), (shift,) * 4, mode=PAD_MODES[mode]).to(x.dtype)

    def draw(m):
        return torch.randint(0, 2 * shift + 1, (m, 1, 1), device=x.device, generator=gen)

    dy, dx = _rows(x, part, draw), _rows(x, part, draw)
    rows = torch.arange(h, device=x.device).view(1, h, 1) + dy  # n x h x 1
    cols = torch.arange(w, device=x.device).view(1, 1, w) + dx  # n x 1 x w
    flat = rows * (w + 2 * shift) + cols  # n x h x w indices into each padded plane
    planes = padded.flatten(2)  # n x c x (h+2s)(w+2s)
    idx = flat.flatten(1).unsqueeze(1).expand(-1, x.shape[1], -1)
    return planes.gather(2, idx).view_as(x)


def flip(x: torch.Tensor, gen: torch.Generator, mask: torch.Tensor | None = None, part: Part = None) -> torch.Tensor:
    """Mirror a random half of the batch, or exactly the images where `mask` is true."""
    if mask is None:
        mask = _rows(x, part, lambda m: torch.rand(m, device=x.device, generator=gen)) < 0.5
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(3), x)


def alternating_flips(flip_start: torch.Tensor, epoch: int) -> torch.Tensor:
    """Per-image flip decision for an epoch: a random start, then every other epoch (Jordan 2024): over
    any two consecutive epochs each image is seen once in each orientation, which random flips only
    promise on average."""
    return flip_start ^ bool(epoch % 2)


def cutout(x: torch.Tensor, size: int, gen: torch.Generator, part: Part = None) -> torch.Tensor:
    """Zero a size x size square per image, centred anywhere (it may hang off the edge), as in
    DeVries & Taylor 2017."""
    if size <= 0:
        return x
    _, _, h, w = x.shape
    cy = _rows(x, part, lambda m: torch.randint(0, h, (m, 1, 1), device=x.device, generator=gen))
    cx = _rows(x, part, lambda m: torch.randint(0, w, (m, 1, 1), device=x.device, generator=gen))
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    lo = size // 2
    inside = (ys >= cy - lo) & (ys < cy - lo + size) & (xs >= cx - lo) & (xs < cx - lo + size)
    return x.masked_fill(inside.unsqueeze(1), 0)


class Normalize:
    """uint8 -> float, scaled to [0, 1] and optionally standardised with CIFAR-100's statistics."""

    def __init__(self, kind: str, device: torch.device):
        self.kind = kind
        self.mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(STD, device=device).view(1, 3, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().div_(255)
        return (x - self.mean) / self.std if self.kind == "cifar100" else x


def augment(x: torch.Tensor, spec: AugmentSpec, norm: Normalize, gen: torch.Generator,
            flip_mask: torch.Tensor | None = None, part: Part = None) -> torch.Tensor:
    x = translate(x, spec.translate, spec.pad_mode, gen, part)  # on uint8: a quarter of the bytes to move
    if spec.flip:
        x = flip(x, gen, flip_mask, part)
    x = norm(x)
    return cutout(x, spec.cutout, gen, part)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Downscale a batch for progressive resizing (antialiased, so small images are not aliased)."""
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def train_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, spec: AugmentSpec,
                  norm: Normalize, gen: torch.Generator, drop_last: bool = True,
                  flip_mask: torch.Tensor | None = None, rank: int = 0, world: int = 1,
                  subset: torch.Tensor | None = None, with_index: bool = False) -> Iterator[tuple]:
    """One epoch of augmented batches in a seeded random order. drop_last keeps every step the
    same shape (what compiled graphs and BatchNorm like); the dropped tail differs every epoch.
    `flip_mask` (one bool per image) fixes which images are mirrored this epoch. With `world` > 1,
    `batch_size` is the global batch and this rank gets its contiguous 1/world of each one.
    `subset`: the indices of the images to draw from (default: all). Yields (x, y), or (x, y,
    indices of the images) `with_index`."""
    n = len(labels) if subset is None else len(subset)
    perm = torch.randperm(n, device=images.device, generator=gen)
    if subset is not None:
        perm = subset.to(perm.device)[perm]
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for i in range(0, stop, batch_size):
        batch = perm[i:i + batch_size]
        lo = rank * len(batch) // world
        idx = batch[lo:(rank + 1) * len(batch) // world]
        mask = flip_mask[idx] if flip_mask is not None else None
        x = augment(images[idx], spec, norm, gen, mask, (lo, len(batch)))
        yield (x, labels[idx], idx) if with_index else (x, labels[idx])


class EpochBatches:
    """A run's training batches: `batches(epoch)` is one epoch of them (train_batches), in the order and
    with the augmentation that (seed, epoch) fix. With `alt_flip`, which images start mirrored is drawn
    once from the seed, so a resumed run agrees with a straight one."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, spec: AugmentSpec,
                 norm: Normalize, seed: int, device: torch.device, alt_flip: bool = False, rank: int = 0,
                 world: int = 1):
        self.images, self.labels, self.batch_size, self.spec, self.norm = images, labels, batch_size, spec, norm
        self.seed, self.device, self.rank, self.world = seed, device, rank, world
        self.flip_start = None
        if alt_flip:
            g = epoch_generator(seed, -1, device)
            self.flip_start = torch.rand(len(labels), device=device, generator=g) < 0.5

    def __call__(self, epoch: int, subset: torch.Tensor | None = None, with_index: bool = False) -> Iterator[tuple]:
        gen = epoch_generator(self.seed, epoch, self.device)
        mask = alternating_flips(self.flip_start, epoch) if self.flip_start is not None else None
        return train_batches(self.images, self.labels, self.batch_size, self.spec, self.norm, gen, flip_mask=mask,
                             rank=self.rank, world=self.world, subset=subset, with_index=with_index)


@dataclass
class MixPlan:
    """One epoch's MixUp / CutMix draws, one per batch, from numpy seeded by (seed, epoch): no random
    numbers on the device (no sync per step on a GPU) and the same plan on every process."""
    cut: np.ndarray  # True: CutMix, False: MixUp
    lam: np.ndarray  # the first image's share of the mix, in [0, 1]
    centre: np.ndarray  # CutMix box centres as fractions of the side, per batch: (y, x)

    @classmethod
    def draw(cls, seed: int, epoch: int, batches: int, mixup: float, cutmix: float) -> MixPlan:
        rng = np.random.default_rng([seed, epoch, 0x6D6978])  # a stream of its own: "mix"
        cut = np.full(batches, cutmix > 0) if not (mixup > 0 and cutmix > 0) else rng.random(batches) < 0.5
        alpha = np.where(cut, cutmix, mixup)
        return cls(cut, rng.beta(alpha, alpha), rng.random((batches, 2)))


def mix(x: torch.Tensor, plan: MixPlan, i: int) -> tuple[torch.Tensor, float]:
    """Batch i of an epoch mixed with the same batch reversed (image j with image n-1-j): MixUp (Zhang et
    al. 2018) blends whole images, CutMix (Yun et al. 2019) pastes a box whose area is 1 - lam. Returns
    the batch and the first image's actual share, for the loss lam * CE(y) + (1 - lam) * CE(y reversed)."""
    lam, other = float(plan.lam[i]), x.flip(0)
    if not plan.cut[i]:
        return x * lam + other * (1 - lam), lam
    _, _, h, w = x.shape
    side = np.sqrt(1 - lam)
    cy, cx = plan.centre[i] * (h, w)
    y0, y1 = int(np.clip(cy - side * h / 2, 0, h)), int(np.clip(cy + side * h / 2, 0, h))
    x0, x1 = int(np.clip(cx - side * w / 2, 0, w)), int(np.clip(cx + side * w / 2, 0, w))
    out = x.clone()
    out[:, :, y0:y1, x0:x1] = other[:, :, y0:y1, x0:x1]
    return out, 1 - (y1 - y0) * (x1 - x0) / (h * w)  # the box clipped at the border: its real area


def steps_per_epoch(n: int, batch_size: int, drop_last: bool = True) -> int:
    return n // batch_size if drop_last and n >= batch_size else -(-n // batch_size)
