"""Lookahead (Zhang, Lucas, Hinton and Ba, 2019) around the trainer's optimizer.

The inner optimizer takes k steps with the "fast" weights; then a copy of the weights kept aside, the
"slow" ones, moves a fraction alpha of the way to them, and the fast weights start again from there.
The slow weights average out the zigzag of k noisy steps at a high learning rate, at the cost of one
extra copy of the weights and one pass over them every k steps (cheap next to a step). airbench's
CIFAR-10 speedruns use a form of it (every 5 steps, over the whole state dict, BatchNorm statistics
included); here it is the paper's, over the weights.

Only weights that train take part: a weight frozen on purpose (--freeze-stem, --freeze-early-at) keeps
the value it had when it froze, and never moves towards a slow copy. The wrapper passes lr and
param_groups through, and its state_dict holds the inner optimizer's state with the slow weights and
the step count, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import torch


class Lookahead:
    """`optimizer` with Lookahead: every `k` steps the slow weights take `alpha` of the way to the fast
    ones, which restart from them."""

    def __init__(self, optimizer: torch.optim.Optimizer, k: int, alpha: float):
        if k < 1 or not 0 < alpha <= 1:
            raise ValueError(f"Lookahead needs k >= 1 and alpha in (0, 1], not k={k}, alpha={alpha}")
        self.optimizer, self.k, self.alpha = optimizer, k, alpha
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.slow = [p.detach().clone() for p in self.params]  # clone keeps channels-last
        self.steps = 0

    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):
        loss = self.optimizer.step(closure)
        self.steps += 1
        if self.steps % self.k == 0:
            self.synchronize()
        return loss

    @torch.no_grad()
    def synchronize(self) -> None:
        pairs = [(s, p) for s, p in zip(self.slow, self.params, strict=True) if p.requires_grad]
        if not pairs:
            return
        slow, fast = [s for s, _ in pairs], [p.detach() for _, p in pairs]
        torch._foreach_lerp_(slow, fast, self.alpha)
        torch._foreach_copy_(fast, slow)

    def state_dict(self) -> dict:
        # k and alpha are the run's config, fixed on resume: not state
        return {"optimizer": self.optimizer.state_dict(), "lookahead": {"steps": self.steps, "slow": self.slow}}

    def load_state_dict(self, state: dict) -> None:
        """Restore the inner optimizer and the slow weights; raises KeyError / ValueError on a state that is
        not a Lookahead one of the same weights (the caller names the file)."""
        ahead = state["lookahead"]
        if len(ahead["slow"]) != len(self.slow):
            raise ValueError(f"{len(ahead['slow'])} slow weights saved for {len(self.slow)} weights")
        self.optimizer.load_state_dict(state["optimizer"])
        with torch.no_grad():
            for s, saved in zip(self.slow, ahead["slow"], strict=True):
                s.copy_(saved)
        self.steps = int(ahead["steps"])
