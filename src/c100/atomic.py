"""Files written whole or not at all: each write goes to a temp file in the same folder, is fsynced, then
os.replace()s the old file, so a crash, a kill or a full disk never leaves a half-written file where a
good one was. A failed write is a one-line UserError that says why in a few words."""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import tempfile
from pathlib import Path

from c100 import UserError

# A temp file is named .NAME.XXXXXXXX.tmp (mkstemp's eight characters); an older c100 left .NAME.XXXXXXXX
TEMP_SUFFIX = ".tmp"
RUN_FILES = ("last.pt", "best.pt", "metrics.csv", "config.yaml", "env.json")
_NAMES = "|".join(re.escape(n) for n in RUN_FILES)
_STALE = re.compile(rf"^\.({_NAMES})\.[a-z0-9_]{{8}}(\.tmp)?$")


def write_atomic(path: Path, write) -> None:
    """Write `path` through a temp file in its folder: `write(f)` fills the file object `f`. A failure
    removes the temp file, leaves the old file as it was and becomes a one-line UserError."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the permissions open() would
        with os.fdopen(fd, "wb") as f:
            sink = _Sink(f)
            try:
                write(sink)
            except Exception:  # torch.save turns the OSError of a failed write into a RuntimeError
                if sink.error is not None:
                    raise sink.error from None
                raise
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_folder(path.parent)  # the rename itself survives a power cut
    except OSError as e:
        raise UserError(f"cannot write {path}: {os_reason(e)}; {path.name} was left as it was") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    write_atomic(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


@functools.cache
def _umask() -> int:
    """The process's umask, read once, at the first write (not at import: importing c100 touches no process
    state). Linux shows it in /proc; elsewhere os.umask can only be read by setting it, and set back at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


class _Sink:
    """A file's write() that remembers the OSError it raised (a full disk), whatever the writer makes of it."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not every system opens folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def os_reason(e: OSError) -> str:
    """What an OSError means to someone who wants a file written, in a few words."""
    reasons = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
               errno.EFBIG: "the file grew past the size this process may write (ulimit -f)",
               errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
               errno.EPERM: "operation not permitted", errno.ENOTDIR: "a parent of it is a file, not a folder",
               errno.EEXIST: "a parent of it is a file, not a folder", errno.EISDIR: "it is a folder"}
    text = reasons.get(e.errno) or e.strerror or type(e).__name__
    return text.replace("\n", " ")


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete the temp files a killed writer left in a run folder (ours only: .last.pt.XXXXXXXX.tmp and the
    like); call it where no other process writes the folder (rank 0, before training). Returns them."""
    stale = [p for p in Path(folder).iterdir() if _STALE.match(p.name) and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
