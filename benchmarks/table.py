"""Build the results tables from benchmarks/results/index.yaml and the files it lists.

    python benchmarks/table.py           # write benchmarks/README.md and the README's table
    python benchmarks/table.py --check   # write nothing; fail if the index, the files or the two pages disagree

Outputs: benchmarks/README.md, every table (current records, the selection sweeps grouped by sweep,
the archive of superseded records, and each file's date, torch and git), and, between the markers in
the top-level README.md, one compact table of the current records that name a README row (`row:` in
the index). Fails with a one-line-per-problem message if a file under results/ is missing from the
index, or the index names a file that does not exist or sits in the wrong folder for its status.
A command that ran a script since moved to benchmarks/archive/ is shown as it runs from there.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
INDEX = RESULTS / "index.yaml"
OUT = ROOT / "benchmarks" / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
FOLDERS = {"record": "records", "sweep": "sweeps", "archive": "archive"}  # status -> its folder
ARCHIVED = sorted(p.stem for p in (ROOT / "benchmarks" / "archive").glob("*.py"))  # one-off experiments


def natural_key(path: str) -> list:
    """select2 before select10 (digit runs compare as numbers), select7-base before select7-base-s1."""
    stem = path.rsplit(".", 1)[0] if "." in Path(path).name else path
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", stem)]


def companions(json_path: Path) -> list[Path]:
    """The files that travel with a result JSON: NAME.log and NAME-sN-metrics.csv beside it."""
    stem = json_path.stem
    pattern = re.compile(re.escape(stem) + r"-s\d+-metrics\.csv")
    return sorted(p for p in json_path.parent.iterdir()
                  if p.name == f"{stem}.log" or pattern.fullmatch(p.name))


def load_index() -> tuple[dict, list[dict]]:
    """The index's sweeps and entries, checked against the files under results/ (SystemExit if not)."""
    index = yaml.safe_load(INDEX.read_text())
    sweeps, entries = index.get("sweeps") or {}, index.get("results") or []
    errors, named = [], set()
    for e in entries:
        file, status = e.get("file"), e.get("status")
        if not file or not e.get("title") or status not in FOLDERS:
            errors.append(f"entry {e}: needs file, title and status (one of {', '.join(FOLDERS)})")
            continue
        path = RESULTS / file
        if file in named:
            errors.append(f"{file}: listed twice")
        named.add(file)
        if not path.is_file():
            errors.append(f"{file}: named in the index but missing on disk")
        if Path(file).parts[0] != FOLDERS[status]:
            errors.append(f"{file}: status {status} but not under {FOLDERS[status]}/")
        if status == "sweep" and (len(Path(file).parts) != 3 or Path(file).parts[1] not in sweeps):
            errors.append(f"{file}: a sweep's files lie in sweeps/NN-topic/, a folder named under 'sweeps:'")
        if e.get("row") and status != "record":
            errors.append(f"{file}: only a record feeds a README row")
    for name in sweeps:
        if not (RESULTS / "sweeps" / name / "README.md").is_file():
            errors.append(f"sweeps/{name}/README.md: missing (what was compared, what was decided)")
    claimed = set(named) | {"index.yaml"} | {f"sweeps/{name}/README.md" for name in sweeps}
    for file in named:
        if file.endswith(".json") and (RESULTS / file).is_file():
            claimed |= {p.relative_to(RESULTS).as_posix() for p in companions(RESULTS / file)}
    on_disk = {p.relative_to(RESULTS).as_posix() for p in RESULTS.rglob("*") if p.is_file()}
    hint = " (add an entry, or name it NAME.log / NAME-sN-metrics.csv beside its JSON)"
    errors += [f"{f}: not in the index" + (" (add an entry)" if f.endswith(".json") else hint)
               for f in sorted(on_disk - claimed, key=natural_key)]
    if errors:
        raise SystemExit(f"table.py: {INDEX.relative_to(ROOT)} does not match the files under "
                         f"{RESULTS.relative_to(ROOT)}/:\n  " + "\n  ".join(errors))
    for pos, e in enumerate(entries):
        e["_pos"] = pos  # the README's table keeps the index's order; the full tables sort naturally
    return sweeps, sorted(entries, key=lambda e: natural_key(e["file"]))


