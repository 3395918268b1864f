"""Build the results tables from benchmarks/results/*.json only: benchmarks/results/README.md (with
command, machine, versions, date) and the table between the markers in the top-level README.

    python benchmarks/table.py
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def rows() -> list[dict]:
    out = []
    for path in sorted(RESULTS.glob("*.json")):
        r = json.loads(path.read_text())
        r["_file"] = path.name
        out.append(r)
    return out


def _pct(mean, std, n) -> str:
    return f"{100 * mean:.2f} +- {100 * std:.2f} % ({n} seed{'s' * (n > 1)})"


def _length(r: dict) -> str:
    if r.get("time_budget"):
        return f"{r['time_budget']:g} s budget, {r['precision']}"
    return f"{r['epochs']} epochs, {r['precision']}"


def _target(r: dict) -> str:
    if not r.get("target"):
        return "-"
    times = r.get("time_to_target_s") or []
    when = ", ".join(f"{t:.0f} s" for t in times) if times else "not reached"
    return f"{100 * r['target']:.2f}%: {when} ({r['target_reached']})"


def accuracy_table(results: list[dict]) -> str:
    lines = ["| run (preset, length, precision) | hardware | wall time (train + test eval; worst seed) | "
             "one-time compile | test top-1 (mean +- std) | val target: training time to it | command |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        if r.get("test_top1_mean") is None:
            continue
        wall = r.get("wall_s_max", r["wall_s_mean"])
        compile_s = f"{r['compile_s_mean']:.0f} s" if r.get("compile_s_mean") else "-"
        note = f"; {r['note']}" if r.get("note") else ""
        lines.append(f"| {r['benchmark']} ({r['preset']}, {_length(r)}{note}) | {r['device']} | {wall / 60:.1f} min | "
                     f"{compile_s} | {_pct(r['test_top1_mean'], r['test_top1_std'], len(r['seeds']))} | "
                     f"{_target(r)} | `{r['command']}` |")
    return "\n".join(lines)


def selection_table(results: list[dict]) -> str:
    lines = ["| run (preset, length) | changes | hardware | final val top-1 (mean +- std) | steps | img/s | command |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        if r.get("test_top1_mean") is not None or r.get("final_val_acc_mean") is None:
            continue
        changes = ", ".join(f"{k}={v if v != [] else '[]'}" for k, v in r["overrides"].items()) or "-"
        if r.get("note"):  # e.g. a run measured under load, kept for the record but not comparable
            changes += f" ({r['note']})"
        steps = ", ".join(str(p["steps"]) for p in r["per_seed"])
        lines.append(f"| {r['benchmark']} ({r['preset']}, {_length(r)}) | {changes} | {r['device']} | "
                     f"{_pct(r['final_val_acc_mean'], r['final_val_acc_std'], len(r['seeds']))} | {steps} | "
                     f"{r['images_per_s']:.0f} | `{r['command']}` |")
    return "\n".join(lines)


def _kind_table(results: list[dict], kind: str, head: list[str], row) -> str:
    """The rows of one benchmark kind (its JSON "benchmark" field), one line each from row(r)."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += [f"| {row(r)} | `{r['command']}` |" for r in results if r.get("benchmark") == kind]
    return "\n".join(lines)


def throughput_table(results: list[dict]) -> str:
    head = ["model, batch, precision", "hardware", "trainer img/s", "bare loop img/s", "ratio (median of rounds)",
            "command"]
    return _kind_table(results, "throughput", head, lambda r: (
        f"{r['model']}, {r['batch_size']}, {r['precision']} | {r['device']} | {r['trainer_images_per_s']:.1f} | "
        f"{r['bare_images_per_s']:.1f} | {100 * r['ratio_median']:.1f}% ({len(r['rounds'])} rounds)"))


def compile_table(results: list[dict]) -> str:
    head = ["model, batch, resolution, precision", "hardware", "one-time compile", "eager img/s", "compiled img/s",
            "ratio (median)", "command"]
    return _kind_table(results, "compile-speed", head, lambda r: (
        f"{r['model']}, {r['batch_size']}, {r['res']} px, {r['precision']} | {r['device']} | {r['compile_s']:.0f} s | "
        f"{r['eager_images_per_s']:.1f} | {r['compiled_images_per_s']:.1f} | "
        f"{r['ratio_median']:.2f} ({len(r['rounds'])} rounds)"))


