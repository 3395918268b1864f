"""`c100 compare`: exact table values from hand-written run folders, the overlay PNG, the one-line errors;
and the seed-* presets (the homework's experiment log) resolve to the intended recipes."""

import csv
import json
import struct

import pytest
import yaml
from PIL import Image

from c100.cli import main
from c100.compare import DPI, FIGSIZE, compare_runs
from c100.config import list_presets, load_preset, resolve

FIELDS = ["epoch", "lr", "res", "train_loss", "train_acc", "val_loss", "val_acc", "epoch_s", "images_per_s",
          "clock_s", "eval_s"]
OLD_FIELDS = ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "epoch_s", "images_per_s"]


def write_run(folder, rows, config=None, fields=FIELDS, evals=None):
    """A run folder as `c100 train` (and `c100 evaluate`) leave it, minus the checkpoints."""
    folder.mkdir(parents=True)
    with open(folder / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fields, extrasaction="ignore")
        w.writeheader()
        for i, row in enumerate(rows):
            w.writerow({"epoch": i + 1, "lr": 0.1, "res": 32, "train_loss": 1.0, "train_acc": 0.5, "images_per_s": 100,
                        "clock_s": 0, "eval_s": 0, **row})
    if config is not None:
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
    for which, result in (evals or {}).items():
        (folder / f"eval-test-{which}.json").write_text(json.dumps(result))
    return folder


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", data[16:24])


V1 = {"model": "resnet18-seed", "optimizer": "adam", "lr": 0.1, "schedule": "constant", "batch_size": 64,
      "translate": 0, "flip": False, "cutout": 0, "l2": 0.0, "weight_decay": 0.0, "epochs": 4}
V5 = {**V1, "lr": 0.001, "schedule": "inverse-time", "lr_decay": 0.004, "l2": 1e-4, "translate": 6, "flip": True,
      "epochs": 5}


@pytest.fixture
def two_runs(tmp_path):
    # v1: validated every epoch but one; its validation loss rises while the accuracy peaks at epoch 3.
    a = write_run(tmp_path / "runs" / "v1", [
        {"val_loss": 4.0, "val_acc": 0.10, "epoch_s": 10},
        {"val_loss": "", "val_acc": "", "epoch_s": 20},
        {"val_loss": 6.5, "val_acc": 0.30, "epoch_s": 30.5},
        {"val_loss": 9.8, "val_acc": 0.25, "epoch_s": 1.5},
    ], V1, evals={"last": {"top1": 0.6221, "top5": 0.85, "superclass": 0.7, "n": 10000}})
    # v5: an older metrics.csv (no res/clock_s/eval_s), killed after 3 of 5 epochs, validated every 2nd.
    b = write_run(tmp_path / "runs" / "v5", [
        {"val_loss": "", "val_acc": "", "epoch_s": 3600},
        {"val_loss": 2.0, "val_acc": 0.5, "epoch_s": 3600},
        {"val_loss": "", "val_acc": "", "epoch_s": 60},
    ], V5, fields=OLD_FIELDS, evals={"best": {"top1": 0.5, "n": 10000}})
    return a, b


def test_table_values_exact(two_runs, tmp_path):
    table, png = compare_runs([str(p) for p in two_runs], tmp_path / "c.png", tmp_path / "c.md")
    head, rule, v1, v5 = table.splitlines()
    assert head == "| run | model | recipe | epochs | best val acc | final val acc | test top-1 | wall time |"
    assert rule == "|---|---|---|---|---|---|---|---|"
    assert v1 == ("| v1 | resnet18-seed | adam lr 0.1, constant, batch 64, no aug | 4 | 30.00% (epoch 3) | 25.00% | "
                  "62.21% | 1m 02s |")
    assert v5 == ("| v5 | resnet18-seed | adam lr 0.001, inverse-time 0.004, batch 64, L2 0.0001, shift 6 px + flip | "
                  "3/5 | 50.00% (epoch 2) | 50.00% (epoch 2) | 50.00% (best ckpt) | 2h 01m |")
    assert (tmp_path / "c.md").read_text() == table + "\n"
    assert png == tmp_path / "c.png"


def test_png_size_and_cli(two_runs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["compare", *map(str, two_runs), "--md", "t.md"]) == 0  # default --out: compare.png here
    out = capsys.readouterr().out
    assert (tmp_path / "t.md").read_text().strip() in out and "validation curves: compare.png" in out
    assert png_size(tmp_path / "compare.png") == (FIGSIZE[0] * DPI, round(FIGSIZE[1] * DPI))
    Image.open(tmp_path / "compare.png").verify()


