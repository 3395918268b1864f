"""The benchmark scripts' error handling, and the index of their results (benchmarks/results/index.yaml)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def script(name: str):
    """benchmarks/NAME.py imported as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(Path(name).name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_record_bad_set_is_one_line(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "record.py"), "--set", "res milestones=0.4",
                        "--no-test", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [
        "record.py: error: flag: unknown config key 'res milestones'; see `c100 train --help` for the keys"]
    assert not (tmp_path / "runs").exists() and not list((tmp_path / "out").glob("*.json"))


@pytest.mark.slow
def test_record_appends_seeds_of_the_same_record_only(tmp_path):
    """A record longer than a session grows seed by seed (--append); seeds of another record never mix in."""
    import json

    from conftest import write_cifar

    write_cifar(tmp_path / "data", 400, 100)
    sets = ["--set", "time_budget=0.5", "batch_size=16", "val_size=100", "check_size=false", "precision=fp32",
            "eval_every=0"]

    def record(*extra):
        return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "record.py"), "--preset", "cpu-fast",
                               "--data-dir", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"),
                               "--out", str(tmp_path / "out"), *sets, *extra],
                              capture_output=True, text=True, timeout=300)

    assert record("--seeds", "0").returncode == 0
    r = record("--seeds", "1", "--append")
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads((tmp_path / "out" / "cpu-fast.json").read_text())
    assert rec["seeds"] == [0, 1] and len(rec["test_top1"]) == 2 and rec["seeds_planned"] == [0, 1]
    assert all(p["git"] == rec["git"] for p in rec["per_seed"])
    # each seed keeps the invocation that made it; `reproduce` remakes the whole record in one command
    assert "--seeds 0" in rec["per_seed"][0]["command"] and "--append" not in rec["per_seed"][0]["command"]
    assert rec["per_seed"][1]["command"] == rec["command"] and "--seeds 1 --append" in rec["command"]
    assert rec["reproduce"].endswith(" --seeds 0 1") and "--append" not in rec["reproduce"]
    assert rec["reproduce"].replace(" --seeds 0 1", "") == rec["command"].replace(" --seeds 1 --append", "")
    again = record("--seeds", "1", "--append")
    assert again.returncode == 1 and again.stderr.strip().endswith("seed 1 is already in " +
                                                                   str(tmp_path / "out" / "cpu-fast.json"))
    sets.append("lr=0.1")
    other = record("--seeds", "2", "--append")
    assert other.returncode == 1 and len(other.stderr.strip().splitlines()) == 1
    assert "was recorded with overrides" in other.stderr and "seeds of different records do not mix" in other.stderr
    assert json.loads((tmp_path / "out" / "cpu-fast.json").read_text())["seeds"] == [0, 1]  # untouched


def test_results_index_matches_the_files():
    """Every file under benchmarks/results/ is in results/index.yaml (or beside its JSON), and back."""
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "table.py"), "--check"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


def test_results_index_names_what_is_missing(tmp_path, monkeypatch):
    table = script("table")
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "a.json").write_text("{}")
    (tmp_path / "records" / "a.log").write_text("")  # travels with a.json: needs no entry
    (tmp_path / "records" / "b.json").write_text("{}")
    (tmp_path / "index.yaml").write_text(
        "results:\n"
        "  - {file: records/a.json, status: record, title: a}\n"
        "  - {file: records/gone.json, status: record, title: gone}\n"
        "  - {file: records/b.json, status: archive, title: b}\n")
    monkeypatch.setattr(table, "RESULTS", tmp_path)
    monkeypatch.setattr(table, "INDEX", tmp_path / "index.yaml")
    monkeypatch.setattr(table, "ROOT", tmp_path.parent)
    with pytest.raises(SystemExit) as e:
        table.load_index()
    lines = str(e.value).splitlines()[1:]
    assert lines == ["  records/gone.json: named in the index but missing on disk",
                     "  records/b.json: status archive but not under archive/"]


