"""The benchmark scripts' error handling (their measurements live in benchmarks/results)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_record_bad_set_is_one_line(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "record.py"), "--set", "res milestones=0.4",
                        "--no-test", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [
        "record.py: error: flag: unknown config key 'res milestones'; see `c100 train --help` for the keys"]
    assert not (tmp_path / "runs").exists() and not list((tmp_path / "out").glob("*.json"))
