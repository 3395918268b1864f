"""The original homework's Keras ResNet18 as a speed yardstick for the PyTorch port (`resnet18-seed`).

Runs in the benchmark-only environment made by benchmarks/keras/setup.sh (TensorFlow is never a
dependency of c100):

    bash benchmarks/keras/setup.sh
    .venv-keras/bin/python benchmarks/keras/resnet18_keras.py --rounds 3
    .venv-keras/bin/python benchmarks/keras/resnet18_keras.py --measure latency --threads 1

The network is the homework's, layer for layer as src/c100/models/seed.py describes its PyTorch port:
a 'valid' 3x3 stem conv (32 -> 30 px), BN, ReLU, a 2x2 max-pool with stride 1 and 'same' padding,
eight basic blocks with 'same' padding, a bias on every conv, a 1x1 conv + BN shortcut only where the
stride is 2, Keras' BN (momentum 0.99, epsilon 1e-3), global average pooling and a dense softmax
layer; glorot-uniform weights from a fixed seed. Its trainable parameter count is checked against the
port's (computed with the project's .venv when it is there).

Measures, on random uint8 images scaled to float32 [0, 1] (no data set needed), each round timed with
time.perf_counter after one warm-up round that is discarded:
- inference: images/s at batch 100, through `model(x, training=False)` inside a tf.function with a
  fixed input signature (traced once), the result fetched with .numpy();
- latency: one image per call through the same kind of tf.function, median and p99 in ms;
- train: images/s at batch 64 (the homework's batch) with `model.train_on_batch` after
  `model.compile(Adam, sparse categorical cross-entropy)`: Keras' own compiled train step.

Each measure also records the share of all cores' time that this process and other work on the machine
took during its timed rounds (other work slows it down: compare only runs made side by side). Prints
one JSON object on stdout and nothing else; logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BLOCKS = [(64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1)]
PREDICT_PATH = ("tf.function(model(x, training=False)) with a fixed input signature, .numpy() on each result "
                "(model.predict_on_batch and model.predict measured the same within noise)")
TORCH_COUNT = ("from c100.models import create_model, count_parameters; "
               "print(count_parameters(create_model('resnet18-seed')))")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--measure", choices=["inference", "latency", "train", "all"], default="all")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per measure, after one warm-up round")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="TensorFlow intra-op threads (default: all cores)")
    p.add_argument("--inter-op-threads", type=int, default=None, help="inter-op threads (default: --threads)")
    p.add_argument("--inference-images", type=int, default=1000, help="images per inference round (batch 100)")
    p.add_argument("--latency-calls", type=int, default=200, help="single-image calls per latency round")
    p.add_argument("--train-steps", type=int, default=20, help="steps of batch 64 per train round")
    p.add_argument("--xla", action="store_true",
                   help="jit_compile=True (XLA) for the tf.functions and model.compile; Keras' default on a CPU is off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch-python", default=str(ROOT / ".venv" / "bin" / "python"),
                   help="python of the project's venv, to count the PyTorch port's parameters ('' to skip)")
    return p.parse_args()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_model(keras, num_classes: int = 100):
    """The homework's ResNet18 (functional API, channels-last)."""
    L = keras.layers

    def bn():
        return L.BatchNormalization(momentum=0.99, epsilon=1e-3)

    def block(x, filters: int, stride: int):
        out = L.Conv2D(filters, 3, strides=stride, padding="same")(x)
        out = L.ReLU()(bn()(out))
        out = bn()(L.Conv2D(filters, 3, padding="same")(out))
        shortcut = bn()(L.Conv2D(filters, 1, strides=stride, padding="same")(x)) if stride == 2 else x
        return L.ReLU()(L.Add()([out, shortcut]))

    inputs = keras.Input((32, 32, 3))
    x = L.Conv2D(64, 3, padding="valid")(inputs)
    x = L.ReLU()(bn()(x))
    x = L.MaxPooling2D(2, strides=1, padding="same")(x)
    for filters, stride in BLOCKS:
        x = block(x, filters, stride)
    x = L.GlobalAveragePooling2D()(x)
    outputs = L.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="homework_resnet18")


def torch_parameter_count(python: str) -> int | None:
    if not python or not Path(python).exists():
        log(f"no PyTorch venv at {python!r}: the port's parameter count is not checked")
        return None
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([python, "-c", TORCH_COUNT], capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        log(f"counting the PyTorch port's parameters failed:\n{done.stderr}")
        return None
    return int(done.stdout.split()[-1])


def cpu_info() -> dict:
    model, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    wanted = ["avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile"]
    return {"model": model, "cores": os.cpu_count(), "flags": [f for f in wanted if f in flags]}


def loadavg() -> list[float] | None:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method)."""
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def random_images(np, rng, n: int):
    return (rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8).astype(np.float32) / 255.0)


def cpu_ticks() -> tuple[int, int]:
    """(busy clock ticks of the whole machine, of this process): as in benchmarks/load_test.py."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    busy = sum(int(x) for i, x in enumerate(fields[:8]) if i not in (3, 4))  # all but idle and iowait
    stat = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return busy, int(stat[11]) + int(stat[12])  # utime, stime


def rounds_of(fn, rounds: int, name: str) -> tuple[list, dict]:
    """The timed rounds' values, and the shares of all cores' time that this process and other work on
    the machine took during them."""
    fn()  # warm-up: tracing, oneDNN primitive creation, allocator growth
    values = []
    t0, ticks0 = time.perf_counter(), cpu_ticks()
    for r in range(rounds):
        values.append(fn())
        log(f"{name} round {r + 1}/{rounds}: {values[-1]}")
    ticks1 = cpu_ticks()
    machine = (time.perf_counter() - t0) * os.sysconf("SC_CLK_TCK") * os.cpu_count()
    ours = (ticks1[1] - ticks0[1]) / machine
    other = max(0.0, (ticks1[0] - ticks0[0] - (ticks1[1] - ticks0[1])) / machine)
    return values, {"this_process": round(ours, 3), "other_work": round(other, 3)}


