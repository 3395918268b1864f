"""Several runs side by side: one Markdown table of their figures and one PNG of their validation curves
overlaid, to read a series of experiments (such as the seed-* presets) at a glance."""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

from c100 import UserError
from c100.checkpoint import atomic_write_bytes, atomic_write_text
from c100.config import read_yaml
from c100.data import NUM_FINE
from c100.plots import read_metrics, validated

FIGSIZE, DPI = (13, 4.6), 100  # the PNG is 1300 x 460 px


@dataclass
class RunSummary:
    name: str
    config: dict
    metrics: dict[str, list[float | None]]
    tests: dict[str, float]  # checkpoint ("last", "best") -> test top-1, for those evaluated


def check_run(path: Path) -> None:
    """One-line errors for what is not a run folder, before anything is read."""
    if not path.exists():
        raise UserError(f"{path}: no such folder; pass run folders written by `c100 train`")
    if not path.is_dir():
        raise UserError(f"{path} is a file, not a run folder; pass the folder that holds its metrics.csv")
    if not (path / "metrics.csv").is_file():
        if (path / "config.yaml").is_file():
            raise UserError(f"{path} has no metrics.csv yet (no epoch finished); compare it after its first "
                            f"epoch, or leave it out")
        raise UserError(f"{path} is not a run folder (no metrics.csv); pass folders written by `c100 train`")


def read_tests(run: Path) -> dict[str, float]:
    out = {}
    for which in ("last", "best"):
        path = run / f"eval-test-{which}.json"
        if path.is_file():
            try:
                out[which] = float(json.loads(path.read_text())["top1"])
            except (ValueError, KeyError, TypeError):
                raise UserError(f"{path} is not an evaluation result; rerun `c100 evaluate {run}`") from None
    return out


def load_run(path: Path | str, name: str) -> RunSummary:
    path = Path(path)
    check_run(path)
    config = read_yaml(path / "config.yaml", "run config") if (path / "config.yaml").is_file() else {}
    return RunSummary(name, config, read_metrics(path), read_tests(path))


def run_names(paths: list[str]) -> list[str]:
    """Folder names, or the paths as given where two folders share a name (runs/a/x, runs/b/x)."""
    names = [Path(p).resolve().name for p in paths]
    return [n if names.count(n) == 1 else str(p).rstrip("/") for n, p in zip(names, paths, strict=True)]


def recipe(cfg: dict) -> str:
    """The settings that tell runs apart, in a few words (the full config is in config.yaml)."""
    if not cfg:
        return "-"
    parts = [f"{cfg.get('optimizer', '?')} lr {num(cfg.get('lr', '?'))}", cfg.get("schedule", "?")]
    if cfg.get("schedule") == "inverse-time":
        parts[-1] += f" {num(cfg.get('lr_decay', 0))}"
    parts.append(f"batch {cfg.get('batch_size', '?')}")
    for key, label in (("l2", "L2"), ("weight_decay", "wd"), ("label_smoothing", "label smoothing")):
        if cfg.get(key):
            parts.append(f"{label} {num(cfg[key])}")
    aug = [label for key, label in (("translate", f"shift {cfg.get('translate')} px"), ("flip", "flip"),
                                    ("cutout", f"cutout {cfg.get('cutout')}")) if cfg.get(key)]
    parts.append(" + ".join(aug) if aug else "no aug")
    return ", ".join(parts)


def num(x) -> str:
    return f"{x:g}" if isinstance(x, (int, float)) else str(x)


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def top1_cell(tests: dict[str, float]) -> str:
    """The final model's test top-1 (what `c100 evaluate RUN` measures); the best-epoch one beside it."""
    if not tests:
        return "-"
    if "last" not in tests:
        return f"{pct(tests['best'])} (best ckpt)"
    return pct(tests["last"]) + (f" (best ckpt {pct(tests['best'])})" if "best" in tests else "")


def table_row(r: RunSummary) -> list[str]:
    m, cfg = r.metrics, r.config
    epochs, val = validated(m, "val_acc")
    done, planned = len(m["epoch"]), cfg.get("epochs")
    # killed or still running; a --time-budget run ends before its epoch cap by design
    unfinished = isinstance(planned, int) and done < planned and not cfg.get("time_budget")
    best = max(range(len(val)), key=val.__getitem__) if val else None
    final = "-" if not val else pct(val[-1]) + ("" if epochs[-1] == m["epoch"][-1] else f" (epoch {epochs[-1]:g})")
    seconds = [s for s in m.get("epoch_s", []) if s is not None]
    return [r.name, cfg.get("model", "-"), recipe(cfg), f"{done}/{planned}" if unfinished else str(done),
            "-" if best is None else f"{pct(val[best])} (epoch {epochs[best]:g})", final, top1_cell(r.tests),
            duration(sum(seconds)) if seconds else "-"]


def markdown_table(runs: list[RunSummary]) -> str:
    head = ["run", "model", "recipe", "epochs", "best val acc", "final val acc", "test top-1", "wall time"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(table_row(r)) + " |" for r in runs]
    return "\n".join(lines)


def plot_overlay(runs: list[RunSummary], out: Path) -> Path:
    """Validation accuracy and loss per epoch, one colour per run, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=FIGSIZE, dpi=DPI, constrained_layout=True)
    ax_acc.set(title="Validation accuracy", xlabel="epoch", ylabel="top-1 accuracy (%)")
    ax_loss.set(title="Validation loss (cross-entropy)", xlabel="epoch", ylabel="loss")
    for i, r in enumerate(runs):
        ep, acc = validated(r.metrics, "val_acc")
        style = {"color": f"C{i % 10}", "label": r.name if ep else f"{r.name} (not validated)"}
        if len(ep) <= 30:  # few points (short runs, --eval-every): show where they were measured
            style.update(marker="o", markersize=3)
        ax_acc.plot(ep, [100 * a for a in acc], **style)
        ax_loss.plot(*validated(r.metrics, "val_loss"), **style)
    losses = [v for r in runs for v in validated(r.metrics, "val_loss")[1] if v > 0]
    if losses and max(losses) > 100 * min(losses):  # a blow-up (Adam at lr 0.1) would flatten the rest
        ax_loss.set(yscale="log", ylabel="loss (log scale)")
    # guessing among 100 classes: a run at these lines has learned nothing (or collapsed to one class)
    ax_acc.axhline(100 / NUM_FINE, color="gray", linestyle="--", linewidth=1, label="chance (1 in 100)")
    ax_loss.axhline(math.log(NUM_FINE), color="gray", linestyle="--", linewidth=1)
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no 1.2, 1.4 ticks
    ax_acc.legend(loc="best", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    atomic_write_bytes(Path(out), buf.getvalue())
    return Path(out)


def compare_runs(paths: list[str], out: Path | str = "compare.png", md: Path | str | None = None) -> tuple[str, Path]:
    """Read every run first (so a bad path fails before anything is written), then the table and the PNG."""
    runs = [load_run(p, name) for p, name in zip(paths, run_names(paths), strict=True)]
    table = markdown_table(runs)
    if md:
        atomic_write_text(Path(md), table + "\n")
    return table, plot_overlay(runs, Path(out))
