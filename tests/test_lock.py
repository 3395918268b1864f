"""One writer per run folder (issue 39), with real concurrent processes: two `c100 train` started at the same
instant into one folder, a `--resume` of a live run, a killed run resumed (no stale lock), the cache of derived
ONNX files written by one process while another waits.

This file doubles as a launcher (`python tests/test_lock.py GO_FILE c100-args...`): it imports everything, says
it is ready, then waits for GO_FILE before running `c100`, so that two launches reach the folder together.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from c100 import checkpoint, lock
from c100.backends import cached, onnx_fp32
from c100.cli import main
from c100.quantize import quantize
from test_faults import WAIT_S, _config_file, _env, _kill_at, _resume_here

HERE = Path(__file__).resolve().parent


def _launch(argv: list[str]) -> int:
    go = Path(argv[0])
    Path(f"{go}.{os.getpid()}").write_text("ready")
    deadline = time.monotonic() + WAIT_S
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.001)
    return main(argv[1:])


def _start_together(argv_list: list[list[str]], tmp_path: Path) -> list[subprocess.Popen]:
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, str(HERE / "test_lock.py"), str(go), *argv], cwd=tmp_path, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for argv in argv_list]
    deadline = time.monotonic() + WAIT_S
    while not all(Path(f"{go}.{p.pid}").exists() for p in procs):  # both imported torch and c100
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "a launcher died"
        time.sleep(0.01)
    go.write_text("go")
    return procs


def test_two_trains_started_at_the_same_instant_into_one_folder(cifar_dir, tmp_path):
    run = tmp_path / "run"
    args = [["train", "--config", str(_config_file(tmp_path, cifar_dir, epochs=2)), "--seed", str(seed),
             "--out", str(run)] for seed in (1, 2)]
    procs = _start_together(args, tmp_path)
    outs = [p.communicate(timeout=WAIT_S) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], outs
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    err = outs[loser][1].strip()
    assert err == (f"c100: error: run folder {run} is being written by another run; pass another --out (held by "
                   f"pid {procs[winner].pid}, test_lock.py go)"), outs[loser]
    # the folder is the winner's alone: its config and its checkpoint name the winner's seed
    seed = winner + 1
    assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == seed
    assert checkpoint.load(run / "last.pt")["config"]["seed"] == seed
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "config.yaml", "env.json", "last.pt", "metrics.csv"]


def test_a_live_run_is_refused_to_a_second_writer_and_a_killed_one_resumes(cifar_dir, tmp_path, capsys):
    run = tmp_path / "run"
    cfg = _config_file(tmp_path, cifar_dir, epochs=3)
    p_signal = tmp_path / "live.ready"
    live = subprocess.Popen([sys.executable, str(HERE / "test_faults.py"), "step:20", str(p_signal), "train",
                             "--config", str(cfg), "--out", str(run)], cwd=tmp_path, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + WAIT_S
        while not p_signal.exists():  # paused in epoch 2, after epoch 1's checkpoint
            assert live.poll() is None and time.monotonic() < deadline, "the live run never reached step 20"
            time.sleep(0.02)
        before = (run / "last.pt").read_bytes()
        held = f"(held by pid {live.pid}, test_faults.py step:20)"
        for argv, message in ((["train", "--resume", str(run)], f"run {run} is still being written by another "
                               f"process; wait for it to end (or stop it) before resuming it {held}"),
                              (["train", "--config", str(cfg), "--out", str(run)],
                               f"run folder {run} is being written by another run; pass another --out {held}"),
                              (["plot", str(run)], f"run {run} is still being written by another process")):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err.strip()
            assert err.startswith(f"c100: error: {message}") and "\n" not in err, err
        assert (run / "last.pt").read_bytes() == before and not (run / "curves.png").exists()
        assert main(["plot", str(run), "--out", str(tmp_path / "curves")]) == 0  # elsewhere: fine
    finally:
        live.kill()
        live.wait(timeout=WAIT_S)
    assert (run / lock.LOCK_NAME).exists()  # the file stays behind a kill; the lock does not
    _resume_here(run)
    assert checkpoint.load(run / "last.pt")["finished"] and not (run / lock.LOCK_NAME).exists()


def test_a_run_killed_while_it_holds_the_lock_resumes_in_another_process(cifar_dir, tmp_path):
    """SIGKILL mid-epoch, then `--resume` in a real second process: the kernel dropped the dead run's lock."""
    run = tmp_path / "run"
    _kill_at("step:3", ["train", "--config", str(_config_file(tmp_path, cifar_dir, epochs=1)), "--out", str(run)],
             tmp_path, "killed")
    r = subprocess.run([sys.executable, str(HERE / "run_c100.py"), "train", "--resume", str(run)], cwd=tmp_path,
                       env=_env(), capture_output=True, text=True, timeout=WAIT_S)
    assert r.returncode == 0, r.stderr[-3000:]
    assert checkpoint.load(run / "last.pt")["finished"]