def measure_inference(tf, model, np, rng, args) -> dict:
    batch = 100
    n = max(batch, args.inference_images // batch * batch)
    batches = [tf.constant(random_images(np, rng, batch)) for _ in range(n // batch)]
    predict = tf.function(lambda x: model(x, training=False),
                          input_signature=[tf.TensorSpec((batch, 32, 32, 3), tf.float32)], jit_compile=args.xla)

    def one_round() -> float:
        t0 = time.perf_counter()
        for x in batches:
            predict(x).numpy()
        return n / (time.perf_counter() - t0)

    values, share = rounds_of(one_round, args.rounds, "inference images/s")
    return {"batch": batch, "images_per_round": n,
            "path": PREDICT_PATH,
            "images_per_s": [round(v, 1) for v in values], "median_images_per_s": round(statistics.median(values), 1),
            "cpu_share": share}


def measure_latency(tf, model, np, rng, args) -> dict:
    images = [tf.constant(random_images(np, rng, 1)) for _ in range(args.latency_calls)]
    predict = tf.function(lambda x: model(x, training=False),
                          input_signature=[tf.TensorSpec((1, 32, 32, 3), tf.float32)], jit_compile=args.xla)

    def one_round() -> dict:
        times = []
        for x in images:
            t0 = time.perf_counter()
            predict(x).numpy()
            times.append((time.perf_counter() - t0) * 1000)
        return {"median_ms": round(statistics.median(times), 3), "p99_ms": round(percentile(times, 99), 3)}

    values, share = rounds_of(one_round, args.rounds, "latency")
    return {"batch": 1, "calls_per_round": args.latency_calls,
            "path": PREDICT_PATH,
            "rounds": values,
            "median_of_medians_ms": round(statistics.median(v["median_ms"] for v in values), 3),
            "median_of_p99_ms": round(statistics.median(v["p99_ms"] for v in values), 3), "cpu_share": share}


def measure_train(tf, keras, model, np, rng, args) -> dict:
    batch = 64
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.SparseCategoricalCrossentropy(),
                  jit_compile=True if args.xla else "auto")  # "auto" is off on a CPU-only machine
    xs = [tf.constant(random_images(np, rng, batch)) for _ in range(args.train_steps)]
    ys = [tf.constant(rng.integers(0, 100, size=(batch,), dtype=np.int32)) for _ in range(args.train_steps)]

    def one_round() -> float:
        t0 = time.perf_counter()
        for x, y in zip(xs, ys, strict=True):
            loss = model.train_on_batch(x, y)
        float(loss)  # train_on_batch already returns a Python/numpy value: the step has finished
        return batch * args.train_steps / (time.perf_counter() - t0)

    values, share = rounds_of(one_round, args.rounds, "train images/s")
    return {"batch": batch, "steps_per_round": args.train_steps,
            "path": "model.compile(Adam(1e-3), SparseCategoricalCrossentropy()) + model.train_on_batch",
            "jit_compile": bool(getattr(model, "jit_compile", False)),
            "images_per_s": [round(v, 1) for v in values], "median_images_per_s": round(statistics.median(values), 1),
            "cpu_share": share}


def main() -> None:
    args = parse_args()
    # Keep stdout for the JSON alone: anything TensorFlow, Keras or a library prints goes to stderr.
    json_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # hide TF's INFO lines (the oneDNN notice); keep warnings

    load_before = loadavg()
    torch_params = torch_parameter_count(args.torch_python)

    import keras
    import numpy as np
    import tensorflow as tf

    inter = args.inter_op_threads if args.inter_op_threads is not None else args.threads
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    keras.utils.set_random_seed(args.seed)
    model = build_model(keras)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    total = sum(int(np.prod(w.shape)) for w in model.weights)
    log(f"Keras ResNet18: {trainable:,} trainable parameters ({total:,} with BN moving statistics); "
        f"PyTorch port: {torch_params if torch_params is None else format(torch_params, ',')}")
    if torch_params is not None and torch_params != trainable:
        log("WARNING: the Keras model and the PyTorch port differ in parameter count")

    rng = np.random.default_rng(args.seed)
    measures = ["inference", "latency", "train"] if args.measure == "all" else [args.measure]
    results = {}
    for name in measures:
        log(f"measuring {name} ({args.rounds} rounds after one warm-up, {args.threads} threads)")
        if name == "inference":
            results[name] = measure_inference(tf, model, np, rng, args)
        elif name == "latency":
            results[name] = measure_latency(tf, model, np, rng, args)
        else:
            results[name] = measure_train(tf, keras, model, np, rng, args)

    report = {
        "model": "homework Keras ResNet18 (32x32x3, 100 classes)",
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "xla": args.xla,
        "onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)"),
        "threads": {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                    "inter_op": tf.config.threading.get_inter_op_parallelism_threads()},
        "parameters": {"keras_trainable": trainable, "keras_total_with_bn_statistics": total,
                       "pytorch_port": torch_params,
                       "match": None if torch_params is None else torch_params == trainable},
        "rounds": args.rounds,
        "cpu": cpu_info(),
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        **results,
    }
    json_out.write(json.dumps(report, indent=2) + "\n")
    json_out.flush()


if __name__ == "__main__":
    main()
