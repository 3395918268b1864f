"""Training on the hard examples (--keep-hardest): from the second epoch on, each epoch draws its
batches from the fraction of the training images whose loss was highest when they were last seen.

Each image's loss comes for free from its own training step (the augmented view, in the step's
precision), so the choice costs no extra forward pass. The losses of images left out stay as they
were, while those trained on fall: the left-out ones come back once the rest have dropped below
them, so the hard set turns over instead of freezing after the first epoch. Images no step has seen
yet (all of them before the first epoch, the few drop_last leaves out of it) count as the hardest.

Under torchrun each process sees a slice of every batch: the epoch's new losses are summed over the
processes at its end, so every process picks the same images for the next one.
"""

from __future__ import annotations

import torch

from c100 import distributed
from c100.augment import steps_per_epoch


class HardExamples:
    def __init__(self, n: int, keep: float, device: torch.device):
        self.n, self.keep = n, keep
        self.losses = torch.full((n,), float("inf"), device=device)  # inf: not seen yet, so picked first
        self.fresh = torch.zeros(n, device=device)  # this epoch's losses and which images they are of
        self.seen = torch.zeros(n, device=device)

    def kept(self) -> int:
        return max(1, round(self.keep * self.n))

    def subset(self, epoch: int) -> torch.Tensor | None:
        """The indices epoch `epoch` trains on (sorted, so the seeded shuffle alone orders them); None: all."""
        if epoch == 0:
            return None
        return torch.topk(self.losses, self.kept()).indices.sort().values

    def steps(self, epochs: int, batch_size: int) -> int:
        """Steps in `epochs` epochs: the first of all images, the others of the kept ones."""
        return steps_per_epoch(self.n, batch_size) + (epochs - 1) * steps_per_epoch(self.kept(), batch_size)

    def record(self, idx: torch.Tensor, losses: torch.Tensor) -> None:
        """One step's per-image losses (this process's slice of the batch)."""
        self.fresh[idx] = losses.float()
        self.seen[idx] = 1.0

    def end_epoch(self) -> None:
        """Merge the epoch's losses (over every process) into the last-seen ones. An epoch shows each image
        to one process at most once, so the sum over processes is its loss."""
        fresh, seen = distributed.all_reduce_sum(torch.stack([self.fresh, self.seen]))
        self.losses = torch.where(seen > 0, fresh, self.losses)
        self.fresh.zero_()
        self.seen.zero_()

    def state(self) -> torch.Tensor:
        return self.losses.cpu()

    def restore(self, losses: torch.Tensor | None) -> None:
        if losses is not None:
            self.losses = losses.to(self.losses.device, torch.float32)
