"""Which ReLU units of a trained model never fire? For each ReLU, the share of its channels that are
zero on every one of the first N images of the training file (the test set is not read), and whether the logits
still depend on the image. A network whose last ReLU is dead everywhere answers one class for all.

    python benchmarks/dead_units.py benchmarks/runs/seed/seed-vgg16-v1 --data-dir data
"""

import argparse

import numpy as np
import torch

import c100
from c100 import data


def dead_channel_shares(model, images: np.ndarray) -> tuple[dict, torch.Tensor]:
    shares = {}

    def hook(name):
        def record(_mod, _inp, out):
            per_channel = out.detach().transpose(0, 1).reshape(out.shape[1], -1)
            shares[name] = (tuple(out.shape[1:]), float((per_channel.abs().amax(1) == 0).float().mean()))
        return record

    for name, mod in model.net.named_modules():
        if isinstance(mod, torch.nn.ReLU):
            mod.register_forward_hook(hook(name))
    logits = torch.as_tensor(model.logits(images))
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
    print(f"{args.model}: ReLU outputs on {args.n} training images")
    print("| ReLU | output shape | channels zero on every image |\n|---|---|---|")
    for name, (shape, share) in shares.items():
        print(f"| {name} | {' x '.join(map(str, shape))} | {share:.1%} |")
    print(f"logits: std across images {float(logits.std(0).mean()):.3g}, "
          f"predicted classes {np.unique(logits.argmax(1).numpy()).tolist()}")


if __name__ == "__main__":
    main()