def test_tiny_run_and_same_folder_names(tiny_run, tmp_path):
    other = write_run(tmp_path / "elsewhere" / tiny_run.name, [{"val_loss": 4.6, "val_acc": 0.01, "epoch_s": 5}],
                      config={"model": "vgg16", "epochs": 1})  # a partial config: the rest shows as "?"
    table, _ = compare_runs([str(tiny_run), str(other)], tmp_path / "c.png")
    rows = [r.split(" | ") for r in table.splitlines()[2:]]
    assert rows[0][0] == f"| {tiny_run}" and rows[1][0] == f"| {other}"  # both are "tiny": the paths tell them apart
    assert rows[0][1:4] == ["tiny-net", "sgd lr 0.1, onecycle, batch 64, wd 0.0005, label smoothing 0.1, "
                            "shift 4 px + flip + cutout 8", "2"]
    assert rows[0][4].endswith("(epoch 1)") or rows[0][4].endswith("(epoch 2)")
    assert rows[1][1:4] == ["vgg16", "? lr ?, ?, batch ?, no aug", "1"] and rows[1][7] == "5s |"


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "no such folder; pass run folders written by `c100 train`"),
    (lambda p: p.write_text("x"), "is a file, not a run folder; pass the folder that holds its metrics.csv"),
    (lambda p: p.mkdir(), "is not a run folder (no metrics.csv); pass folders written by `c100 train`"),
    (lambda p: (p.mkdir(), (p / "config.yaml").write_text("epochs: 3\n")),
     "has no metrics.csv yet (no epoch finished); compare it after its first epoch, or leave it out"),
    (lambda p: (p.mkdir(), (p / "metrics.csv").write_text(",".join(FIELDS) + "\n")), "has no epochs yet"),
    (lambda p: (write_run(p, [{"epoch_s": 1}]), (p / "eval-test-last.json").write_text("{}")),
     "is not an evaluation result; rerun `c100 evaluate"),
])
def test_errors_are_one_line(setup, message, two_runs, tmp_path, capsys):
    bad = tmp_path / "bad"
    setup(bad)
    assert main(["compare", str(two_runs[0]), str(bad), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith(f"c100: error: {bad}") and err.count("\n") == 1
    assert not (tmp_path / "x.png").exists()  # every run is read before anything is written


SEED = {  # preset: (model, optimizer, lr, schedule, epochs, translate, flip, l2)
    "seed-r18-v1": ("resnet18-seed", "adam", 0.1, "constant", 50, 0, False, 0.0),
    "seed-vgg16-v1": ("vgg16", "adam", 0.1, "constant", 150, 0, False, 0.0),
    "seed-r18-v2": ("resnet18-seed", "adam", 0.1, "constant", 200, 10, True, 0.0),
    "seed-r18-v3": ("resnet18-seed", "adam", 0.001, "constant", 100, 6, True, 0.0),
    "seed-r18-v4": ("resnet18-seed", "adam", 0.1, "constant", 50, 6, True, 0.0),
    "seed-r34-v1": ("resnet34", "adam", 0.1, "constant", 100, 6, True, 0.0),
    "seed-r18-v5": ("resnet18-seed", "adam", 0.001, "inverse-time", 150, 6, True, 1e-4),
}


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_resolves(name):
    resolve(name, None, {})


@pytest.mark.parametrize("name", SEED)
def test_seed_presets_follow_the_log(name):
    cfg = resolve(name, None, {})
    assert (cfg.model, cfg.optimizer, cfg.lr, cfg.schedule, cfg.epochs, cfg.translate, cfg.flip, cfg.l2) == SEED[name]
    # What the log leaves unsaid takes Keras' defaults and the final recipe's batch, as in `seed`.
    assert (cfg.adam_eps, cfg.batch_size, cfg.pad_mode, cfg.normalize, cfg.weight_decay, cfg.label_smoothing,
            cfg.cutout, cfg.val_size) == (1e-7, 64, "edge", "none", 0.0, 0.0, 0, 5000)
    assert list(load_preset(name)) == list(load_preset("seed"))  # same keys, same order: `diff` shows the change


def test_v5_is_the_seed_preset():
    assert load_preset("seed-r18-v5") == load_preset("seed")