def _holder(lock_file: Path, seconds: float, tmp_path: Path, writes: Path | None = None) -> subprocess.Popen:
    """A process holding `lock_file` for `seconds`, once it has said so, then writing `writes` before it lets go."""
    ready = tmp_path / "holding"
    code = (f"import time, pathlib; from c100 import lock\nwith lock.hold({str(lock_file)!r}):\n"
            f"    pathlib.Path({str(ready)!r}).write_text('x'); time.sleep({seconds})\n"
            + (f"    pathlib.Path({str(writes)!r}).write_text('made by the holder')" if writes else ""))
    p = subprocess.Popen([sys.executable, "-c", code], env=_env())
    deadline = time.monotonic() + WAIT_S
    while not ready.exists():
        assert p.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    return p


def test_cache_entries_have_one_writer(tiny_run, cifar_dir, tmp_path, monkeypatch):
    """A second `c100 quantize` of one model stops at once; a load that needs the ONNX file another process is
    deriving waits for it, then takes the file made rather than writing it again."""
    monkeypatch.setenv("C100_CACHE", str(tmp_path / "cache"))
    source = tiny_run / "last.pt"
    int8 = cached(source, "int8")
    int8.parent.mkdir(parents=True)
    p = _holder(int8.with_name(f".{int8.name}.lock"), 30, tmp_path)
    try:
        with pytest.raises(lock.Busy, match=rf"{int8.name} is being written by another c100; wait for it to finish "
                                            rf"\(held by pid {p.pid}, -c\)"):
            quantize(tiny_run, str(cifar_dir))
    finally:
        p.kill()
        p.wait()
    fp32 = cached(source, "fp32")
    (tmp_path / "holding").unlink()
    p = _holder(fp32.with_name(f".{fp32.name}.lock"), 2, tmp_path, writes=fp32)
    t0 = time.monotonic()
    assert onnx_fp32(source) == fp32
    assert time.monotonic() - t0 > 1.5 and fp32.read_text() == "made by the holder"  # waited; did not export again
    p.wait(timeout=WAIT_S)
    assert not fp32.with_name(f".{fp32.name}.lock").exists()  # released: its file removed


def test_lock_is_exclusive_between_threads_and_reentrant_within_one(tmp_path):
    import threading

    f = tmp_path / "x.lock"
    refused = []

    def other_thread():
        try:
            with lock.hold(f, "busy"):
                pass
        except lock.Busy as e:
            refused.append(str(e))

    with lock.hold(f, "busy"), lock.hold(f, "busy"):  # the same thread again: re-entrant
        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        assert f.read_text().startswith(f"{os.getpid()} ")
    assert refused == [f"busy (held by pid {os.getpid()}, {lock._command()})"] and not f.exists()
    with lock.hold(f):  # free again
        pass


if __name__ == "__main__":
    raise SystemExit(_launch(sys.argv[1:]))
