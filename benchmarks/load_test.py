"""Load test of the web demo: requests/s, latency and memory of `c100 serve` under concurrent uploads.

Starts the demo server (src/c100/serve.py, the shipped weights unless --weights) in its own process on
127.0.0.1 at a free port; after a few warm-up requests, --clients threads, each with its own keep-alive
connection, post 32x32 PNGs to /api/predict back to back for --duration seconds or until --max-requests
answers, whichever comes first. Reports requests/s (answers with status 200 and five labels, over the
timed window), latency percentiles as the clients saw them, errors by kind, and the server process's
peak resident memory (VmHWM from /proc). Client threads run on the same machine and share its cores,
so on a small machine they take some of the CPU the server could use: compare runs on one machine only.

With --abuse N (the issue-39 scenario) the same load runs a second time while N sockets are held open
against the server, half of them silent and half stalled part-way through an upload (a head declaring
100 kB, then 1 kB of it), each opened again as soon as the server's deadlines cut it. Both scenarios
also probe GET /health ten times a second on fresh connections: its latency is what a newcomer sees.

    python benchmarks/load_test.py --clients 16 --duration 30 --abuse 300
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
import select
import signal
import socket
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
    from c100.backends import choose
    from c100.inference import resolve_source

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


def hold_sockets(host: str, port: int, n: int, stop: threading.Event, counts: collections.Counter) -> None:
    """n sockets held open until `stop`: even ones silent, odd ones stalled part-way through an upload; one
    the server closes (its head or body deadline) is opened again at once, so n stay open throughout."""
    stalled = (b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n" + b"\0" * 1000)

    def open_one(i: int) -> socket.socket:
        s = socket.create_connection((host, port), timeout=10)
        if i % 2:
            s.sendall(stalled)
        return s

    socks = [open_one(i) for i in range(n)]
    counts["opened"] += n
    while not stop.wait(0.2):
        readable, _, _ = select.select(socks, [], [], 0)
        for s in readable:  # the server answered (408) or hung up: hold another in its place
            i = socks.index(s)
            s.close()
            socks[i] = open_one(i)
            counts["reopened"] += 1
    for s in socks:
        s.close()


def probe_health(host: str, port: int, stop: threading.Event, latencies: list, errors: collections.Counter) -> None:
    """GET /health every 0.1 s on a fresh connection, as a newcomer would."""
    while not stop.wait(0.1):
        t0 = time.perf_counter()
        try:
            conn = http.client.HTTPConnection(host, port, timeout=10)
            conn.request("GET", "/health")
            status = conn.getresponse().status
            conn.close()
        except (OSError, http.client.HTTPException) as e:
            errors[type(e).__name__] += 1
            continue
        if status == 200:
            latencies.append(time.perf_counter() - t0)
        else:
            errors[f"status {status}"] += 1


def percentiles(seconds: list) -> dict:
    ms = np.array(seconds) * 1000
    if not len(ms):
        return {"p50": None, "p90": None, "p99": None, "mean": None, "max": None}
    return {**{f"p{q}": float(np.percentile(ms, q)) for q in (50, 90, 99)}, "mean": float(ms.mean()),
            "max": float(ms.max())}


def run_load(host: str, port: int, pid: int, bodies: list[bytes], args, abuse: int = 0) -> dict:
    """One timed window of --clients posting images (while `abuse` sockets are held open): its figures."""
    stop, held, health, health_errors = threading.Event(), collections.Counter(), [], collections.Counter()
    helpers = [threading.Thread(target=probe_health, args=(host, port, stop, health, health_errors))]
    if abuse:
        helpers.append(threading.Thread(target=hold_sockets, args=(host, port, abuse, stop, held)))
    for t in helpers:
        t.start()
    if abuse:
        time.sleep(1.0)  # the sockets open before the clocked window
    latencies, errors, lock = [], collections.Counter(), threading.Lock()
    budget = iter(range(args.max_requests))  # next() on a range iterator is atomic under the GIL
    ticks_before = cpu_ticks(pid)
    start = time.perf_counter()
    stop_at = start + args.duration
    threads = [threading.Thread(target=client, args=(host, port, bodies, k * 7, stop_at, budget, latencies,
                                                     errors, lock)) for k in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    ticks_after = cpu_ticks(pid)
    stop.set()
    for t in helpers:
        t.join()
    # other work on the machine takes cores from the server and the clients: its share is recorded
    machine = elapsed * os.sysconf("SC_CLK_TCK") * os.cpu_count()
    other = (ticks_after[0] - ticks_before[0] - (ticks_after[1] - ticks_before[1])) / machine
    return {"elapsed_s": elapsed, "requests_ok": len(latencies), "errors": sum(errors.values()),
            "error_kinds": dict(errors), "requests_per_s": len(latencies) / elapsed,
            "capped": len(latencies) + sum(errors.values()) >= args.max_requests,
            "latency_ms": percentiles(latencies), "health_ms": percentiles(health), "health_ok": len(health),
            "health_errors": dict(health_errors), "server_peak_rss_mb": proc_status(pid)["peak_rss_mb"],
            "cpu_share_this_test": (ticks_after[1] - ticks_before[1]) / machine,
            "cpu_share_other_work": max(0.0, other),
            **({"abuse_sockets": abuse, "sockets_opened": held["opened"], "sockets_reopened": held["reopened"]}
               if abuse else {})}


def summary(r: dict, clients: int) -> str:
    lat, health = r["latency_ms"], r["health_ms"]
    nan = float("nan")
    return (f"{r['requests_ok']} answers in {r['elapsed_s']:.1f} s from {clients} clients: "
            f"{r['requests_per_s']:.1f} requests/s, latency p50 {lat['p50'] or nan:.0f} ms, "
            f"p90 {lat['p90'] or nan:.0f} ms, p99 {lat['p99'] or nan:.0f} ms, max {lat['max'] or nan:.0f} ms; "
            f"{r['errors']} errors {r['error_kinds'] or ''}; /health p50 {health['p50'] or nan:.1f} ms, "
            f"p99 {health['p99'] or nan:.1f} ms, max {health['max'] or nan:.0f} ms over {r['health_ok']} probes, "
            f"{sum(r['health_errors'].values())} failed {r['health_errors'] or ''}; server peak RSS "
            f"{r['server_peak_rss_mb']:.0f} MB")


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
    ap.add_argument("--abuse", type=int, default=300, help="then the same load again while this many idle and "
                                                          "stalled sockets are held open (0: the plain run only)")
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
        plain = run_load(host, port, proc.pid, bodies, args)
        abused = run_load(host, port, proc.pid, bodies, args, args.abuse) if args.abuse else None
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()

    result = {
        "benchmark": "load-test", **provenance(torch.device("cpu")), "versions": versions(),
        "weights": args.weights, "backend": args.backend, "backend_used": backend_used(args.weights, args.backend),
        "batching": "micro-batching (src/c100/batching.py)", "clients": args.clients, "duration_s": args.duration,
        "max_requests": args.max_requests, **plain, "server_rss_mb_after_warmup": before["rss_mb"],
        "image": "32x32 RGB PNG, ~3 KB", "load_average_before": list(load_before),
        **({"abuse": abused} if abused else {}),
    }
    out = Path(args.out)
    checkpoint.atomic_write_json(out, result)
    lines = [
        "# Load test of the web demo (benchmarks/load_test.py)", "",
        f"command:  {result['command']}",
        f"date:     {result['date']}",
        f"cpu:      {result['device']}",
        f"git:      {result['git']}",
        f"machine:  load average before {' '.join(f'{x:.2f}' for x in load_before)} (1, 5, 15 min); during the "
        f"plain run this test (server + clients) used {100 * plain['cpu_share_this_test']:.0f}% of all cores' "
        f"time, other work {100 * plain['cpu_share_other_work']:.0f}%",
        "versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
        f"load:     {args.clients} clients, keep-alive, 32x32 PNGs to POST /api/predict, {args.duration:g} s "
        f"(cap {args.max_requests} requests{', reached' if result['capped'] else ''}); client threads share "
        f"the machine with the server",
        f"server:   weights {args.weights}, backend {args.backend} ({result['backend_used']}), "
        f"{result['batching']}, {before['rss_mb']:.0f} MB after warm-up", "",
        "plain:    " + summary(plain, args.clients)]
    if abused:
        lines.append(f"abuse:    {args.abuse} sockets held open ({abused['sockets_reopened']} reopened after the "
                     f"server cut them), half silent, half stalled mid-upload; other work "
                     f"{100 * abused['cpu_share_other_work']:.0f}%: " + summary(abused, args.clients))
    log = "\n".join(lines + [""])
    out.with_suffix(".log").write_text(log)
    print(log, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