@pytest.mark.slow
def test_record_resume_finishes_the_run_a_killed_record_left(tmp_path):
    """--resume continues a seed's run folder from its last.pt (a GPU call's limit cut the record), to the
    same epochs a straight run has; the seed is marked resumed. Without it the seed starts again."""
    import json

    from c100.config import resolve
    from c100.train import train
    from conftest import write_cifar

    write_cifar(tmp_path / "data", 400, 100)
    sets = ["batch_size=16", "val_size=100", "check_size=false", "precision=fp32", "time_budget=0", "epochs=2",
            "eval_every=1"]
    cfg = resolve("cpu-fast", None, {"seed": 0, "data_dir": str(tmp_path / "data"),
                                     **dict(kv.split("=") for kv in sets)})

    class Killed(Exception):
        pass

    def kill(trainer, row):
        raise Killed

    with pytest.raises(Killed):  # killed after its first epoch was saved
        train(cfg, tmp_path / "runs" / "rec-s0", log=lambda *_: None, on_epoch=kill)

    def record(*extra):
        return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "record.py"), "--preset", "cpu-fast",
                               "--name", "rec", "--seeds", "0", "--data-dir", str(tmp_path / "data"), "--runs",
                               str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--set", *sets, *extra],
                              capture_output=True, text=True, timeout=300)

    r = record("--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resuming {tmp_path / 'runs' / 'rec-s0'} at epoch 1" in r.stdout
    seed = json.loads((tmp_path / "out" / "rec.json").read_text())["per_seed"][0]
    assert seed["resumed"] is True and seed["epochs"] == 2 and seed["test_top1"] is not None
    r = record()  # no --resume: the finished folder is replaced by a new run
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming" not in r.stdout
    assert json.loads((tmp_path / "out" / "rec.json").read_text())["per_seed"][0]["resumed"] is False


@pytest.mark.slow
def test_gpu_script_dry_run_on_the_cpu(tmp_path):
    """benchmarks/gpu.sh, every part, on synthetic data with seconds of training: what comes back from
    the GPU machine (at most 8 files of at most 16 MiB for probe, fast and best) and the weights joined
    from their parts, sha256-checked and loadable."""
    import hashlib
    import json
    import os
    import tarfile

    from conftest import write_cifar

    write_cifar(tmp_path / "data", 600, 200)
    out = tmp_path / "out"
    env = dict(os.environ, CIFAR100_DATA=str(tmp_path / "data"), PARTS="probe fast best seed", PROBE_BATCHES="16",
               PROBE_ARGS="--steps 2 --rounds 1 --no-check-size", PROBE_COMPILE_BATCH="", FAST_SEEDS="0",
               BEST_SEEDS="0", RUNS=str(tmp_path / "runs"), OUT=str(out), PYTHON=sys.executable, DEADLINE_S="100000",
               EXTRA_SET="time_budget=2 compile=false precision=fp32 val_size=100 check_size=false batch_size=16")
    r = subprocess.run(["bash", "benchmarks/gpu.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    names = sorted(p.name for p in out.iterdir())
    weights = ["gpu-best-s0.safetensors.part-00", "gpu-best-s0.safetensors.part-01"]  # 22 MB in fp16: two parts
    assert names == sorted(["gpu.log", "probe.json", "gpu-fast.json", "gpu-fast.tgz", "gpu-best.json", "gpu-best.tgz",
                            *weights, "seed.json", "seed.tgz"])
    assert len([n for n in names if not n.startswith("seed.")]) == 8  # what the device returns at most
    assert all((out / n).stat().st_size <= 16 << 20 for n in names)
    probe = json.loads((out / "probe.json").read_text())
    assert probe[0]["benchmark"] == "throughput" and probe[0]["trainer_images_per_s"] > 0
    for name in ("gpu-fast", "gpu-best", "seed"):
        rec = json.loads((out / f"{name}.json").read_text())
        assert rec["seeds"] == [0] and 0 <= rec["test_top1_mean"] <= 1 and rec["time_budget"] == 2
        with tarfile.open(out / f"{name}.tgz") as tar:
            assert f"./{name}-s0-metrics.csv" in tar.getnames()
    with tarfile.open(out / "gpu-best.tgz") as tar:
        tar.extractall(tmp_path / "best", filter="data")
    joined = tmp_path / "best" / "gpu-best-s0.safetensors"
    joined.write_bytes(b"".join((out / w).read_bytes() for w in weights))
    want = (tmp_path / "best" / "gpu-best-s0.safetensors.sha256").read_text().split()[0]
    assert hashlib.sha256(joined.read_bytes()).hexdigest() == want

    import c100

    model = c100.load(joined)
    assert model.arch == "resnet18" and len(model.predict(np.zeros((2, 3, 32, 32), np.uint8))) == 2


@pytest.mark.slow
def test_seed_runs_script_dry_run(tmp_path):
    """benchmarks/seed_runs.sh (the homework's presets on a clock each, then `c100 compare`) on synthetic
    data with a 2 s clock: every run's metrics, its log and the comparison come back."""
    import os

    from conftest import write_cifar

    write_cifar(tmp_path / "data", 600, 200)
    out = tmp_path / "out"
    env = dict(os.environ, CIFAR100_DATA=str(tmp_path / "data"), RUNS=str(tmp_path / "runs"), OUT=str(out),
               BUDGET="2", PLOT=str(tmp_path / "compare.png"), C100=f"{sys.executable} -m c100",
               EXTRA="--no-check-size --val-size 100 --precision fp32 --eval-precision fp32")
    r = subprocess.run(["bash", "benchmarks/seed_runs.sh", "seed-r18-v1", "seed-vgg16-v1"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["seed-compare.md", "seed-r18-v1-metrics.csv", "seed-runs.log",
                                                      "seed-vgg16-v1-metrics.csv"]
    log = (out / "seed-runs.log").read_text()
    assert "== seed-vgg16-v1: c100 train --preset seed-vgg16-v1 --time-budget 2" in log
    table = (out / "seed-compare.md").read_text()
    assert "seed-r18-v1" in table and "seed-vgg16-v1" in table and (tmp_path / "compare.png").stat().st_size > 0


@pytest.mark.slow
def test_seed_runs_fixed_epochs_keep_finished_runs_and_resume_killed_ones(tmp_path):
    """The EPOCHS form spans sessions: a rerun keeps finished runs, resumes one killed before its end,
    and starts afresh over a folder another form left."""
    import os

    from c100.config import resolve, save_yaml
    from conftest import write_cifar

    write_cifar(tmp_path / "data", 600, 200)
    out, runs = tmp_path / "out", tmp_path / "runs"
    extra = "--no-check-size --val-size 100 --train-size 100"
    env = dict(os.environ, CIFAR100_DATA=str(tmp_path / "data"), RUNS=str(runs), OUT=str(out), EPOCHS="1",
               PLOT=str(tmp_path / "compare.png"), C100=f"{sys.executable} -m c100", PYTHON=sys.executable,
               EXTRA=extra)

    def script(*presets):
        r = subprocess.run(["bash", "benchmarks/seed_runs.sh", *presets], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    script("seed-r18-v1")
    first = (runs / "seed-r18-v1" / "last.pt").stat().st_mtime_ns
    # a run killed in its first epoch (its config.yaml, no checkpoint yet), and one of the clock form
    flags = {"epochs": 1, "data_dir": str(tmp_path / "data"), "check_size": False, "val_size": 100, "train_size": 100}
    (runs / "seed-vgg16-v1").mkdir()
    save_yaml(resolve("seed-vgg16-v1", None, {**flags, "precision": "fp32", "eval_precision": "fp32",
                                              "eval_every": 1}).to_dict(), runs / "seed-vgg16-v1" / "config.yaml")
    (runs / "seed-r18-v3").mkdir()
    save_yaml(resolve("seed-r18-v3", None, {**flags, "time_budget": 2}).to_dict(), runs / "seed-r18-v3" / "config.yaml")
    script("seed-r18-v1", "seed-vgg16-v1", "seed-r18-v3")
    log = (out / "seed-runs.log").read_text()
    assert log.count("== seed-r18-v1: c100 train --preset seed-r18-v1 --epochs 1 --precision fp32") == 1
    assert "== seed-r18-v1: finished earlier (1 epochs" in log
    assert (runs / "seed-r18-v1" / "last.pt").stat().st_mtime_ns == first
    assert f"== seed-vgg16-v1: c100 train --resume {runs / 'seed-vgg16-v1'} (at epoch 0 of 1)" in log
    assert "== seed-r18-v3: c100 train --preset seed-r18-v3 --epochs 1" in log
    for p in ("seed-r18-v1", "seed-vgg16-v1", "seed-r18-v3"):
        assert len((out / f"{p}-metrics.csv").read_text().splitlines()) == 2  # header and one epoch
    assert "seed-r18-v3" in (out / "seed-compare.md").read_text()


@pytest.mark.slow
def test_ship_weights_applies_the_rule(cifar_dir, tmp_path):
    """benchmarks/ship_weights.py measures the file that would ship against the shipped one and replaces
    it only when the margin is met (here a copy of the same model: gain 0, either side of the margin)."""
    import json

    from c100.export import export
    from c100.train import train
    from conftest import tiny_cfg

    train(tiny_cfg(cifar_dir, model="resnet18", epochs="1", train_size="128"), tmp_path / "run", log=lambda *_: None)
    shipped = tmp_path / "weights" / "resnet18-default.safetensors"
    shipped.parent.mkdir()
    export(tmp_path / "run", "safetensors", out=shipped, half=True)
    card = json.loads(shipped.with_name(shipped.name + ".json").read_text())
    card["marker"] = "the old card"
    shipped.with_name(shipped.name + ".json").write_text(json.dumps(card))
    before = shipped.read_bytes()

    def ship(margin):
        return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ship_weights.py"), str(tmp_path / "run"),
                               "--data-dir", str(cifar_dir), "--shipped", str(shipped), "--margin", margin, "--apply"],
                              capture_output=True, text=True, timeout=300)

    r = ship("0.001")
    assert r.returncode == 1 and "gain +0.00 points: misses the rule" in r.stdout, r.stdout + r.stderr
    assert "the old card" in shipped.with_name(shipped.name + ".json").read_text()
    r = ship("-0.001")
    assert r.returncode == 0 and "meets the rule" in r.stdout and "shipped: " in r.stdout, r.stdout + r.stderr
    card = json.loads(shipped.with_name(shipped.name + ".json").read_text())
    assert "marker" not in card and card["accuracy"]["test"]["n"] == 500  # what the shipped file scored
    assert f"test top-1 {card['accuracy']['test']['top1']:.2%}" in r.stdout
    assert shipped.read_bytes() == before  # the same model, exported the same way: the same bytes
    assert sorted(p.name for p in shipped.parent.iterdir()) == [shipped.name, shipped.name + ".json"]


def test_dead_units_finds_a_dead_last_layer(tiny_run):
    """benchmarks/archive/dead_units.py: a live network has live channels and image-dependent logits; with the
    last convolution's bias pushed far below zero its ReLU is dead on every image and the answer is one class."""
    import torch

    import c100

    dead_units = script("archive/dead_units")
    images = np.random.default_rng(0).integers(0, 256, (20, 3, 32, 32), dtype=np.uint8)
    shares, logits = dead_units.dead_channel_shares(c100.load(tiny_run, backend="torch"), images)
    assert len(shares) == 2 and list(shares.values())[-1][1] < 1 and float(logits.std(0).mean()) > 0
    model = c100.load(tiny_run, backend="torch")
    last_conv = [m for m in model.net.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last_conv.bias.fill_(-1e4)
    shares, logits = dead_units.dead_channel_shares(model, images)
    assert list(shares.values())[-1] == ((16, 8, 8), 1.0) and float(logits.std(0).mean()) == 0


def test_macs_counts_the_known_resnet18_figure():
    """benchmarks/macs.py: ResNet18 with the CIFAR stem does 0.556 GMAC per 32 px image (the figure in
    DESIGN.md); a 24 px input scales it by (24 / 32)^2 in the convolutions."""
    sys.path.insert(0, str(ROOT / "benchmarks"))  # macs.py imports provenance.py beside it, as when it runs
    try:
        macs = script("macs")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from c100.models import create_model

    at32, at24 = macs.forward_macs(create_model("resnet18"), 32), macs.forward_macs(create_model("resnet18"), 24)
    assert at32 == 555_468_800 and at32 / 1e9 == pytest.approx(0.556, abs=1e-3)
    fc = 512 * 100
    assert (at24 - fc) / (at32 - fc) == pytest.approx((24 / 32) ** 2)


def test_timing_alternates_discards_the_warm_up_and_takes_medians():
    """benchmarks/timing.py, the one timing loop of the tools: each round runs every candidate in turn."""
    timing = script("timing")
    calls, lines = [], []

    def candidate(name: str, values: list[float]):
        it = iter(values)
        return lambda: calls.append(name) or next(it)

    kept = timing.alternate({"a": candidate("a", [9, 1, 2, 3]), "b": candidate("b", [9, 2, 4, 3])}, rounds=3,
                            warmup=1, log=lines.append)
    assert calls == ["a", "b"] * 4 and kept == {"a": [1, 2, 3], "b": [2, 4, 3]}
    assert lines[0].startswith("warm-up 1 (discarded): a 9.0 img/s") and lines[1] == "round 1: a 1.0 img/s, b 2.0 img/s"
    assert timing.median(kept["b"]) == 3 and timing.ratio_median(kept["a"], kept["b"]) == 0.5
    assert 0 < timing.rate(lambda: sum(range(1000)), 1000)
    latency = timing.latency_ms(lambda i: sum(range(i)), 20)
    assert 0 <= latency["median_ms"] <= latency["p99_ms"]
