"""One writer per folder: an exclusive OS lock (flock) on a lock file, held for as long as a command writes.

The kernel drops a flock when its process dies, however it dies, so a killed run never leaves a stale lock
behind: the file may stay, the lock does not. The file holds the holder's pid and command, so whoever is
refused can say who holds it. A lock is re-entrant within one thread (train() inside the CLI's own hold),
and the file is removed when its last hold ends; whoever then locks a file that was removed meanwhile (an
unlinked inode) opens the path again, so two processes can never hold two different files of one name.
Under torchrun only rank 0 writes, so only rank 0 locks a run folder: the other ranks never wait on it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from pathlib import Path

from c100 import UserError, distributed
from c100.atomic import os_reason

try:
    import fcntl
except ImportError:  # Windows: no flock; one writer per folder is then up to the user
    fcntl = None

LOCK_NAME = ".lock"
# (thread, lock file) -> fd: re-entrant within a thread; another thread opens its own fd, which flock
# refuses like another process's
_held: dict[tuple[int, str], int] = {}


class Busy(UserError):
    """Another process holds the lock: the message names the folder and the holder's pid."""


def _command() -> str:
    """What the holder is, for the refused one to read: 'c100 train' rather than a path to python."""
    args = [os.path.basename(a) for a in sys.argv[:2]]
    if args and args[0] == "__main__.py":  # python -m c100
        args[0] = "c100"
    return " ".join(args) if args and args[0] else "python"


def holder(lock_file: Path, patience: float = 1.0) -> str:
    """'pid 1234, c100 train' from a lock file; a holder that has just locked writes it within microseconds,
    so an empty file is read again for up to `patience` seconds."""
    deadline = time.monotonic() + patience
    while True:
        try:
            text = Path(lock_file).read_text().strip()
        except OSError:
            text = ""
        if text or time.monotonic() > deadline:
            pid, _, what = text.partition(" ")
            return f"pid {pid}, {what}" if pid else "a process that has not said its pid yet"
        time.sleep(0.01)


def _open_locked(lock_file: Path, wait: float) -> int | None:
    """An fd holding the exclusive lock on `lock_file`, or None when another process holds it for longer
    than `wait` seconds (0: not at all)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"cannot lock {lock_file.parent} (to be its one writer): {os_reason(e)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)
            continue
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_file).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file its last holder removed while we opened it
            return fd
        os.close(fd)


@contextlib.contextmanager
def hold(lock_file: Path | str, busy: str = "", wait: float = 0.0):
    """Hold the exclusive lock on `lock_file` for the block (creating the file). When another process holds
    it (past `wait` seconds), raise Busy: "{busy} (held by pid N, COMMAND)" on one line. `busy` names the
    folder and what to do; by default "LOCK_FILE is in use"."""
    lock_file = Path(lock_file).absolute()
    key = (threading.get_ident(), str(lock_file))
    if fcntl is None:
        yield
        return
    if key in _held:  # this thread holds it already: the outer hold releases it
        yield
        return
    fd = _open_locked(lock_file, wait)
    if fd is None:
        raise Busy(f"{busy or f'{lock_file} is in use'} (held by {holder(lock_file)})")
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {_command()}\n".encode())
    _held[key] = fd
    try:
        yield
    finally:
        del _held[key]
        with contextlib.suppress(OSError):
            lock_file.unlink()  # while still locked: the next holder opens a fresh file
        os.close(fd)


def hold_folder(folder: Path | str, busy: str = "", wait: float = 0.0):
    """hold() on FOLDER/.lock, the lock of a run folder."""
    return hold(Path(folder) / LOCK_NAME, busy or f"{folder} is being written by another process", wait)


# -- run folders: the training commands' locks ------------------------------------------------------------


def _check_place(run_dir: Path) -> None:
    """Before anything is created: --out can be a folder, and the nearest folder that exists takes files."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} is a file, not a folder; pass another --out")
    here = next(p for p in (run_dir, *run_dir.absolute().parents) if p.exists())
    if not here.is_dir():
        raise UserError(f"cannot create run folder {run_dir}: {here} is a file, not a folder; pass another --out")
    if not os.access(here, os.W_OK | os.X_OK):
        raise UserError(f"cannot create run folder {run_dir}: {here} is not writable (read-only or no "
                        f"permission); pass another --out")


@contextlib.contextmanager
def claim_run(run_dir: Path):
    """The new run's folder, created and locked for the block (rank 0 only: the one writer). Creating and
    locking are one step: "must be empty" is checked under the lock, so of two runs started at the same
    instant into one folder exactly one gets it and the other stops at once, having written nothing. A
    block that fails before writing a file (bad data, say) leaves no folder behind."""
    if not distributed.is_main():
        yield
        return
    _check_place(run_dir)
    made = [p for p in (run_dir.absolute(), *run_dir.absolute().parents) if not p.exists()]
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create run folder {run_dir}: {os_reason(e)}; pass another --out") from None
    try:
        with hold_folder(run_dir, f"run folder {run_dir} is being written by another run; pass another --out"):
            if any(p.name != LOCK_NAME for p in run_dir.iterdir()):
                raise UserError(f"run folder {run_dir} already exists and is not empty; pass another --out, or "
                                f"--resume {run_dir} to continue it")
            yield
    finally:
        for p in made:  # rmdir removes only empty folders: what this run made and wrote nothing into
            with contextlib.suppress(OSError):
                p.rmdir()


def hold_run(run_dir: Path):
    """The lock of an existing run folder for the block (rank 0 only), or a one-line error naming its holder."""
    if not distributed.is_main() or not run_dir.is_dir():  # no folder: resume_point says there is nothing
        return contextlib.nullcontext()
    return hold_folder(run_dir, f"run {run_dir} is still being written by another process; wait for it to end "
                                f"(or stop it) before resuming it")
