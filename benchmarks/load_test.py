"""Load test of the web demo: requests/s, latency and memory of `c100 serve` under concurrent uploads.

Starts the demo server (src/c100/serve.py, the shipped weights unless --weights) in its own process on
127.0.0.1 at a free port; after a few warm-up requests, --clients threads, each with its own keep-alive
connection, post 32x32 PNGs to /api/predict back to back for --duration seconds or until --max-requests
answers, whichever comes first. Reports requests/s (answers with status 200 and five labels, over the
timed window), latency percentiles as the clients saw them, errors by kind, and the server process's
peak resident memory (VmHWM from /proc). Client threads run on the same machine and share its cores,
so on a small machine they take some of the CPU the server could use: compare runs on one machine only.

    python benchmarks/load_test.py --clients 16 --duration 30
"""

from __future__ import annotations

import argparse
import collections
import http.client
import io
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from provenance import provenance  # benchmarks/ is on sys.path when a script there runs

from c100 import checkpoint

SERVER = """
import sys
import c100
from c100.serve import serve
serve(c100.load(sys.argv[1], device="cpu", backend=sys.argv[2]), "127.0.0.1", 0)
"""


def pngs(n: int, seed: int = 0) -> list[bytes]:
    """n distinct 32x32 RGB PNGs: smooth colour fields plus noise, a few KB each like CIFAR images."""
    rng, out = np.random.default_rng(seed), []
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    for _ in range(n):
        base = rng.uniform(0, 255, (3, 3))  # a colour gradient per image
        img = base[:, 0, None, None] + base[:, 1, None, None] * xx + base[:, 2, None, None] * yy
        img = np.clip(img / 2 + rng.normal(0, 20, (3, 32, 32)), 0, 255).astype(np.uint8).transpose(1, 2, 0)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def proc_status(pid: int) -> dict:
    """VmRSS, VmHWM (peak RSS) in MB and the thread count of a process, from /proc/PID/status."""
    text = Path(f"/proc/{pid}/status").read_text()
    kb = {k: int(v) for k, v in re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", text, re.M)}
    return {"rss_mb": kb["VmRSS"] / 1024, "peak_rss_mb": kb["VmHWM"] / 1024,
            "threads": int(re.search(r"^Threads:\s+(\d+)", text, re.M).group(1))}


def cpu_ticks(pid: int) -> tuple[int, int]:
    """(busy clock ticks of the whole machine, of this process plus process pid): their difference
    over the run is what other work on the machine took."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    busy = sum(int(x) for i, x in enumerate(fields[:8]) if i not in (3, 4))  # all but idle and iowait
    ours = 0
    for p in ("self", str(pid)):
        stat = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        ours += int(stat[11]) + int(stat[12])  # utime, stime
    return busy, ours


def backend_used(weights: str, backend: str) -> str:
    """What `auto` resolves to for this model on this CPU (what the server process ran)."""
    if backend != "auto":
        return backend
    from c100.inference import resolve_source
    from c100.quantize import choose

    path = resolve_source(weights)
    return "onnx" if path.suffix == ".onnx" else choose(path)


def start_server(weights: str, backend: str) -> tuple[subprocess.Popen, str, int]:
    proc = subprocess.Popen([sys.executable, "-c", SERVER, weights, backend], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # "serving on http://127.0.0.1:PORT  (Ctrl-C stops)", once listening
    m = re.match(r"serving on http://([\d.]+):(\d+)", line)
    if not m:
        proc.kill()
        raise SystemExit(f"load_test.py: the server did not start (it printed {line!r}; exit {proc.wait()})")
    return proc, m.group(1), int(m.group(2))


def post(conn: http.client.HTTPConnection, body: bytes) -> tuple[int, dict]:
    conn.request("POST", "/api/predict", body=body, headers={"Content-Type": "image/png"})
    r = conn.getresponse()
    return r.status, json.loads(r.read())


def client(host: str, port: int, bodies: list[bytes], offset: int, stop_at: float, budget, latencies: list,
           errors: collections.Counter, lock: threading.Lock) -> None:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    i = offset
    while time.perf_counter() < stop_at and next(budget, None) is not None:
        t0 = time.perf_counter()
        try:
            status, out = post(conn, bodies[i % len(bodies)])
            ok = status == 200 and len(out.get("top", [])) == 5
            kind = None if ok else f"status {status}: {out.get('error', '')[:60]}"
        except (OSError, http.client.HTTPException, ValueError) as e:
            kind = type(e).__name__
            conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=30)  # a fresh connection for the next one
        dt = time.perf_counter() - t0
        with lock:
            if kind is None:
                latencies.append(dt)
            else:
                errors[kind] += 1
        i += 1
    conn.close()


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("starlette", "uvicorn", "h11", "anyio", "pillow", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients, one keep-alive connection each")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of timed load")
    ap.add_argument("--max-requests", type=int, default=20_000, help="hard cap on timed requests, all clients")
    ap.add_argument("--warmup", type=int, default=20, help="requests sent one by one first, not timed")
    ap.add_argument("--weights", default="default",
                    help="what c100.load takes: default (the shipped ResNet18), a run folder, .pt, .safetensors, .onnx")
    ap.add_argument("--backend", default="auto", help="as `c100 serve --backend`: auto (its default), torch, onnx, "
                                                    "int8, torch-bf16")
    ap.add_argument("--out", default="benchmarks/results/records/load-test-cpu.json",
                    help="result JSON; a human-readable NAME.log is written beside it")
    args = ap.parse_args()

    bodies = pngs(64)
    load_before = os.getloadavg()
    proc, host, port = start_server(args.weights, args.backend)
    try:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        for i in range(args.warmup):
            status, out = post(conn, bodies[i % len(bodies)])
            if status != 200:
                raise SystemExit(f"load_test.py: warm-up request answered {status}: {out}")
        conn.close()
        before = proc_status(proc.pid)

        latencies, errors, lock = [], collections.Counter(), threading.Lock()
        budget = iter(range(args.max_requests))  # next() on a range iterator is atomic under the GIL
        ticks_before = cpu_ticks(proc.pid)
        start = time.perf_counter()
        stop_at = start + args.duration
        threads = [threading.Thread(target=client, args=(host, port, bodies, k * 7, stop_at, budget, latencies,
                                                         errors, lock)) for k in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        ticks_after = cpu_ticks(proc.pid)
        after = proc_status(proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()

    # other work on the machine takes cores from the server and the clients: its share is recorded
    machine = elapsed * os.sysconf("SC_CLK_TCK") * os.cpu_count()
    other = (ticks_after[0] - ticks_before[0] - (ticks_after[1] - ticks_before[1])) / machine
    ours = (ticks_after[1] - ticks_before[1]) / machine
    lat_ms = np.array(latencies) * 1000
    pct = {f"p{q}": float(np.percentile(lat_ms, q)) for q in (50, 90, 99)} if len(lat_ms) else {}
    result = {
        "benchmark": "load-test", **provenance(torch.device("cpu")), "versions": versions(),
        "weights": args.weights, "backend": args.backend, "backend_used": backend_used(args.weights, args.backend),
        "batching": "micro-batching (src/c100/batching.py)", "clients": args.clients, "duration_s": args.duration,
        "max_requests": args.max_requests, "capped": len(latencies) + sum(errors.values()) >= args.max_requests,
        "elapsed_s": elapsed, "requests_ok": len(latencies), "errors": sum(errors.values()),
        "error_kinds": dict(errors), "requests_per_s": len(latencies) / elapsed,
        "latency_ms": {**pct, "mean": float(lat_ms.mean()) if len(lat_ms) else None,
                       "max": float(lat_ms.max()) if len(lat_ms) else None},
        "server_rss_mb_after_warmup": before["rss_mb"], "server_peak_rss_mb": after["peak_rss_mb"],
        "server_threads_at_end": after["threads"], "image": "32x32 RGB PNG, ~3 KB",
        "cpu_share_this_test": ours, "cpu_share_other_work": max(0.0, other), "load_average_before": list(load_before),
    }
    out = Path(args.out)
    checkpoint.atomic_write_json(out, result)
    lat = result["latency_ms"]
    summary = (f"{result['requests_ok']} answers in {elapsed:.1f} s from {args.clients} clients: "
               f"{result['requests_per_s']:.1f} requests/s, latency p50 {lat.get('p50', float('nan')):.0f} ms, "
               f"p90 {lat.get('p90', float('nan')):.0f} ms, p99 {lat.get('p99', float('nan')):.0f} ms, "
               f"max {lat['max'] or float('nan'):.0f} ms; {result['errors']} errors {dict(errors) or ''}; "
               f"server peak RSS {result['server_peak_rss_mb']:.0f} MB "
               f"({result['server_rss_mb_after_warmup']:.0f} MB after warm-up)")
    log = "\n".join([
        "# Load test of the web demo (benchmarks/load_test.py)", "",
        f"command:  {result['command']}",
        f"date:     {result['date']}",
        f"cpu:      {result['device']}",
        f"git:      {result['git']}",
        f"machine:  load average before {' '.join(f'{x:.2f}' for x in load_before)} (1, 5, 15 min); during the "
        f"run this test (server + clients) used {100 * ours:.0f}% of all cores' time, other work "
        f"{100 * result['cpu_share_other_work']:.0f}%",
        "versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
        f"load:     {args.clients} clients, keep-alive, 32x32 PNGs to POST /api/predict, {args.duration:g} s "
        f"(cap {args.max_requests} requests{', reached' if result['capped'] else ''}); client threads share "
        f"the machine with the server",
        f"server:   weights {args.weights}, backend {args.backend} ({result['backend_used']}), "
        f"{result['batching']}", "",
        summary, ""])
    out.with_suffix(".log").write_text(log)
    print(log, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
