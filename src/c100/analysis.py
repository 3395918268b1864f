"""Where a model errs and how sure it is: superclass confusion, the most confused fine-class pairs,
per-class accuracy, calibration (reliability diagram, expected calibration error) and the most
confident mistakes. Everything is computed from the logits `evaluate` saved."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from c100.checkpoint import atomic_write_bytes, atomic_write_json
from c100.evaluate import Predictions
from c100.mosaic import GREEN, INK, PAPER, RED, font, pretty, save_png

INK_HEX = "#111827"


def confusion(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(y * k + pred, minlength=k * k).reshape(k, k)


def calibration(conf: np.ndarray, correct: np.ndarray, bins: int = 15) -> dict:
    """Reliability per confidence bin and the expected calibration error (Guo et al. 2017)."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            acc, avg = correct[m].mean(), conf[m].mean()
            ece += m.mean() * abs(acc - avg)
            rows.append({"lo": edges[b], "hi": edges[b + 1], "n": int(m.sum()), "accuracy": float(acc),
                         "confidence": float(avg)})
    return {"ece": float(ece), "bins": rows}


def confused_pairs(cm: np.ndarray, names: list[str], top: int = 15) -> list[dict]:
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:top]
    out = []
    for flat in order:
        t, q = divmod(int(flat), cm.shape[0])
        if off[t, q] == 0:
            break
        out.append({"true": names[t], "predicted": names[q], "count": int(off[t, q]),
                    "share_of_true": float(off[t, q] / max(1, cm[t].sum()))})
    return out


def _savefig(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_superclass_confusion(cm: np.ndarray, names: list[str], path: Path) -> Path:
    plt = _plt()
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(10, 8.6), constrained_layout=True)
    im = ax.imshow(share * 100, cmap="Blues", vmin=0, vmax=100)
    ax.set_xticks(range(len(names)), [pretty(n) for n in names], rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), [pretty(n) for n in names], fontsize=8)
    for i in range(len(names)):
        for j in range(len(names)):
            if share[i, j] >= 0.01:
                ax.text(j, i, f"{100 * share[i, j]:.0f}", ha="center", va="center", fontsize=6.5,
                        color="white" if share[i, j] > 0.5 else INK_HEX)
    ax.set(xlabel="predicted superclass", ylabel="true superclass",
           title="Superclass confusion (% of each true superclass; fine predictions mapped to superclasses)")
    fig.colorbar(im, ax=ax, shrink=0.7, label="% of row")
    return _savefig(fig, path)


def plot_per_class(acc: np.ndarray, names: list[str], path: Path) -> Path:
    plt = _plt()
    order = np.argsort(acc, kind="stable")
    fig, ax = plt.subplots(figsize=(8, 16), constrained_layout=True)
    colors = ["#2563eb" if a >= acc.mean() else "#f59e0b" for a in acc[order]]  # above / below the mean
    ax.barh(range(len(order)), acc[order] * 100, color=colors, height=0.75)
    ax.set_yticks(range(len(order)), [pretty(names[i]) for i in order], fontsize=6.5)
    ax.axvline(acc.mean() * 100, color=INK_HEX, lw=1, ls="--", label=f"mean {acc.mean():.1%}")
    ax.set(xlim=(0, 100), xlabel="top-1 accuracy (%)", title="Per-class accuracy, sorted (orange: below the mean)")
    ax.margins(y=0.005)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right")
    return _savefig(fig, path)


def plot_calibration(cal: dict, path: Path) -> Path:
    plt = _plt()
    fig, (ax, hx) = plt.subplots(2, 1, figsize=(6, 7), height_ratios=[3, 1], sharex=True, constrained_layout=True)
    bins = cal["bins"]
    mids = [(b["lo"] + b["hi"]) / 2 for b in bins]
    width = bins[0]["hi"] - bins[0]["lo"] if bins else 1 / 15
    acc = [b["accuracy"] for b in bins]
    conf = [b["confidence"] for b in bins]
    ax.bar(mids, acc, width=width * 0.9, color="#2563eb", label="accuracy in bin")
    # The gap to the bin's mean confidence: above the bar when over-confident, inside it when under.
    ax.bar(mids, [abs(c - a) for a, c in zip(acc, conf, strict=True)], bottom=[min(a, c) for a, c in
           zip(acc, conf, strict=True)], width=width * 0.9, fill=False, edgecolor="#dc2626", hatch="///", lw=0.8,
           label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], color=INK_HEX, lw=1, ls="--", label="perfect calibration")
    n = sum(b["n"] for b in bins)
    mean_acc = sum(b["n"] * b["accuracy"] for b in bins) / max(n, 1)
    mean_conf = sum(b["n"] * b["confidence"] for b in bins) / max(n, 1)
    lean = "over-confident" if mean_conf > mean_acc else "under-confident"
    ax.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
           title=f"Reliability: ECE {100 * cal['ece']:.2f}%, {lean}\n(mean confidence {mean_conf:.1%}, "
                 f"accuracy {mean_acc:.1%})")
    ax.legend(loc="upper left")
    hx.bar(mids, [b["n"] for b in bins], width=width * 0.9, color="#6b7280")
    hx.set(xlabel="confidence (max softmax probability)", ylabel="images")
    return _savefig(fig, path)


