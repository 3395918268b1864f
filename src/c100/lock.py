"""One writer per folder: an exclusive OS lock (flock) on a lock file, held for as long as a command writes.

The kernel drops a flock when its process dies, however it dies, so a killed run never leaves a stale lock
behind: the file may stay, the lock does not. The file holds the holder's pid and command, so whoever is
refused can say who holds it. A lock is re-entrant within one thread (train() inside the CLI's own hold),
and the file is removed when its last hold ends; whoever then locks a file that was removed meanwhile (an
unlinked inode) opens the path again, so two processes can never hold two different files of one name.
Under torchrun only rank 0 writes, so only rank 0 locks (train.py): the other ranks never wait on it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from pathlib import Path

from c100 import UserError
from c100.checkpoint import os_reason

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
