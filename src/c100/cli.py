"""Command line: `c100 SUBCOMMAND ...`. Each subcommand parses flags and calls one library function;
a UserError becomes one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from c100 import UserError, __version__, config


def cmd_train(args: argparse.Namespace) -> int:
    from c100 import distributed, lock, train

    flags = {name: getattr(args, name) for name in config.FIELDS}
    if args.resume:
        with lock.hold_run(Path(args.resume)):  # one writer, from before last.pt is read
            cfg, state = train.resume_point(args.resume, flags)
            train.setup_process(cfg)
            train.resume_from(args.resume, cfg, state)
    else:
        cfg = config.resolve(args.preset, args.config, flags)
        out = args.out or os.path.join("runs", args.preset or "custom")
        train.setup_process(cfg)
        train.train(cfg, out)
        if distributed.is_main():
            print(f"done: {out}  (evaluate on the test set with: c100 evaluate {out})")
    distributed.cleanup()  # under torchrun: leave the process group before exiting
    return 0


# -- one vocabulary: each flag means one thing in every subcommand that takes it -----------------------
DATA_DIR_HELP = ("folder holding cifar-100-python/ (default: the one the config, run or search space names, else "
                 "$CIFAR100_DATA, else ./data)")
IMAGES_HELP = ("instead of a split: your own labelled images, DIR/CLASS_NAME/*.jpg (one sub-folder per CIFAR-100 "
               "class name; any format Pillow reads, resized as `predict` does)")
SOURCE_HELP = "'default' (the ResNet18 shipped in the package), a run folder, or a .pt, .safetensors or .onnx file"
CHECKPOINT_HELP = ("which checkpoint of a run folder: last (the final model) or best (the epoch with the best "
                   "validation accuracy) [last]")
DEVICE_HELP = "auto (a CUDA GPU if there is one) | cpu | cuda | mps [auto]"


def add_model_args(sp: argparse.ArgumentParser, positional: bool = True, default: str | None = None,
                   backend: str | None = None) -> None:
    """MODEL (positional or --weights), --checkpoint last|best, --device, and --backend where it applies."""
    if positional:
        sp.add_argument("source", nargs="?", metavar="MODEL", help=SOURCE_HELP)
    sp.add_argument("--weights", "-w", metavar="MODEL", help=SOURCE_HELP + (f" [{default}]" if default else ""))
    add_checkpoint_args(sp)
    if backend:
        sp.add_argument("--backend", default=backend, metavar="NAME",
                        help="torch (fp32, the reference) | torch-bf16 | onnx | int8 | openvino | openvino-int8 | auto "
                             "(the fastest within 0.5 "
                             f"points of torch fp32, as `c100 quantize` measured it here) [{backend}]")
    sp.set_defaults(default_source=default)


def add_checkpoint_args(sp: argparse.ArgumentParser) -> None:
    """--checkpoint last|best and --device, both checked by argparse as `c100 train` checks its --device."""
    sp.add_argument("--checkpoint", "-c", choices=("last", "best"), default="last", metavar="last|best",
                    help=CHECKPOINT_HELP)
    add_device_arg(sp, "auto", DEVICE_HELP)


def add_device_arg(sp: argparse.ArgumentParser, default: str | None, help: str) -> None:
    devices = config.FIELDS["device"].metadata["choices"]  # the one list, on TrainConfig's field
    sp.add_argument("--device", default=default, choices=devices, metavar="DEVICE", help=help)


def add_split_args(sp: argparse.ArgumentParser) -> None:
    """Which images a model is measured on: a split of CIFAR-100 (in --data-dir) or a labelled folder."""
    sp.add_argument("--split", choices=["test", "val"], default="test")
    sp.add_argument("--images", metavar="DIR", help=IMAGES_HELP)
    sp.add_argument("--data-dir", metavar="DIR", help=DATA_DIR_HELP)


def model_choice(args: argparse.Namespace) -> tuple[str, str]:
    """(source, checkpoint) from the flags of add_model_args."""
    source, weights = getattr(args, "source", None), args.weights
    if source and weights and source != weights:
        raise UserError(f"two models given ({source} and --weights {weights}); pass one")
    source = source or weights or args.default_source
    if not source:
        raise UserError(f"which model? pass {SOURCE_HELP}")
    return source, args.checkpoint


def out_folder(source: str) -> Path:
    """Where a subcommand writes by default: into the run folder, else beside the model file's run, else here."""
    p = Path(source)
    if p.is_dir():
        return p
    return p.parent if p.suffix == ".pt" else Path(".")