def image_grid(items: list[tuple[np.ndarray, str, str, bool]], path: Path, title: str, cols: int = 8,
               scale: int = 3) -> Path:
    """items: (image 3x32x32, line 1, line 2, right?) drawn as framed thumbnails with two caption lines."""
    cell, border, f = 32 * scale, 3, font(12)
    w = max(cell + 2 * border, 150)
    h = cell + 2 * border + 34
    rows = max(1, -(-len(items) // cols))
    img = Image.new("RGB", (cols * (w + 6) + 6, 30 + rows * (h + 6)), PAPER)
    d = ImageDraw.Draw(img)
    d.text((6, 8), title, fill=INK, font=font(14))
    for k, (im, l1, l2, ok) in enumerate(items):
        x0, y0 = 6 + (k % cols) * (w + 6), 30 + (k // cols) * (h + 6)
        xi = x0 + (w - cell - 2 * border) // 2
        d.rectangle([xi, y0, xi + cell + 2 * border - 1, y0 + cell + 2 * border - 1], fill=GREEN if ok else RED)
        img.paste(Image.fromarray(im.transpose(1, 2, 0)).resize((cell, cell), Image.Resampling.NEAREST),
                  (xi + border, y0 + border))
        for j, line in enumerate((l1, l2)):
            while f.getlength(line) > w and len(line) > 4:
                line = line[:-2] + "…"
            d.text((x0 + (w - f.getlength(line)) / 2, y0 + cell + 2 * border + 3 + 15 * j), line, fill=INK, font=f)
    return save_png(img, path)


def confident_mistakes(p: Predictions, n: int) -> np.ndarray:
    """The indices of the n wrong answers given with the highest probability, most confident first."""
    probs = p.probs.numpy()
    pred, conf = probs.argmax(1), probs.max(1)
    wrong = np.flatnonzero(pred != p.split.fine)
    return wrong[np.argsort(-conf[wrong], kind="stable")][:n]


def analyze(p: Predictions, out_dir: Path, top_pairs: int = 15, mistakes: int = 32) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    probs = p.probs.numpy()
    pred, conf = probs.argmax(1), probs.max(1)
    y = p.split.fine
    names, supers, f2c = p.meta.fine_names, p.meta.coarse_names, np.asarray(p.meta.fine_to_coarse)
    k = len(names)
    cm = confusion(y, pred, k)
    per_class = np.diag(cm) / np.maximum(cm.sum(1), 1)
    correct = pred == y
    cal = calibration(conf, correct)
    pairs = confused_pairs(cm, names, top_pairs)
    files = {
        "superclass_confusion": plot_superclass_confusion(confusion(f2c[y], f2c[pred], len(supers)), supers,
                                                          out_dir / "superclass_confusion.png"),
        "per_class": plot_per_class(per_class, names, out_dir / "per_class.png"),
        "calibration": plot_calibration(cal, out_dir / "calibration.png"),
    }
    examples = []
    for pair in pairs[:8]:
        t, q = names.index(pair["true"]), names.index(pair["predicted"])
        for i in np.flatnonzero((y == t) & (pred == q))[:4]:
            examples.append((p.split.images[i], f"is {pretty(pair['true'])}",
                             f"said {pretty(pair['predicted'])} {conf[i]:.0%}", False))
    files["confused_pairs"] = image_grid(examples, out_dir / "confused_pairs.png",
                                         "The most confused pairs: true class, predicted class (confidence)")
    worst = confident_mistakes(p, mistakes)
    files["confident_mistakes"] = image_grid(
        [(p.split.images[i], f"said {pretty(names[pred[i]])} {conf[i]:.0%}", f"is {pretty(names[y[i]])}", False)
         for i in worst],
        out_dir / "confident_mistakes.png", "The most confident mistakes: predicted class (confidence), true class")
    summary = {"split": p.result.get("split"), "n": int(len(y)), "top1": float(correct.mean()),
               "ece": cal["ece"], "calibration_bins": cal["bins"], "confused_pairs": pairs,
               "per_class": {names[i]: float(per_class[i]) for i in range(k)},
               "files": {key: path.name for key, path in files.items()}}
    atomic_write_json(out_dir / "analysis.json", summary)
    return summary


def pairs_markdown(pairs: list[dict]) -> str:
    lines = ["| true class | predicted as | images | share of the true class |", "|---|---|---|---|"]
    lines += [f"| {p['true']} | {p['predicted']} | {p['count']} | {p['share_of_true']:.0%} |" for p in pairs]
    return "\n".join(lines)
