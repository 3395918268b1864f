"""The machine a run ran on, as every run folder records it (env.json) and benchmarks report it: the
code's git revision, the versions, the device's name and, for a CPU, the vector extensions that decide
its speed."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import numpy
import torch

from c100 import __version__

# the vector extensions that decide a CPU's speed here (fp32, bf16, int8): one model name ("AMD EPYC")
# has come both with AVX2 only and with AVX512-BF16, a 2x apart in bf16 training and in int8 inference
CPU_FEATURES = (("avx2", "AVX2"), ("avx512f", "AVX512"), ("avx512_vnni", "VNNI"), ("avx512_bf16", "BF16"),
                ("amx_tile", "AMX"))


def git_revision() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The flags line of /proc/cpuinfo (or of the text given), as a set; empty where there is none."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    return set(next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines()
                     if line.startswith("flags")), []))


def cpu_features(cpuinfo: str) -> str:
    """'AVX512 VNNI BF16' from /proc/cpuinfo's flags (AVX2 left out where AVX512 is there)."""
    flags = cpu_flags(cpuinfo)
    names = [name for flag, name in CPU_FEATURES if flag in flags]
    return " ".join(n for n in names if not (n == "AVX2" and "AVX512" in names))


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model, cores and vector extensions: 'AMD EPYC (2 cores, AVX2)'."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        features = cpu_features(cpuinfo)
        for line in cpuinfo.splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores{', ' + features if features else ''})"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def environment(device: torch.device) -> dict:
    return {
        "c100": __version__,
        "git": git_revision(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "device_name": device_name(device),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
    }