def writing_into(path: Path | str):
    """The lock of the run folder that `path` is, or lies directly in, while a command writes there: what it
    writes would describe a model still being trained, beside it; or nothing, outside a run folder."""
    import contextlib

    from c100 import lock

    path = Path(path)
    run = next((p for p in (path, path.parent) if (p / "config.yaml").is_file()), None)
    if run is None:
        return contextlib.nullcontext()
    return lock.hold_folder(run, f"run {run} is still being written by another process (training?); wait for it "
                                 f"to end, or write elsewhere with --out where the command has it")


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from c100.evaluate import evaluate, format_table

    source, checkpoint = model_choice(args)
    with writing_into(out_folder(source)):  # eval-SPLIT-CHECKPOINT.json and the logits, beside a run's checkpoint
        r = evaluate(source, args.split, checkpoint, args.report_tta, args.data_dir, args.device, args.backend,
                     images=args.images)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print(format_table(r, worst=100 if args.per_class else 5))
        if r.get("recorded"):
            print(f"  recorded at export: top-1 {r['recorded']['top1']:.2%} on {r['recorded']['n']} images")
    warn_skipped(r)
    return 0


def warn_skipped(result: dict) -> None:
    """The files of a labelled folder that could not be read: one line each on stderr, then their count."""
    for s in result.get("skipped", []):
        print(f"c100: warning: {s['file']}: {s['error']}", file=sys.stderr)
    if result.get("skipped"):
        print(f"c100: warning: {len(result['skipped'])} file(s) skipped; measured on the {result['n']} others",
              file=sys.stderr)


def cmd_plot(args: argparse.Namespace) -> int:
    from c100.plots import plot_curves

    with writing_into(args.out or Path(args.run) / "curves"):
        paths = plot_curves(args.run, args.out)
    for path in paths:
        print(path)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from c100.compare import compare_runs

    table, png = compare_runs(args.runs, args.out, args.md)
    print(table)
    print(f"\nvalidation curves: {png}" + (f"\ntable: {args.md}" if args.md else ""))
    return 0


def load_model(args: argparse.Namespace):
    from c100.inference import load

    source, checkpoint = model_choice(args)
    return load(source, checkpoint, args.device, backend=getattr(args, "backend", "torch"))


def cmd_predict(args: argparse.Namespace) -> int:
    import json

    from c100.predict import expand_inputs, format_results, predict_files

    files = expand_inputs(args.inputs, args.recursive)
    results = predict_files(load_model(args), files, args.top_k, args.chunk_size)
    if args.json:
        print(json.dumps([{"file": r.file, "top": r.top, "error": r.error} for r in results], indent=2))
    else:
        print(format_results(results))
    failed = [r for r in results if r.error]
    for r in failed:
        print(f"c100: error: {r.file}: {r.error}", file=sys.stderr)
    return 1 if failed else 0


def cmd_explain(args: argparse.Namespace) -> int:
    from c100.explain import explain_files
    from c100.predict import expand_inputs

    files = expand_inputs(args.inputs, args.recursive)
    results = explain_files(load_model(args), files, Path(args.out), args.top_k, args.layer)
    for r in results:
        if r.error:
            print(f"c100: error: {r.file}: {r.error}", file=sys.stderr)
        else:
            print(f"{r.picture}  " + ", ".join(f"{t['label']} {t['prob']:.0%}" for t in r.top))
    return 1 if any(r.error for r in results) else 0


def cmd_mosaic(args: argparse.Namespace) -> int:
    from c100.evaluate import load_predictions
    from c100.mosaic import draw_mosaic, parse_classes, save_png

    source, checkpoint = model_choice(args)
    out = Path(args.out) if args.out else out_folder(source) / f"mosaic-{picture_name(args)}.png"
    with writing_into(out):
        p = load_predictions(source, args.split, checkpoint, args.data_dir, args.device, args.images)
        warn_skipped(p.result)
        img = draw_mosaic(p, parse_classes(args.classes, p.meta.fine_names), args.per_row, args.scale)
        save_png(img, out)
    print(f"{out}  ({img.width}x{img.height} px, {out.stat().st_size / 1e3:.0f} kB)")
    return 0


