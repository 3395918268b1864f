"""Which ReLU units of a trained model never fire? For each call of an nn.ReLU module, the share of its
channels that are zero on every one of the first N images of the training file (the test set is not
read), and whether the logits still depend on the image. A network whose last ReLU is dead everywhere
answers one class for all. It sees nn.ReLU modules only (every registered network uses them; one that
calls F.relu is refused).

    PYTHONPATH=benchmarks python benchmarks/archive/dead_units.py benchmarks/runs/seed/seed-vgg16-v1 --data-dir data
"""

import argparse

import numpy as np
import torch

import c100
from c100 import data


def dead_channel_shares(model, images: np.ndarray) -> tuple[dict, torch.Tensor]:
    """{ReLU call: (output shape, share of dead channels)} and the logits. A module called twice per
    forward pass (torchvision-style blocks reuse one ReLU) gets a row per call: NAME, NAME#2, ..."""
    shares = {}

    def hook(name):
        def record(_mod, _inp, out):
            key = name if name not in shares else f"{name}#{sum(k.split('#')[0] == name for k in shares) + 1}"
            per_channel = out.detach().transpose(0, 1).reshape(out.shape[1], -1)
            shares[key] = (tuple(out.shape[1:]), float((per_channel.abs().amax(1) == 0).float().mean()))
        return record

    handles = [mod.register_forward_hook(hook(name)) for name, mod in model.net.named_modules()
               if isinstance(mod, torch.nn.ReLU)]
    try:
        logits = torch.as_tensor(model.logits(images, batch_size=len(images)))  # one pass: one row per call
    finally:
        for h in handles:
            h.remove()
    return shares, logits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a run folder or model file (c100.load)")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--n", type=int, default=500, help="the first N images of the training file")
    args = ap.parse_args()
    model = c100.load(args.model, backend="torch")
    splits, _ = data.load(args.data_dir, download_ok=False, splits=("train",))
    shares, logits = dead_channel_shares(model, splits["train"].images[: args.n])
    if not shares:
        raise SystemExit(f"dead_units.py: {args.model} has no nn.ReLU modules (it calls F.relu): nothing to see")
    print(f"{args.model}: ReLU outputs on {args.n} training images")
    print("| ReLU | output shape | channels zero on every image |\n|---|---|---|")
    for name, (shape, share) in shares.items():
        print(f"| {name} | {' x '.join(map(str, shape))} | {share:.1%} |")
    print(f"logits: std across images {float(logits.std(0).mean()):.3g}, "
          f"predicted classes {np.unique(logits.argmax(1).numpy()).tolist()}")


if __name__ == "__main__":
    main()
