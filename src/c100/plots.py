"""Training curves from a run's metrics.csv: accuracy and loss (train vs validation) and the learning
rate, in one figure, written as PNG and SVG."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from c100 import UserError
from c100.checkpoint import atomic_write_bytes

TRAIN, VAL, LR = "#1f77b4", "#d62728", "#2ca02c"


def read_metrics(run: Path) -> dict[str, list[float | None]]:
    path = Path(run) / "metrics.csv"
    if not path.is_file():
        raise UserError(f"{path} not found; pass a run folder written by `c100 train`")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise UserError(f"{path} has no epochs yet; plot again after the first epoch")
    try:
        return {k: [float(r[k]) if r.get(k) not in (None, "") else None for r in rows] for k in rows[0]}
    except ValueError:
        raise UserError(f"{path} holds non-numeric values; it is not a c100 metrics file") from None


def validated(m: dict, key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of the epochs that were validated; the others have empty cells (a run with
    --eval-every 0 validates only at the end)."""
    values = m.get(key) or [None] * len(m["epoch"])  # older or unvalidated runs may lack the column
    pairs = [(e, v) for e, v in zip(m["epoch"], values, strict=True) if v is not None]
    return [e for e, _ in pairs], [v for _, v in pairs]


def _figure(m: dict, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = m["epoch"]
    val_ep, val = validated(m, "val_acc")
    fig, (ax_acc, ax_loss, ax_lr) = plt.subplots(1, 3, figsize=(14, 4.2), constrained_layout=True)
    dots = {"marker": "o", "markersize": 4} if len(ep) <= 30 else {}  # few epochs: show the measured points
    train = [100 * a for a in m["train_acc"]]
    ax_acc.plot(ep, train, color=TRAIN, label="train (augmented)", **dots)
    ax_loss.plot(ep, m["train_loss"], color=TRAIN, label="train (augmented)", **dots)
    if val:
        val = [100 * a for a in val]
        ax_acc.plot(val_ep, val, color=VAL, label="validation", **dots)
        ax_loss.plot(*validated(m, "val_loss"), color=VAL, label="validation", **dots)
        best = max(range(len(val)), key=val.__getitem__)
        ax_acc.scatter([val_ep[best]], [val[best]], color=VAL, zorder=3)
        right = val_ep[best] >= (ep[0] + ep[-1]) / 2  # keep the label inside the axes, under the curve's peak
        # in the lower half of the panel (a fine-tune's single pass): the label goes above the point
        low = val[best] < (min(train + val) + max(train + val)) / 2
        ax_acc.annotate(f"best {val[best]:.2f}% (epoch {val_ep[best]:.0f})", (val_ep[best], val[best]),
                        textcoords="offset points", xytext=(-8 if right else 8, 10 if low else -10),
                        ha="right" if right else "left", va="bottom" if low else "top",
                        fontsize=9, color=VAL,  # white backing: legible where the train curve crosses
                        bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1})
    ax_acc.set(title="Accuracy", xlabel="epoch", ylabel="top-1 accuracy (%)")
    ax_loss.set(title="Loss (cross-entropy)", xlabel="epoch", ylabel="loss")
    ax_lr.plot(ep, m["lr"], color=LR, **dots)
    ax_lr.set(title="Learning rate (end of epoch)", xlabel="epoch", ylabel="lr")
    for ax in (ax_acc, ax_loss, ax_lr):
        ax.grid(alpha=0.3)
        if len(ep) < 12:
            ax.set_xticks(ep)
    ax_acc.legend(loc="best")  # lower right for a rising curve; elsewhere where the curves leave room
    ax_loss.legend(loc="upper right")
    fig.suptitle(title, fontsize=12)
    return fig


def curves_title(run: Path, m: dict) -> str:
    """The run's name and, from its config.yaml, the settings that shaped the curves."""
    title = run.resolve().name
    cfg_path = run / "config.yaml"
    if cfg_path.is_file():
        import yaml

        cfg = yaml.safe_load(cfg_path.read_text()) or {}
        length = f"{len(m['epoch'])}/{cfg.get('epochs', '?')} epochs"
        if cfg.get("time_budget"):  # --epochs is only a cap then: the clock ended training
            length = f"{len(m['epoch'])} epochs in a {cfg['time_budget']:g} s clock budget"
        title += f": {cfg.get('model', '?')}, {cfg.get('optimizer', '?')} lr {cfg.get('lr', '?')}, " \
                 f"batch {cfg.get('batch_size', '?')}, {length}"
    return title


def plot_curves(run: Path | str, out: Path | str | None = None) -> list[Path]:
    """Draw RUN/metrics.csv to RUN/curves.png and RUN/curves.svg (or OUT.png / OUT.svg)."""
    run = Path(run)
    m = read_metrics(run)
    fig = _figure(m, curves_title(run, m))
    stem = Path(out) if out else run / "curves"
    paths = []
    for fmt in ("png", "svg"):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=120)
        path = stem.with_suffix(f".{fmt}")
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return paths
