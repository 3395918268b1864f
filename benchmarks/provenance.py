"""What every result JSON under benchmarks/results/ records about how it was made: the command, when, on
what."""

from __future__ import annotations

import datetime
import shlex
import sys

import torch

from c100 import checkpoint


def provenance(device: torch.device, git: str | None = None) -> dict:
    """command, date, device, torch and git for a result file. Pass `git` when it was read before a long
    run (the code that ran, not what the tree holds when the run ends)."""
    return {
        "command": "python " + shlex.join(sys.argv),  # quoted: pastes back into a shell
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": checkpoint.device_name(device),
        "torch": torch.__version__,
        "git": git or checkpoint.git_revision(),
    }