def picture_name(args: argparse.Namespace) -> str:
    """What a picture's default file name says it shows: the split, or the labelled folder's name."""
    return Path(args.images).resolve().name if args.images else args.split


def cmd_analyze(args: argparse.Namespace) -> int:
    from c100.analysis import analyze, pairs_markdown
    from c100.evaluate import load_predictions

    source, checkpoint = model_choice(args)
    out = Path(args.out) if args.out else out_folder(source) / f"analysis-{picture_name(args)}"
    with writing_into(out):
        p = load_predictions(source, args.split, checkpoint, args.data_dir, args.device, args.images)
        warn_skipped(p.result)
        s = analyze(p, out)
    print(f"{args.images or args.split}: top-1 {s['top1']:.2%}, expected calibration error {s['ece']:.2%}")
    print(pairs_markdown(s["confused_pairs"][:10]))
    print(f"pictures in {out}/: " + ", ".join(s["files"].values()))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from c100.report import build_report

    with writing_into(args.run):
        paths = build_report(args.run, args.split, args.checkpoint, args.data_dir, args.device, args.images)
    for path in paths:
        print(path)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from c100.export import export

    source, checkpoint = model_choice(args)
    with writing_into(args.out or out_folder(source)):
        path, side = export(source, args.format, checkpoint, args.out, args.half)
    print(f"{path}  ({path.stat().st_size / 1e6:.1f} MB)\n{side}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from c100.data import default_data_dir
    from c100.serve import gallery, serve

    model = load_model(args)
    items = gallery(args.data_dir or default_data_dir())
    serve(model, args.host, args.port, int(args.max_upload_mb * (1 << 20)), items)
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from c100.quantize import quantize

    source, checkpoint = model_choice(args)
    with writing_into(out_folder(source)):  # measuring the backends writes the run's eval-test-*.json
        quantize(source, args.data_dir, checkpoint, args.calibration_images)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from c100.models import count_parameters, create_model, list_models

    for name in list_models():
        print(f"{name:<16} {count_parameters(create_model(name)) / 1e6:6.2f}M parameters")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from c100.config import keys
    from c100.tune import tune

    where = {key: getattr(args, key, None) for key in keys("run")}  # those tune has flags for
    try:
        tune(args.space, args.trials, args.study_dir, args.pruner, args.sampler_seed, where)
    except KeyboardInterrupt:
        print("c100: interrupted; run the same command again to continue the search", file=sys.stderr)
        return 130
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from c100.config import list_presets, load_preset

    for name in list_presets():
        p = load_preset(name)
        length = f"{p['time_budget']:g} s budget" if p.get("time_budget") else f"{p.get('epochs')} epochs"
        print(f"{name:<14} {p.get('model', 'resnet18')}, {length}, {p.get('optimizer')} "
              f"lr {p.get('lr')}, batch {p.get('batch_size')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="c100", description="Train, evaluate and use CIFAR-100 classifiers.")
    p.add_argument("--version", action="version", version=f"c100 {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a model (a preset, a YAML config and flags)")
    t.add_argument("--preset", default="default", help=f"one of: {', '.join(config.list_presets())} [default]")
    t.add_argument("--config", help="YAML file of config keys, applied over the preset")
    t.add_argument("--out", metavar="DIR", help="folder: the run folder to create (default runs/PRESET); must not "
                                                "exist yet")
    t.add_argument("--resume", metavar="RUN",
                   help="continue the killed (or diverged) run in folder RUN from its last checkpoint; only "
                        "where-to-run flags may change, and --lr (a lower peak lr for a run whose loss went NaN; "
                        "the run records the change)")
    config.add_flags(t)
    one_help(t, "data_dir", DATA_DIR_HELP, "DIR")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("evaluate", help="accuracy of a trained model on the test (or validation) set")
    add_model_args(e, backend="torch")
    add_split_args(e)
    e.add_argument("--report-tta", action="store_true",
                   help="also report the accuracy with flip test-time augmentation (each image's and its mirror's "
                        "probabilities averaged), beside the model's own; a model trained with --tta has it already")
    e.add_argument("--per-class", action="store_true", help="print every class's accuracy")
    e.add_argument("--json", action="store_true", help="print the whole result as JSON instead of a table")
    e.set_defaults(fn=cmd_evaluate)

    pl = sub.add_parser("plot", help="draw a run's accuracy, loss and learning-rate curves (PNG + SVG)")
    pl.add_argument("run", help="run folder")
    pl.add_argument("--out", metavar="STEM", help="path without extension: writes STEM.png and STEM.svg "
                                                  "(default RUN/curves)")
    pl.set_defaults(fn=cmd_plot)

    cp = sub.add_parser("compare", help="several runs: one Markdown table and their validation curves in one PNG")
    cp.add_argument("runs", nargs="+", metavar="RUN", help="run folders")
    cp.add_argument("--out", default="compare.png", metavar="FILE",
                    help="file: a PNG of the overlaid curves [compare.png]")
    cp.add_argument("--md", metavar="FILE", help="file: also save the table as Markdown there")
    cp.set_defaults(fn=cmd_compare)

    pr = sub.add_parser("predict", help="top-k labels for image files or folders of images")
    pr.add_argument("inputs", nargs="+", metavar="IMAGE|DIR", help="image files (any format Pillow reads) or folders")
    add_model_args(pr, positional=False, default="default", backend="auto")
    pr.add_argument("--top-k", type=int, default=5)
    pr.add_argument("--json", action="store_true", help="print JSON instead of a table")
    pr.add_argument("--chunk-size", type=int, default=256, metavar="N",
                    help="image files decoded and held in memory at a time (the model then runs them in its own "
                         "evaluation batches) [256]")
    pr.add_argument("--recursive", "-r", action="store_true", help="descend into sub-folders")
    pr.set_defaults(fn=cmd_predict)

    xp = sub.add_parser("explain", help="why the model answered: Grad-CAM heat maps of its top-k classes, one PNG "
                                        "per image")
    xp.add_argument("inputs", nargs="+", metavar="IMAGE|DIR", help="image files (any format Pillow reads) or folders")
    add_model_args(xp, positional=False, default="default", backend="torch")
    xp.add_argument("--top-k", type=int, default=3, help="classes to explain per image, best first [3]")
    xp.add_argument("--out", default="explain", metavar="DIR",
                    help="folder: one PNG per image, NAME-explain.png [explain]")
    xp.add_argument("--layer", help="the network layer whose feature maps are weighed, e.g. layer3 (default: the "
                                    "last with a spatial map, layer4 in a ResNet)")
    xp.add_argument("--recursive", "-r", action="store_true", help="descend into sub-folders")
    xp.set_defaults(fn=cmd_explain)

    mo = sub.add_parser("mosaic", help="one PNG of the images grouped by predicted class (green right, red wrong)")
    add_model_args(mo)
    add_split_args(mo)
    mo.add_argument("--per-row", type=int, default=24, help="images per class row (a seeded sample)")
    mo.add_argument("--scale", type=int, default=2, help="pixels per image pixel")
    mo.add_argument("--classes", help="subset: names or index ranges, e.g. 'apple,bus' or '0-19'")
    mo.add_argument("--out", metavar="FILE", help="file: the PNG to write (default mosaic-SPLIT.png in the run "
                                                  "folder, beside a .pt file, else here)")
    mo.set_defaults(fn=cmd_mosaic)

    an = sub.add_parser("analyze", help="confusion, confused pairs, per-class accuracy, calibration, mistakes")
    add_model_args(an)
    add_split_args(an)
    an.add_argument("--out", metavar="DIR", help="folder: the pictures and tables (default analysis-SPLIT/ in the run "
                                                 "folder, beside a .pt file, else here)")
    an.set_defaults(fn=cmd_analyze)

    rp = sub.add_parser("report", help="a Markdown file and a self-contained HTML page for a run, in RUN/report/")
    rp.add_argument("run", metavar="RUN", help="run folder (written by `c100 train`; the report goes into RUN/report/)")
    add_checkpoint_args(rp)
    add_split_args(rp)
    rp.set_defaults(fn=cmd_report)

    ex = sub.add_parser("export", help="weights as safetensors or the network as ONNX, with a JSON sidecar")
    add_model_args(ex)
    ex.add_argument("--format", choices=["safetensors", "onnx"], default="safetensors")
    ex.add_argument("--half", action="store_true", help="safetensors in fp16 (half the size)")
    ex.add_argument("--out", metavar="FILE", help="file: the export to write (default: RUN/ARCH-CHECKPOINT.FORMAT "
                                                  "for a run, beside an exported file, ./ARCH-default.FORMAT for the "
                                                  "shipped weights)")
    ex.set_defaults(fn=cmd_export)

    qu = sub.add_parser("quantize", help="int8 for the CPU (ONNX Runtime's quantizer; run by ONNX Runtime or "
                                         "OpenVINO), then every backend measured here; sets what --backend auto picks",
                        description="Calibrates on training images only (never the validation split or the test "
                                    "set), then measures every backend on the validation and test splits.")
    add_model_args(qu)
    qu.add_argument("--data-dir", metavar="DIR", help=DATA_DIR_HELP)
    qu.add_argument("--calibration-images", type=int, default=1000, help="training images to calibrate on [1000]")
    qu.set_defaults(fn=cmd_quantize)

    sv = sub.add_parser("serve", help="a web page to classify uploaded images",
                        description="The page also shows a gallery of test images from --data-dir, if the data set "
                                    "is there.")
    add_model_args(sv, positional=False, default="default", backend="auto")
    sv.add_argument("--host", default="127.0.0.1", help="interface to bind (127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted upload")
    sv.add_argument("--data-dir", metavar="DIR", help=DATA_DIR_HELP)
    sv.set_defaults(fn=cmd_serve)

    tu = sub.add_parser("tune", help="hyper-parameter search with Optuna, scored on the validation split (resumable)")
    tu.add_argument("--space", default="default", help="search-space YAML file, or a packaged one [default]")
    tu.add_argument("--trials", type=int, default=20,
                    help="finished (completed + pruned) trials to reach; earlier runs of the study count [20]")
    tu.add_argument("--study-dir", metavar="DIR",
                    help="folder: study.db, trial-NNNN/ runs and results (default runs/tune-SPACE); the same folder "
                         "again resumes the search")
    tu.add_argument("--pruner", choices=["median", "halving", "none"], default="median",
                    help="stop poor trials early: median of earlier trials, successive halving, or never [median]")
    tu.add_argument("--sampler-seed", type=int, default=0, metavar="N",
                    help="seeds Optuna's sampler: the same command draws the same values (each trial's training "
                         "--seed, which fixes the validation split, is the search space's) [0]")
    tu.add_argument("--data-dir", metavar="DIR", help=DATA_DIR_HELP)
    add_device_arg(tu, None, "auto | cpu | cuda | mps (default: the search space's)")
    tu.add_argument("--threads", help="CPU threads for torch (default: the space's)")
    tu.set_defaults(fn=cmd_tune)

    sub.add_parser("models", help="list the registered models").set_defaults(fn=cmd_models)
    sub.add_parser("presets", help="list the shipped presets").set_defaults(fn=cmd_presets)
    return p


def one_help(parser: argparse.ArgumentParser, dest: str, text: str, metavar: str) -> None:
    """The help of the flag storing to `dest`, made the same as every other subcommand's (the config field's
    own help describes the key, not the flag's default)."""
    for action in parser._actions:
        if action.dest == dest:
            action.help, action.metavar = text, metavar


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except UserError as e:
        from c100 import distributed

        if distributed.reports_errors():  # under torchrun: one line per machine, not one per process
            where = "" if distributed.is_main() else f" (rank {distributed.rank()})"
            print(f"c100: error{where}: {e}", file=sys.stderr)
        else:  # torchrun kills the others when one process exits: let the reporting one print first
            import time

            time.sleep(2.0)
        return 2
    except KeyboardInterrupt:
        print("c100: interrupted; a training run continues with `c100 train --resume RUN`", file=sys.stderr)
        return 130