def rows(entries: list[dict]) -> list[dict]:
    """The result JSONs of these index entries, each with its path (_file) and index entry (_entry)."""
    out = []
    for e in entries:
        if e["file"].endswith(".json"):
            r = json.loads((RESULTS / e["file"]).read_text())
            r["_file"], r["_entry"] = e["file"], e
            out.append(r)
    return out


def _link(file: str, text: str | None = None) -> str:
    """A link from benchmarks/README.md to a file under results/."""
    return f"[{text or Path(file).name}](results/{file})"


def command(r: dict, key: str = "command") -> str:
    """A result's command, as code, as it can be pasted today: a script since archived run from its new
    place; one since deleted said so."""
    text = r[key]
    if ARCHIVED:
        moved = r"python benchmarks/(" + "|".join(ARCHIVED) + r")\.py\b"
        text = re.sub(moved, r"PYTHONPATH=benchmarks python benchmarks/archive/\1.py", text)
    gone = [s for s in re.findall(r"benchmarks/[a-z0-9_/]+\.(?:py|sh)", text) if not (ROOT / s).is_file()]
    return f"`{text}`" + (f" ({', '.join(gone)}: deleted since, in git history)" if gone else "")


def _pct(mean, std, n) -> str:
    if n == 1:  # no spread to show from one seed
        return f"{100 * mean:.2f} % (1 seed)"
    return f"{100 * mean:.2f} +- {100 * std:.2f} % ({n} seeds)"


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
        lines.append(f"| {_link(r['_file'], r['benchmark'])} ({r['preset']}, {_length(r)}{note}) | {r['device']} | "
                     f"{wall / 60:.1f} min | "
                     f"{compile_s} | {_pct(r['test_top1_mean'], r['test_top1_std'], len(r['seeds']))} | "
                     f"{_target(r)} | {command(r, 'reproduce' if 'reproduce' in r else 'command')} |")
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
        lines.append(f"| {_link(r['_file'], r['benchmark'])} ({r['preset']}, {_length(r)}) | {changes} | "
                     f"{r['device']} | {_pct(r['final_val_acc_mean'], r['final_val_acc_std'], len(r['seeds']))} | "
                     f"{steps} | {r['images_per_s']:.0f} | {command(r)} |")
    return "\n".join(lines)