def conv_backward_table(results: list[dict]) -> str:
    head = ["model, batch, resolution, precision", "hardware", "conv backward share of step (oneDNN)",
            "oneDNN img/s", "GemmGradConv2d img/s", "speedup (median)", "command"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in (r for r in results if r.get("benchmark") == "conv-backward"):
        share = {s["res"]: s["conv_backward"] for s in r["steps"]}
        lines += [f"| {r['model']}, {r['batch_size']}, {s['res']} px, {r['precision']} | {r['device']} | "
                  f"{100 * share[s['res']]:.0f}% | {s['onednn_images_per_s']:.1f} | {s['gemm_images_per_s']:.1f} | "
                  f"{s['speedup_median']:.2f} ({r['rounds']} rounds) | `{r['command']}` |" for s in r["step_speedup"]]
    return "\n".join(lines)


def eval_speed_table(results: list[dict]) -> str:
    head = ["model, images, batch, precision", "hardware", "plain img/s", "BN folded img/s", "ratio (median)",
            "top-1 agreement", "command"]
    return _kind_table(results, "eval-speed", head, lambda r: (
        f"{r['model']}, {r['images']}, {r['batch_size']}, {r['precision']} | {r['device']} | "
        f"{r['plain_images_per_s']:.1f} | {r['folded_images_per_s']:.1f} | {r['ratio_median']:.2f} "
        f"({len(r['rounds'])} rounds) | {100 * r['top1_agreement']:.2f}%"))


def eval_resolution_table(results: list[dict]) -> str:
    head = ["run", "training resolutions", "steps", "evaluated at", "val top-1", "eval s", "command"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in (r for r in results if r.get("benchmark") == "eval-resolution"):
        lines += [f"| {Path(w['run']).name} | {' -> '.join(f'{x:g}' for x in w['resolutions'])} px | {w['steps']} | "
                  f"{w['eval_size']} px | {100 * w['val_top1']:.2f}% | {w['eval_s']:.1f} | `{r['command']}` |"
                  for w in r["rows"]]
    return "\n".join(lines)


def roofline_table(results: list[dict]) -> str:
    head = ["cpu-fast step (batch 64)", "hardware", "GFLOP per step", "img/s", "GFLOP/s", "share of the matmul rate",
            "command"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    frozen = {True: "stem and layer1 frozen", False: "stem frozen"}
    for r in (r for r in results if r.get("benchmark") == "roofline"):
        lines += [f"| {s['res']} px, {frozen[s['early_frozen']]} | {r['device']} | "
                  f"{s['step_gflops']:.1f} | {s['images_per_s']:.1f} | {s['achieved_gflops_per_s']:.1f} | "
                  f"{100 * s['fraction_of_matmul']:.0f}% of {s['matmul_gflops_per_s']:.0f} ({r['rounds']} rounds) | "
                  f"`{r['command']}` |" for s in r["settings"]]
    return "\n".join(lines)


def precision_table(results: list[dict]) -> str:
    head = ["cpu-fast step (batch 64)", "hardware", "fp32 img/s", "bf16 img/s", "bf16 / fp32 (median)", "command"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in (r for r in results if r.get("benchmark") == "precision-speed"):
        lines += [f"| {s['res']} px, stem frozen | {r['device']} | {s['fp32_images_per_s']:.1f} | "
                  f"{s['bf16_images_per_s']:.1f} | {s['bf16_over_fp32']:.2f} ({r['rounds']} rounds) | "
                  f"`{r['command']}` |"
                  for s in r["settings"]]
    return "\n".join(lines)


def main() -> int:
    results = rows()
    body = ("**Accuracy** (final model, test set read once per seed)\n\n" + accuracy_table(results) +
            "\n\n**Recipe selection** (validation split only; the test set is not read)\n\n" +
            selection_table(results) + "\n\n**Training throughput, trainer vs bare loop**\n\n" +
            throughput_table(results) + "\n\n**torch.compile for training, eager vs compiled**\n\n" +
            compile_table(results) + "\n\n**CPU convolution backward: oneDNN vs GEMM weight gradients on small maps**"
            "\n\n" + conv_backward_table(results) +
            "\n\n**Evaluation: BatchNorm folded into the convolutions (models/fold.py)**\n\n" +
            eval_speed_table(results) +
            "\n\n**Evaluation resolution: final models on the validation split at several input sizes**\n\n" +
            eval_resolution_table(results) +
            "\n\n**How close the CPU training step runs to the machine's fp32 matmul rate**\n\n" +
            roofline_table(results) +
            "\n\n**CPU training precision: fp32 vs bf16 autocast, side by side**\n\n" + precision_table(results))
    details = ["| file | date | torch | git |", "|---|---|---|---|"]
    details += [f"| {r['_file']} | {r['date']} | {r['torch']} | {r.get('git', '')} |" for r in results]
    (RESULTS / "README.md").write_text("# Benchmark results\n\nGenerated by `python benchmarks/table.py` from the "
                                       "JSON files in this folder.\n\n" + body + "\n\n" + "\n".join(details) + "\n")
    readme = ROOT / "README.md"
    text = readme.read_text()
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    readme.write_text(head + START + "\n" + body + "\n" + END + tail)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