def _kind_table(results: list[dict], kind: str, head: list[str], row) -> str:
    """The rows of one benchmark kind (its JSON "benchmark" field), one line each from row(r)."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += [f"| {row(r)} | {command(r)} |" for r in results if r.get("benchmark") == kind]
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
                  f"{s['speedup_median']:.2f} ({r['rounds']} rounds) | {command(r)} |" for s in r["step_speedup"]]
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
                  f"{w['eval_size']} px | {100 * w['val_top1']:.2f}% | {w['eval_s']:.1f} | {command(r)} |"
                  for w in r["rows"]]
    return "\n".join(lines)


def roofline_table(results: list[dict]) -> str:
    head = ["cpu-fast step (batch 64)", "hardware", "precision", "GFLOP per step", "img/s", "oneDNN alone img/s",
            "default SGD img/s", "GFLOP/s", "share of the matmul rate", "command"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    frozen = {True: "stem and layer1 frozen", False: "stem frozen"}
    for r in (r for r in results if r.get("benchmark") == "roofline"):
        for s in r["settings"]:
            onednn = s.get("onednn_images_per_s")  # measured since 2026-12-04
            alone = f"{onednn:.1f} ({s['speedup_over_onednn']:.2f}x)" if onednn else "-"
            sgd = s.get("default_sgd_images_per_s")  # measured since 2026-12-05
            sgd = f"{sgd:.1f} ({s['speedup_over_default_sgd']:.2f}x)" if sgd else "-"
            share = f"{100 * s['fraction_of_matmul']:.0f}% of {s['matmul_gflops_per_s']:.0f} ({r['rounds']} rounds)"
            lines.append(f"| {s['res']} px, {frozen[s['early_frozen']]} | {r['device']} | "
                         f"{s.get('precision', 'fp32')} | {s['step_gflops']:.1f} | {s['images_per_s']:.1f} | {alone} | "
                         f"{sgd} | "
                         f"{s['achieved_gflops_per_s']:.1f} | {share} | {command(r)} |")
    return "\n".join(lines)


def keras_training_table(results: list[dict]) -> str:
    head = ["homework network, batch 64, 32 px", "hardware", "Keras fp32 img/s", "ours fp32 img/s (ratio)",
            "ours bf16 img/s (ratio)", "oneDNN alone: fp32 / bf16 (ratio)", "command"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in (r for r in results if r.get("benchmark") == "roofline" and r.get("keras")):
        k = r["keras"]
        ours = {p: (f"{k[f'ours_{p}_images_per_s']:.1f} ({k[f'ratio_{p}']:.2f}x)" if f"ratio_{p}" in k else "-")
                for p in ("fp32", "bf16", "fp32_onednn", "bf16_onednn")}
        lines.append(f"| train step, medians of {len(k['rounds']['keras'])} alternating rounds | {r['device']} | "
                     f"{k['keras_images_per_s']:.1f} | {ours['fp32']} | {ours['bf16']} | "
                     f"{ours['fp32_onednn']} / {ours['bf16_onednn']} | {command(r)} |")
    return "\n".join(lines)


def precision_table(results: list[dict]) -> str:
    head = ["cpu-fast step (batch 64)", "hardware", "fp32 img/s", "bf16 img/s", "bf16 / fp32 (median)", "command"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in (r for r in results if r.get("benchmark") == "precision-speed"):
        lines += [f"| {s['res']} px, stem frozen | {r['device']} | {s['fp32_images_per_s']:.1f} | "
                  f"{s['bf16_images_per_s']:.1f} | {s['bf16_over_fp32']:.2f} ({r['rounds']} rounds) | "
                  f"{command(r)} |"
                  for s in r["settings"]]
    return "\n".join(lines)


def readme_table(records: list[dict]) -> str:
    """The top-level README's one table: the current records that name a row in the index."""
    lines = ["| record | hardware | precision or backend | time (training clock / in all with the test pass, worst "
             "seed) or speed | test top-1 (mean +- std) | result |", "|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: r["_entry"]["_pos"]):
        if r["_entry"].get("row") and r.get("benchmark") == "shipped-weights":
            lines.append(shipped_row(r))
        if r["_entry"].get("row") and r.get("benchmark") in ("inference-speed", "load-test"):
            lines.append(speed_row(r, next((x for x in records if x.get("benchmark") == "inference-macs"), None)))
        if not r["_entry"].get("row") or r.get("test_top1_mean") is None:
            continue
        clock = f"{r['time_budget']:g} s / " if r.get("time_budget") else ""
        wall = r.get("wall_s_max", r["wall_s_mean"])
        lines.append(f"| {r['_entry']['row']} | {r['device']} | {r['precision']} | {clock}{wall / 60:.1f} min | "
                     f"{_pct(r['test_top1_mean'], r['test_top1_std'], len(r['seeds']))} | "
                     f"[{Path(r['_file']).name}](benchmarks/results/{r['_file']}) |")
    return "\n".join(lines)


def shipped_row(r: dict) -> str:
    """The shipped weights re-measured (benchmarks/remeasure_shipped.py): one model, every backend agreeing."""
    t, tops = r["trained"], {f"{100 * x['top1']:.2f}" for x in r["rows"]}
    length = f"{t['time_budget']:g} s of " + (f"fine-tuning {Path(t['init_from']).name}" if t.get("init_from")
                                              else "training")
    agree = " (the same through " + " and ".join(x["backend"] for x in r["rows"]) + ")" if len(tops) == 1 else ""
    return (f"| {r['_entry']['row']} | trained on {t['device']}, re-measured on {r['device']} | "
            f"trained {t['precision']}, weights {r['dtype']}, evaluated fp32 | {length} | "
            f"{100 * r['test_top1']:.2f} % (1 model; {100 * r['rows'][0]['tta_top1']:.2f} % with flip TTA){agree} | "
            f"[{Path(r['_file']).name}](benchmarks/results/{r['_file']}) |")


def per_mac(x_keras: float, macs: dict | None) -> str:
    """The speed ratio work for work: our 24 px network does fewer multiply-adds per image than the homework's
    at 32 px (benchmarks/macs.py), so per multiply-add the ratio is smaller."""
    if not macs:
        return ""
    ours, keras = macs["rows"][0], macs["rows"][2]
    return (f", {x_keras * macs['ours_over_keras']:.2f}x per multiply-add (ours {ours['macs'] / 1e9:.2f} GMAC "
            f"per image at {ours['input_px']} px, Keras's {keras['macs'] / 1e9:.2f} at {keras['input_px']} px)")


def speed_row(r: dict, macs: dict | None = None) -> str:
    """A speed record in the README's table: the int8 classifier against the homework's Keras model (also per
    multiply-add, given the MAC counts), or the web demo under load."""
    link = f"[{Path(r['_file']).name}](benchmarks/results/{r['_file']})"
    if r["benchmark"] == "load-test":
        lat, a = r["latency_ms"], r.get("abuse")
        abuse = (f"; with {a['abuse_sockets']} idle and stalled sockets open: p99 {a['latency_ms']['p99']:.0f} ms, "
                 f"{a['errors']} errors, /health p99 {a['health_ms']['p99']:.0f} ms" if a else "")
        return (f"| {r['_entry']['row']} | {r['device']} | {r['backend']} ({r['backend_used']}), micro-batching | "
                f"{r['requests_per_s']:.0f} requests/s, p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms, "
                f"{r['errors']} errors{abuse} | - | {link} |")
    name = r.get("auto", "int8")  # the backend `auto` takes: the fastest within 0.5 points of fp32
    b, k = r["backends"][name], r["keras"]
    runs = {"int8": "int8 (ONNX Runtime)", "openvino-int8": "int8 (OpenVINO)", "onnx": "fp32 (ONNX Runtime)",
            "openvino": "fp32 (OpenVINO)"}.get(name, name)
    return (f"| {r['_entry']['row']} | {r['device']} | {runs} | {b['images_per_s']:.0f} img/s at "
            f"batch 100 = {b['x_keras']:.2f}x the homework's Keras ResNet18 ({k['images_per_s']:.0f} img/s)"
            f"{per_mac(b['x_keras'], macs)}; batch 1: "
            f"{b['median_ms']:.1f} ms against {k['median_ms']:.1f} ms | {100 * b['test_top1']:.2f} % "
            f"(fp32: {100 * r['backends']['torch']['test_top1']:.2f} %) | {link} |")


def _others(entries: list[dict]) -> str:
    """The entries without a JSON (logs, tables), one line each."""
    return "".join(f"- {_link(e['file'])}: {e['title']}\n" for e in entries if not e["file"].endswith(".json"))


def records_section(entries: list[dict]) -> str:
    results = rows(entries)
    return ("## Current records\n\n**Accuracy** (final model, test set read once per seed)\n\n" +
            accuracy_table(results) + "\n\n" + _others(entries) +
            "\n**Training throughput, trainer vs bare loop**\n\n" + throughput_table(results) +
            "\n\n**torch.compile for training, eager vs compiled**\n\n" + compile_table(results) +
            "\n\n**CPU convolution backward: oneDNN vs GEMM weight gradients on small maps**\n\n" +
            conv_backward_table(results) +
            "\n\n**Evaluation: BatchNorm folded into the convolutions (models/fold.py)**\n\n" +
            eval_speed_table(results) +
            "\n\n**The CPU training step against the matmul rate of its precision and against oneDNN "
            "alone**\n\n" +
            roofline_table(results) +
            "\n\n**The training step against Keras/TensorFlow's, side by side**\n\n" + keras_training_table(results) +
            "\n\n**CPU training precision: fp32 vs bf16 autocast, side by side**\n\n" + precision_table(results))


def sweeps_section(sweeps: dict, entries: list[dict]) -> str:
    out = ["## Selection sweeps\n\nValidation split only; the test set is not read. Each folder's README.md says "
           "what was compared and what was decided."]
    for name in sorted(sweeps, key=natural_key):
        mine = [e for e in entries if Path(e["file"]).parts[1] == name]
        results = rows(mine)
        part = f"### {_link(f'sweeps/{name}/README.md', name)}: {sweeps[name]}\n\n"
        if any(r.get("final_val_acc_mean") is not None for r in results):
            part += selection_table(results) + "\n\n"
        if any(r.get("benchmark") == "eval-resolution" for r in results):
            part += ("Final models on the validation split at several input sizes:\n\n" +
                     eval_resolution_table(results) + "\n\n")
        out.append(part + _others(mine))
    return "\n\n".join(p.rstrip("\n") for p in out)


def archive_section(entries: list[dict]) -> str:
    return ("## Archive: superseded records\n\nEach was the record of its day; its JSON's note says what "
            "changed after it. Test set read once per seed.\n\n" + accuracy_table(rows(entries)))


def files_section(entries: list[dict]) -> str:
    lines = ["## Files\n", "| file | status | what | date | torch | git |", "|---|---|---|---|---|---|"]
    for e in entries:
        r = json.loads((RESULTS / e["file"]).read_text()) if e["file"].endswith(".json") else {}
        lines.append(f"| {_link(e['file'], e['file'])} | {e['status']} | {e['title']} | {r.get('date', '-')} | "
                     f"{r.get('torch', '-')} | {r.get('git', '-')} |")
    return "\n".join(lines)


INTRO = """# Benchmarks

Scripts that measure on the real CIFAR-100 (this folder) and their committed results (`results/`).
This page is generated by `python benchmarks/table.py` from `results/index.yaml` and the files it
lists; edit those, not this page. How the CPU recipe was found, as one ablation table:
[docs/cpu-record.md](../docs/cpu-record.md).

- `results/records/`: the current records, one per recipe and machine, and the speed measurements
  nothing has replaced (`record.py` and the speed scripts write here by default).
- `results/sweeps/NN-topic/`: selection rounds on the validation split, in the order they ran,
  each with a README.md (what was compared, what was decided).
- `results/archive/`: superseded records, kept with their logs.
- `results/index.yaml`: every result with its status and a one-line title; `table.py` fails if a
  file is missing from it.

A result JSON holds its command, date, machine, torch version and git revision; its `NAME.log` and
`NAME-sN-metrics.csv` (per epoch, per seed) lie beside it. Each row names its hardware and
precision: figures from different machines are not side by side.

The scripts come in two kinds. The tools, here, are rerun whenever the code or the machine changes;
each says how to run it in its first lines:

- `record.py` (train a preset per seed, test once), `seed_runs.sh` (the homework's presets),
  `gpu.sh` (the GPU records in one command; it runs `record.py`, `throughput.py` and
  `compile_speed.py`), `table.py` (this page).
- Speed: `throughput.py` (trainer vs bare loop), `compile_speed.py` (eager vs compiled),
  `roofline.py` (the CPU step against the matmul rate, oneDNN and Keras), `inference_speed.py`
  (every backend against Keras; `keras/setup.sh` first), `load_test.py` (the web demo under load),
  `macs.py` (multiply-adds per image).
- The shipped weights: `ship_weights.py` (a candidate against the shipped file: the 3-point rule),
  `remeasure_shipped.py` (the shipped file re-measured through every path, after any change to it).
- Shared by them: `provenance.py` (what every result JSON records) and `timing.py` (the one timing
  loop: warm-up, alternating rounds, medians).

`archive/` holds the one-off experiments whose decisions are already in the code (each names its
decision and its result); run one from the repository root with
`PYTHONPATH=benchmarks python benchmarks/archive/NAME.py`, and the tables below show their commands so.
"""


def render() -> dict[Path, str]:
    """What benchmarks/README.md and the top-level README.md should hold, from the index and its files."""
    sweeps, entries = load_index()
    by_status = {s: [e for e in entries if e["status"] == s] for s in FOLDERS}
    page = "\n\n".join([INTRO.rstrip("\n"), records_section(by_status["record"]),
                         sweeps_section(sweeps, by_status["sweep"]), archive_section(by_status["archive"]),
                         files_section(entries)])
    body = (readme_table(rows(by_status["record"])) + "\n\nSpeed measurements, the selection sweeps behind each "
            "choice and the superseded records:\n[benchmarks/README.md](benchmarks/README.md); how the recipe was "
            "found: [docs/cpu-record.md](docs/cpu-record.md).")
    readme = ROOT / "README.md"
    head, rest = readme.read_text().split(START, 1)
    tail = rest.split(END, 1)[1]
    return {OUT: page + "\n", readme: head + START + "\n" + body + "\n" + END + tail}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="write nothing: fail if the index and the files disagree, or if a page is not what this "
                         "script would write")
    args = ap.parse_args()
    pages = render()
    stale = [path for path, text in pages.items() if path.read_text() != text]
    if args.check:
        if stale:
            raise SystemExit("table.py: not up to date (run python benchmarks/table.py): " +
                             ", ".join(str(p.relative_to(ROOT)) for p in stale))
        return 0
    for path in stale:
        path.write_text(pages[path])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
